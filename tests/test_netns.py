"""The netns sandbox itself: what it builds, what its probes report, that it cleans up."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from proxyd.sandbox.netns import Answer, Topology
from tests.conftest import require

pytestmark = [pytest.mark.root, pytest.mark.netns]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.fixture(autouse=True)
def _root() -> None:
    require(os.geteuid() == 0 and shutil.which("ip"), "needs root and iproute2")


def test_topology_serves_pods_and_tells_refused_from_timeout() -> None:
    with Topology("pxi-") as topo:
        node = topo.add_node()
        pod = topo.add_pod(node, "web-0")
        client = topo.add_client(node)
        topo.add_device(node, "lb0", ["192.0.2.254/24", "2001:db8::fe/64"])
        topo.serve(pod, tcp=[8080], udp=[8053], lifetime=60)
        assert all(len(name) <= 15 and name.startswith("pxi-") for name in topo.namespaces)
        assert set(topo.namespaces) <= _namespaces()
        # The pod sees the node's bridge address from the node, the client's own from it.
        assert node.probe("tcp", pod.ip, 8080) == [Answer("web-0", node.bridge_ip)]
        assert client.probe("udp", pod.ip, 8053) == [Answer("web-0", client.ip)]
        assert client.probe("tcp", pod.ip6, 8080) == [Answer("web-0", client.ip6)]
        assert node.probe("tcp", pod.ip, 9) == [Answer(error="refused")]
        assert node.probe("udp", pod.ip, 9) == [Answer(error="refused")]
        # Nothing answers inside the service CIDR without rules: the packet is lost.
        assert client.probe("tcp", "10.96.0.1", 80, timeout=0.3) == [Answer(error="timeout")]
        assert "192.0.2.254/24" in node.run("ip", "-o", "addr", "show", "lb0").stdout
        names = topo.namespaces
    assert not set(names) & _namespaces()


def test_second_node_reaches_remote_pods_through_the_link() -> None:
    with Topology("pxi-") as topo:
        one, two = topo.add_node(), topo.add_node()
        assert topo.link_nodes(one, two) == ("10.254.0.1", "10.254.0.2")
        remote = topo.add_pod(two, "far")
        topo.serve(remote, tcp=[8080], lifetime=60)
        assert one.probe("tcp", remote.ip, 8080) == [Answer("far", "10.254.0.1")]


def test_teardown_removes_everything_after_a_failure() -> None:
    names: tuple[str, ...] = ()
    with pytest.raises(RuntimeError, match="boom"), Topology("pxi-") as topo:
        topo.add_pod(topo.add_node(), "x")
        names = topo.namespaces
        raise RuntimeError("boom")
    assert len(names) == 2
    assert not set(names) & _namespaces()
    topo.close()  # a second close is harmless


def test_namespace_names_are_kept_short() -> None:
    with Topology("pxi-too-long-") as topo, pytest.raises(ValueError, match="15"):
        topo.add_node()
