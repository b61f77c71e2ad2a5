"""The iptables backend on real packets, in network namespaces, for nft and legacy.

One topology per module (DESIGN §5): node 1 with pods a and b, node 2 with pod c, a
client on node 1. Every pod answers TCP 8080 and UDP 8053 with its name and the source
address it saw. Each test programs node 1 with a full sync of its own services (own
cluster IPs, so conntrack entries of one test never meet another's); the variant fixture
removes all proxyd chains before the other variant runs.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from proxyd.backends import SyncResult
from proxyd.backends.commands_runner import CompletedRun, SubprocessRunner
from proxyd.backends.conntrack import ConntrackCleaner
from proxyd.backends.iptables import (
    ROUTE_LOCALNET,
    IptablesBackend,
    Variant,
    detect_variant,
    remove_chains,
    tool,
)
from proxyd.backends.iptables_render import RenderOptions, chain_name
from proxyd.model import (
    Endpoint,
    EndpointPort,
    IPFamily,
    Protocol,
    ServicePlan,
    ServiceType,
    TrafficPolicy,
)
from proxyd.plan import build_plan
from proxyd.sandbox.netns import Answer, Client, Node, Pod, Topology
from tests.builders import (
    ep,
    list_obj,
    node_obj,
    node_plan,
    pool_obj,
    port_obj,
    port_spec,
    sep,
    slice_obj,
    snapshot,
    sp,
    svc,
    svc_obj,
)
from tests.builders import eps as slices
from tests.builders import node as node_info
from tests.conftest import require

pytestmark = [pytest.mark.root, pytest.mark.netns]

TCP_PORT, UDP_PORT = 8080, 8053
OPTIONS = RenderOptions(cluster_cidrs=("10.244.0.0/16", "fd00:10:244::/56"))
PROTOCOLS = [pytest.param(Protocol.TCP, id="tcp"), pytest.param(Protocol.UDP, id="udp")]


def _prerequisites() -> None:
    require(os.geteuid() == 0, "needs root for network namespaces")
    for binary in ("ip", "conntrack", *(tool(v, f, "restore") for v in Variant for f in IPFamily)):
        require(shutil.which(binary), f"{binary} not installed (.ci/install)")


@dataclass(frozen=True)
class Cluster:
    topo: Topology
    node1: Node
    node2: Node
    a: Pod
    b: Pod
    c: Pod
    client: Client


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    _prerequisites()
    with Topology("pxi-") as topo:
        node1, node2 = topo.add_node(), topo.add_node()
        topo.link_nodes(node1, node2)
        a, b, c = topo.add_pod(node1, "a"), topo.add_pod(node1, "b"), topo.add_pod(node2, "c")
        client = topo.add_client(node1)
        # Load balancer and external IPs are routed to node 1 (as a cloud LB would do);
        # the node routes them on, so unadmitted traffic meets the filter table.
        topo.add_device(node1, "lb0", ["192.0.2.254/24"])
        for pod in (a, b, c):
            topo.serve(pod, tcp=[TCP_PORT], udp=[UDP_PORT], lifetime=900)
        yield Cluster(topo, node1, node2, a, b, c, client)


@pytest.fixture(scope="module", params=[Variant.NFT, Variant.LEGACY], ids=str)
def variant(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[Variant]:
    yield request.param
    for ns in (cluster.node1, cluster.node2):
        for family in IPFamily:
            remove_chains(SubprocessRunner(ns.argv()), request.param, family)


@dataclass
class RecordingRunner:
    """Runs commands in node 1; keeps every restore payload; can corrupt the next ones."""

    inner: SubprocessRunner
    payloads: list[tuple[str, str]] = field(default_factory=list)
    inject: str | None = None

    def run(self, argv: Sequence[str], stdin: bytes = b"") -> CompletedRun:
        if argv[0].endswith("-restore"):
            text = stdin.decode()
            if self.inject is not None:
                head, _, tail = text.rpartition("COMMIT\n")
                text = f"{head}{self.inject}\nCOMMIT\n{tail}"
            self.payloads.append((argv[0], text))
            stdin = text.encode()
        return self.inner.run(argv, stdin)


@dataclass
class Proxy:
    backend: IptablesBackend
    runner: RecordingRunner
    variant: Variant
    node: Node

    def sync(
        self, *services: ServicePlan, full: bool = True, addresses: Sequence[str] = ()
    ) -> SyncResult:
        result = self.backend.sync(node_plan(*services, addresses=addresses), full=full)
        assert result.ok, f"{result.error}\n{result.detail}"
        return result

    def save(self, *args: str) -> str:
        return self.node.run(tool(self.variant, IPFamily.IPV4, "save"), *args).stdout


@pytest.fixture
def proxy(cluster: Cluster, variant: Variant) -> Proxy:
    runner = RecordingRunner(SubprocessRunner(cluster.node1.argv()))
    backend = IptablesBackend(runner, variant, options=OPTIONS, conntrack=ConntrackCleaner(runner))
    return Proxy(backend, runner, variant, cluster.node1)


def target(proto: Protocol) -> int:
    return TCP_PORT if proto is Protocol.TCP else UDP_PORT


def eps(proto: Protocol, *pods: Pod, v6: bool = False) -> list[Endpoint]:
    return [ep(p.ip6 if v6 else p.ip, target(proto)) for p in pods]


def service(
    name: str, vip: str, proto: Protocol, pods: Sequence[Pod], **fields: Any
) -> ServicePlan:
    return sp(name, internal=eps(proto, *pods), protocol=proto, cluster_ips=(vip,), **fields)


def pods_of(answers: list[Answer]) -> set[str | None]:
    return {a.pod for a in answers}


def errors_of(answers: list[Answer]) -> set[str | None]:
    return {a.error for a in answers}


def p(proto: Protocol) -> str:
    return proto.lower()


# --- ClusterIP -------------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_cluster_ip_spreads_over_all_endpoints(
    cluster: Cluster, proxy: Proxy, proto: Protocol
) -> None:
    proxy.sync(service("spread", "10.96.1.1", proto, [cluster.a, cluster.b, cluster.c]))
    answers = cluster.node1.probe(p(proto), "10.96.1.1", 80, count=30)
    assert errors_of(answers) == {None}
    assert pods_of(answers) == {"a", "b", "c"}
    from_pod = cluster.b.probe(p(proto), "10.96.1.1", 80, count=30)
    assert pods_of(from_pod) == {"a", "b", "c"}


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_no_endpoints_is_refused_not_a_timeout(
    cluster: Cluster, proxy: Proxy, proto: Protocol
) -> None:
    proxy.sync(service("none", "10.96.1.2", proto, [], node_port=30102))
    for ns in (cluster.node1, cluster.a, cluster.client):
        assert errors_of(ns.probe(p(proto), "10.96.1.2", 80, timeout=2)) == {"refused"}
    nodeport = cluster.client.probe(p(proto), cluster.client.gateway, 30102, timeout=2)
    assert errors_of(nodeport) == {"refused"}


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_ipv6_cluster_ip(cluster: Cluster, proxy: Proxy, proto: Protocol) -> None:
    v6 = sp(
        "six",
        internal=eps(proto, cluster.a, cluster.c, v6=True),
        protocol=proto,
        cluster_ips=("fd00:10:96::13",),
    )
    proxy.sync(v6)
    answers = cluster.node1.probe(p(proto), "fd00:10:96::13", 80, count=20)
    assert errors_of(answers) == {None}
    assert pods_of(answers) == {"a", "c"}
    assert any(binary.startswith("ip6tables-") for binary, _ in proxy.runner.payloads)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_topology_filtered_plans_from_manifests(
    cluster: Cluster, variant: Variant, proto: Protocol, tmp_path: Path
) -> None:
    """``proxyd apply`` end to end: nodepool keeps the pool's endpoints, hostname the
    node's; an endpoint outside the pool (nothing listens there) must never be chosen."""
    ports = [port_obj(80, "http", "TCP"), port_obj(53, "dns", "UDP")]
    slice_ports = [port_obj(TCP_PORT, "http", "TCP"), port_obj(UDP_PORT, "dns", "UDP")]
    endpoints = [
        {"addresses": [cluster.a.ip], "nodeName": "node-1"},
        {"addresses": [cluster.b.ip], "nodeName": "node-1"},
        {"addresses": [cluster.c.ip], "nodeName": "node-2"},
        {"addresses": ["10.244.3.2"], "nodeName": "node-3"},
    ]
    objects = [
        node_obj("node-1", pool="near"),
        node_obj("node-2", pool="near"),
        node_obj("node-3", pool="far"),
        pool_obj("near", ["node-1", "node-2"]),
        pool_obj("far", ["node-3"]),
    ]
    for name, vip, scope in (
        ("pool", "10.96.1.3", "openyurt.io/nodepool"),
        ("host", "10.96.1.4", "kubernetes.io/hostname"),
    ):
        objects.append(
            svc_obj(
                name, cluster_ip=vip, ports=ports, annotations={"openyurt.io/topologyKeys": scope}
            )
        )
        objects.append(slice_obj(name, endpoints, ports=slice_ports))
    manifest = tmp_path / "cluster.json"
    manifest.write_text(json.dumps(list_obj(*objects)))
    done = cluster.node1.run(
        sys.executable,
        "-m",
        "proxyd",
        "apply",
        "--manifests",
        str(manifest),
        "--node",
        "node-1",
        "--iptables-backend",
        str(variant),
        "--cluster-cidr",
        "10.244.0.0/16",
        check=False,
    )
    assert done.returncode == 0, done.stderr
    port = 80 if proto is Protocol.TCP else 53
    pool = cluster.node1.probe(p(proto), "10.96.1.3", port, count=30)
    assert errors_of(pool) == {None} and pods_of(pool) == {"a", "b", "c"}
    host = cluster.node1.probe(p(proto), "10.96.1.4", port, count=20)
    assert errors_of(host) == {None} and pods_of(host) == {"a", "b"}


# --- external traffic --------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_nodeport_and_external_ip_from_the_client_are_masqueraded(
    cluster: Cluster, proxy: Proxy, proto: Protocol
) -> None:
    pods = [cluster.a, cluster.b, cluster.c]
    proxy.sync(
        service("ext", "10.96.1.5", proto, pods, node_port=30105, external_ips=("192.0.2.10",))
    )
    client = cluster.client
    for host, port in ((client.gateway, 30105), ("192.0.2.10", 80)):
        answers = client.probe(p(proto), host, port, count=20)
        assert errors_of(answers) == {None}
        assert pods_of(answers) == {"a", "b", "c"}
        assert {a.source for a in answers} == {"10.244.1.1", "10.254.0.1"}  # the node's


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_load_balancer_source_ranges_admit_and_deny(
    cluster: Cluster, proxy: Proxy, proto: Protocol
) -> None:
    pods = [cluster.a]
    admitted = service(
        "lb-in",
        "10.96.1.6",
        proto,
        pods,
        load_balancer_ips=("192.0.2.20",),
        load_balancer_source_ranges=("10.255.0.0/24",),
    )
    denied = service(
        "lb-out",
        "10.96.1.7",
        proto,
        pods,
        load_balancer_ips=("192.0.2.21",),
        load_balancer_source_ranges=("198.51.100.0/24",),
    )
    proxy.sync(admitted, denied)
    assert pods_of(cluster.client.probe(p(proto), "192.0.2.20", 80, count=3)) == {"a"}
    assert errors_of(cluster.client.probe(p(proto), "192.0.2.21", 80, timeout=0.5)) == {"timeout"}


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_node_reaches_its_own_firewalled_lb_ip_when_the_ranges_admit_it(
    cluster: Cluster, proxy: Proxy, proto: Protocol
) -> None:
    """A VIP-like LB IP local to the node: the node's requests to it leave with the LB IP
    as source. Admitted when the ranges hold the node's address (as kube-proxy), still
    dropped when they do not."""
    node = cluster.node1
    admitted = service(
        "lb-own",
        "10.96.1.13",
        proto,
        [cluster.a],
        load_balancer_ips=("192.0.2.22",),
        load_balancer_source_ranges=("10.254.0.0/24",),  # holds node 1's 10.254.0.1
    )
    denied = service(
        "lb-own-out",
        "10.96.1.14",
        proto,
        [cluster.a],
        load_balancer_ips=("192.0.2.23",),
        load_balancer_source_ranges=("198.51.100.0/24",),
    )
    node.ip_batch("addr add 192.0.2.22/32 dev lb0", "addr add 192.0.2.23/32 dev lb0")
    try:
        proxy.sync(admitted, denied, addresses=("10.254.0.1",))
        answers = node.probe(p(proto), "192.0.2.22", 80, count=3)
        assert errors_of(answers) == {None} and pods_of(answers) == {"a"}
        assert errors_of(node.probe(p(proto), "192.0.2.23", 80, timeout=0.5)) == {"timeout"}
    finally:
        node.ip_batch("addr del 192.0.2.22/32 dev lb0", "addr del 192.0.2.23/32 dev lb0")


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_external_traffic_policy_local(cluster: Cluster, proxy: Proxy, proto: Protocol) -> None:
    local = service(
        "local",
        "10.96.1.8",
        proto,
        [cluster.a, cluster.b, cluster.c],
        node_port=30108,
        external_traffic_policy=TrafficPolicy.LOCAL,
    )
    local = replace(local, external=tuple(eps(proto, cluster.a)))
    remote_only = service(
        "remote",
        "10.96.1.9",
        proto,
        [cluster.c],
        node_port=30109,
        external_traffic_policy=TrafficPolicy.LOCAL,
    )
    remote_only = replace(remote_only, external=())
    proxy.sync(local, remote_only)
    client = cluster.client
    kept = client.probe(p(proto), client.gateway, 30108, count=10)
    assert {(a.pod, a.source) for a in kept} == {("a", client.ip)}
    dropped = client.probe(p(proto), client.gateway, 30109, timeout=0.5)
    assert errors_of(dropped) == {"timeout"}
    inside = cluster.node1.probe(p(proto), "10.96.1.9", 80, count=3)
    assert pods_of(inside) == {"c"}


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_etp_local_short_circuits_pods_and_the_node_to_every_endpoint(
    cluster: Cluster, proxy: Proxy, proto: Protocol
) -> None:
    """As kube-proxy's EXT chain: traffic from this node's pods and from the node itself
    to an external destination of an eTP=Local service skips the policy and goes to the
    cluster-wide endpoints, even with no local endpoint (the client's is dropped)."""
    remote_only = service(
        "short",
        "10.96.1.15",
        proto,
        [cluster.c],
        node_port=30115,
        external_ips=("192.0.2.15",),
        external_traffic_policy=TrafficPolicy.LOCAL,
    )
    proxy.sync(replace(remote_only, external=()))
    from_pod = cluster.a.probe(p(proto), "192.0.2.15", 80, count=3)
    assert {(a.pod, a.source) for a in from_pod} == {("c", cluster.a.ip)}
    from_node = cluster.node1.probe(p(proto), cluster.client.gateway, 30115, count=3)
    assert errors_of(from_node) == {None} and pods_of(from_node) == {"c"}
    assert {a.source for a in from_node} <= NODE1_ADDRESSES
    outside = cluster.client.probe(p(proto), "192.0.2.15", 80, timeout=0.5)
    assert errors_of(outside) == {"timeout"}


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_both_policies_local_pods_reach_remote_endpoints_through_external_addresses(
    cluster: Cluster, proxy: Proxy, proto: Protocol
) -> None:
    """Planned, not hand-made: with iTP=Local and eTP=Local and no endpoint on node 1, its
    pods and the node itself still reach the service through its external IP, LB IP and
    NodePort (kube-proxy keeps the cluster-wide set for that); an outside client is
    dropped, the cluster IP refused (iTP=Local, nothing local)."""
    lb = svc(
        "both-local",
        type=ServiceType.LOAD_BALANCER,
        ports=(port_spec(80, "http", proto, node_port=30140),),
        cluster_ips=("10.96.1.40",),
        external_ips=("192.0.2.40",),
        load_balancer_ips=("192.0.2.41",),
        internal_traffic_policy=TrafficPolicy.LOCAL,
        external_traffic_policy=TrafficPolicy.LOCAL,
    )
    remote = [sep(cluster.c.ip, node_name="node-2")]
    slice_ = slices("both-local", remote, ports=(EndpointPort("http", proto, target(proto)),))
    plan = build_plan(snapshot(lb, slice_, node_info("node-1"), node_info("node-2")), "node-1")
    (planned,) = plan.services
    assert (planned.internal, planned.external) == ((), ())
    proxy.sync(planned)
    for host in ("192.0.2.40", "192.0.2.41"):
        from_pod = cluster.a.probe(p(proto), host, 80, count=3)
        assert {(a.pod, a.source) for a in from_pod} == {("c", cluster.a.ip)}
    from_node = cluster.node1.probe(p(proto), cluster.client.gateway, 30140, count=3)
    assert errors_of(from_node) == {None} and pods_of(from_node) == {"c"}
    outside = cluster.client.probe(p(proto), "192.0.2.40", 80, timeout=0.5)
    assert errors_of(outside) == {"timeout"}
    refused = cluster.a.probe(p(proto), "10.96.1.40", 80, timeout=2)
    assert errors_of(refused) == {"refused"}


# --- localhost NodePorts (kube-proxy's iptables.localhostNodePorts) -----------------------


@dataclass(frozen=True)
class NodeSysctls:
    """The backend's Sysctls seam, inside a test node (never the host's /proc/sys)."""

    node: Node

    def read(self, key: str) -> str:
        return self.node.run("sysctl", "-n", key).stdout.strip()

    def ensure(self, key: str, value: str) -> None:
        if self.read(key) != value:
            self.node.sysctl(f"{key}={value}")


@pytest.fixture
def localhost_proxy(cluster: Cluster, variant: Variant) -> Iterator[Proxy]:
    """Node 1 with localhost NodePorts on; route_localnet back to 0 afterwards."""
    runner = RecordingRunner(SubprocessRunner(cluster.node1.argv()))
    sysctls = NodeSysctls(cluster.node1)
    sysctls.ensure(ROUTE_LOCALNET, "0")
    options = replace(OPTIONS, localhost_nodeports=True)
    backend = IptablesBackend(runner, variant, options=options, sysctls=sysctls)
    yield Proxy(backend, runner, variant, cluster.node1)
    sysctls.ensure(ROUTE_LOCALNET, "0")


NODE1_ADDRESSES = {"10.244.1.1", "10.254.0.1"}  # what masquerading leaves as source


def test_localhost_nodeport_reaches_every_endpoint_masqueraded(
    cluster: Cluster, localhost_proxy: Proxy
) -> None:
    """127.0.0.1:<nodePort> on the node works; 127.x cannot leave the host, so it is
    masqueraded, also for eTP=Local, whose local traffic goes to all endpoints."""
    pods = [cluster.a, cluster.c]
    spread = service("lh", "10.96.1.30", Protocol.TCP, pods, node_port=30130)
    local = service(
        "lh-local",
        "10.96.1.31",
        Protocol.TCP,
        pods,
        node_port=30131,
        external_traffic_policy=TrafficPolicy.LOCAL,
    )
    local = replace(local, external=tuple(eps(Protocol.TCP, cluster.a)))
    assert localhost_proxy.sync(spread, local).warnings == ()
    assert NodeSysctls(cluster.node1).read(ROUTE_LOCALNET) == "1"
    for port in (30130, 30131):
        answers = cluster.node1.probe("tcp", "127.0.0.1", port, count=20)
        assert errors_of(answers) == {None}
        assert pods_of(answers) == {"a", "c"}
        assert {a.source for a in answers} <= NODE1_ADDRESSES
    own = cluster.node1.probe("tcp", cluster.client.gateway, 30130, count=10)
    assert errors_of(own) == {None} and pods_of(own) == {"a", "c"}


def test_without_localhost_nodeports_loopback_is_refused(cluster: Cluster, proxy: Proxy) -> None:
    """Off: the rules leave 127.0.0.0/8 alone even where route_localnet=1 would let a
    DNAT through; the node's own address still answers."""
    sysctls = NodeSysctls(cluster.node1)
    sysctls.ensure(ROUTE_LOCALNET, "1")
    try:
        proxy.sync(service("no-lh", "10.96.1.32", Protocol.TCP, [cluster.a], node_port=30132))
        refused = cluster.node1.probe("tcp", "127.0.0.1", 30132, timeout=2)
        assert errors_of(refused) == {"refused"}
        own = cluster.node1.probe("tcp", cluster.client.gateway, 30132, count=3)
        assert errors_of(own) == {None} and pods_of(own) == {"a"}
        assert "-A PROXYD-FIREWALL" not in proxy.save("-t", "filter")
    finally:
        sysctls.ensure(ROUTE_LOCALNET, "0")


# A TCP SYN from the client's link straight to 127.0.0.1 (CVE-2020-8558): an Ethernet
# frame to the node's MAC, written by hand (argv: device, node MAC, source, port, count).
_SYN_TO_LOOPBACK = r"""
import socket, struct, sys
dev, mac, src, port, count = sys.argv[1:]
def csum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
s, d = socket.inet_aton(src), socket.inet_aton("127.0.0.1")
tcp = struct.pack("!HHIIBBHHH", 40000, int(port), 1, 0, 5 << 4, 0x02, 64240, 0, 0)
pseudo = s + d + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, s, d)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
own = open(f"/sys/class/net/{dev}/address").read().strip()
head = bytes.fromhex(mac.replace(":", "") + own.replace(":", "")) + b"\x08\x00"
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
    raw.bind((dev, 0))
    for _ in range(int(count)):
        raw.send(head + ip + tcp)
"""


def _route_dev(ns: Node | Client, to: str) -> str:
    return str(json.loads(ns.run("ip", "-j", "route", "get", to).stdout)[0]["dev"])


def test_martian_guard_drops_packets_to_loopback_from_a_link(
    cluster: Cluster, localhost_proxy: Proxy
) -> None:
    node, client = cluster.node1, cluster.client
    localhost_proxy.sync(service("guard", "10.96.1.33", Protocol.TCP, [cluster.a], node_port=30133))
    save = localhost_proxy.save("-c", "-t", "filter")
    for chain in ("INPUT", "OUTPUT"):  # the guard goes first: nothing may ACCEPT before it
        first = next(r for r in save.splitlines() if re.match(rf"^\[\d+:\d+\] -A {chain} ", r))
        assert first.endswith("-j PROXYD-FIREWALL")
    ((before, rule),) = _counters(save, "PROXYD-FIREWALL")
    assert "-d 127.0.0.0/8" in rule and "! -s 127.0.0.0/8" in rule and rule.endswith("-j DROP")
    mac = node.run("cat", f"/sys/class/net/{_route_dev(node, client.ip)}/address").stdout.strip()
    dev = _route_dev(client, client.gateway)
    client.run(sys.executable, "-c", _SYN_TO_LOOPBACK, dev, mac, client.ip, "8099", "5")
    ((after, _),) = _counters(localhost_proxy.save("-c", "-t", "filter"), "PROXYD-FIREWALL")
    assert after - before == 5
    local = node.probe("tcp", "127.0.0.1", 30133, count=3)  # local sources still pass
    assert errors_of(local) == {None} and pods_of(local) == {"a"}


# --- affinity, hairpin, endpoint removal ---------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_session_affinity_sticks_to_one_endpoint(
    cluster: Cluster, proxy: Proxy, proto: Protocol
) -> None:
    proxy.sync(
        service(
            "sticky",
            "10.96.1.10",
            proto,
            [cluster.a, cluster.b, cluster.c],
            node_port=30110,
            session_affinity_timeout=600,
        )
    )
    answers = cluster.client.probe(p(proto), cluster.client.gateway, 30110, count=20)
    assert errors_of(answers) == {None}
    assert len(pods_of(answers)) == 1


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_hairpin_pod_reaches_itself_through_its_service(
    cluster: Cluster, proxy: Proxy, proto: Protocol
) -> None:
    proxy.sync(service("hairpin", "10.96.1.11", proto, [cluster.a]))
    answers = cluster.a.probe(p(proto), "10.96.1.11", 80, count=3)
    assert {(a.pod, a.source) for a in answers} == {("a", "10.244.1.1")}


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_removed_endpoint_gets_no_new_traffic_and_its_udp_flow_is_cleared(
    cluster: Cluster, proxy: Proxy, proto: Protocol
) -> None:
    vip = "10.96.1.12"
    both = service("shrink", vip, proto, [cluster.a, cluster.b])
    proxy.sync(both)
    # One flow, so one source port; fresh per run: a flow of an earlier run (the other
    # iptables variant uses the same namespaces) may still sit in TIME_WAIT.
    flow_port = random.randint(40000, 59999)
    (first,) = cluster.node1.probe(p(proto), vip, 80, source_port=flow_port)
    assert first.pod in {"a", "b"}
    keep = cluster.b if first.pod == "a" else cluster.a
    gone = cluster.a if first.pod == "a" else cluster.b
    if proto is Protocol.UDP:
        assert gone.ip in _reply_sources(cluster.node1, vip)
    proxy.sync(
        replace(both, internal=tuple(eps(proto, keep)), external=tuple(eps(proto, keep))),
        full=False,
    )
    if proto is Protocol.UDP:
        assert gone.ip not in _reply_sources(cluster.node1, vip)
    (same_flow,) = cluster.node1.probe(p(proto), vip, 80, source_port=flow_port)
    assert same_flow.pod == keep.pod
    assert pods_of(cluster.node1.probe(p(proto), vip, 80, count=20)) == {keep.pod}


def _reply_sources(node: Node, vip: str) -> set[str]:
    """Who answers the UDP flows conntrack holds towards ``vip`` (the DNAT targets)."""
    listing = node.run("conntrack", "-L", "-p", "udp", "--orig-dst", vip, check=False).stdout
    return {m.group(1) for m in re.finditer(r"\bdst=\S+ sport=\d+ dport=\d+ .*?src=(\S+)", listing)}


# --- partial sync, failures, cleanup ---------------------------------------------------------


def _counters(save: str, chain: str) -> list[tuple[int, str]]:
    """(packets, rule) of each rule in ``chain`` from ``iptables-save -c``."""
    found = re.finditer(rf"^\[(\d+):\d+\] (-A {re.escape(chain)} .*)$", save, re.MULTILINE)
    return [(int(m.group(1)), m.group(2)) for m in found]


def test_partial_sync_rewrites_only_the_changed_service(cluster: Cluster, proxy: Proxy) -> None:
    one = service("one", "10.96.1.14", Protocol.TCP, [cluster.a, cluster.b])
    two = service("two", "10.96.1.15", Protocol.TCP, [cluster.c])
    proxy.sync(one, two)
    assert errors_of(cluster.node1.probe("tcp", "10.96.1.15", 80, count=5)) == {None}
    svc_two = chain_name("PROXYD-SVC-", "default", "two", "http", "TCP")
    before = _counters(proxy.save("-c", "-t", "nat"), svc_two)
    assert sum(n for n, _ in before) >= 5
    proxy.runner.payloads.clear()
    one_b = replace(one, internal=tuple(eps(Protocol.TCP, cluster.b)))
    one_b = replace(one_b, external=one_b.internal)
    result = proxy.sync(one_b, two, full=False)
    assert not result.full and result.written == {one.key}
    ((binary, text),) = proxy.runner.payloads
    assert binary == tool(proxy.variant, IPFamily.IPV4, "restore")
    declared = {ln[1:].split()[0] for ln in text.splitlines() if ln.startswith(":")}
    svc_one = chain_name("PROXYD-SVC-", "default", "one", "http", "TCP")
    sep_a, sep_b = (
        chain_name("PROXYD-SEP-", "default", "one", "http", "TCP", f"{pod.ip}:8080")
        for pod in (cluster.a, cluster.b)
    )
    assert declared == {svc_one, sep_a, sep_b}  # sep_a only to be flushed and deleted
    assert f"-X {sep_a}" in text
    assert "default/two" not in text
    assert _counters(proxy.save("-c", "-t", "nat"), svc_two) == before
    assert pods_of(cluster.node1.probe("tcp", "10.96.1.14", 80, count=10)) == {"b"}


def test_large_full_sync_applies_and_resyncs(cluster: Cluster, proxy: Proxy) -> None:
    """Beyond NFT_CHAIN_LIST_LIMIT chains (the nft payload takes its cache hint)."""
    filler = [
        sp(
            f"fill{i}",
            internal=[ep(f"10.250.{i}.{j}") for j in range(1, 11)],
            cluster_ips=(f"10.97.0.{i}",),
        )
        for i in range(100)
    ]
    real = service("real", "10.96.1.20", Protocol.TCP, [cluster.a, cluster.b])
    first = proxy.sync(real, *filler)
    assert first.rules["nat"] > 3000
    again = proxy.sync(real, *filler[:50], full=True)
    assert len(again.removed) == 50
    assert pods_of(cluster.node1.probe("tcp", "10.96.1.20", 80, count=10)) == {"a", "b"}
    listed = proxy.save("-t", "nat")
    assert listed.count(":PROXYD-SEP-") == 2 + 50 * 10


def test_failed_restore_leaves_the_previous_rules_working(cluster: Cluster, proxy: Proxy) -> None:
    old = service("fail", "10.96.1.16", Protocol.TCP, [cluster.a])
    proxy.sync(old)
    new = replace(old, internal=tuple(eps(Protocol.TCP, cluster.b)))
    new = replace(new, external=new.internal)
    proxy.runner.inject = "-A PROXYD-SERVICES -j PROXYD-NO-SUCH-CHAIN"
    failed = proxy.backend.sync(node_plan(new), full=False)
    assert not failed.ok
    assert failed.error is not None and failed.error.startswith("iptables-restore failed")
    assert pods_of(cluster.node1.probe("tcp", "10.96.1.16", 80, count=5)) == {"a"}
    proxy.runner.inject = None
    retried = proxy.sync(new, full=False)
    assert retried.full
    assert pods_of(cluster.node1.probe("tcp", "10.96.1.16", 80, count=5)) == {"b"}


def test_refused_payload_reports_the_offending_line(cluster: Cluster, proxy: Proxy) -> None:
    proxy.sync(service("good", "10.96.1.18", Protocol.TCP, [cluster.a]))
    bad = sp("bad", internal=[ep("10.244.1.300")], cluster_ips=("10.96.1.19",))
    failed = proxy.backend.sync(node_plan(bad), full=False)
    assert not failed.ok
    (marked,) = [ln for ln in failed.detail.splitlines() if ln.startswith(">")]
    assert "10.244.1.300" in marked
    assert pods_of(cluster.node1.probe("tcp", "10.96.1.18", 80, count=3)) == {"a"}


def test_cleanup_removes_every_proxyd_chain_and_jump(cluster: Cluster, proxy: Proxy) -> None:
    proxy.sync(service("clean", "10.96.1.17", Protocol.TCP, [cluster.a], node_port=30117))
    assert "PROXYD-" in proxy.save()
    proxy.backend.cleanup()
    assert "PROXYD" not in proxy.save()
    six = cluster.node1.run(tool(proxy.variant, IPFamily.IPV6, "save")).stdout
    assert "PROXYD" not in six
    assert errors_of(cluster.node1.probe("tcp", "10.96.1.17", 80, timeout=0.5)) != {None}
    proxy.runner.payloads.clear()
    proxy.backend.cleanup()
    assert proxy.runner.payloads == []


KUBE_PROXY_LEFTOVERS = """\
*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:KUBE-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.99/32 -p tcp -j REJECT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SEP-BBBBBBBBBBBBBBBB - [0:0]
:KUBE-MARK-DROP - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -j KUBE-SVC-AAAAAAAAAAAAAAAA
-A KUBE-SVC-AAAAAAAAAAAAAAAA -j KUBE-SEP-BBBBBBBBBBBBBBBB
-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -j DNAT --to-destination 10.244.2.2:8080
COMMIT
"""


def test_proxyd_cleanup_kube_proxy_removes_its_leftovers_only(
    cluster: Cluster, variant: Variant
) -> None:
    node = cluster.node2
    node.run(tool(variant, IPFamily.IPV4, "restore"), "--noflush", stdin=KUBE_PROXY_LEFTOVERS)
    cleanup = ("cleanup", "--kube-proxy", "--iptables-backend", str(variant))
    done = node.run(sys.executable, "-m", "proxyd", *cleanup, check=False)
    assert done.returncode == 0, done.stderr
    save = node.run(tool(variant, IPFamily.IPV4, "save")).stdout
    assert "KUBE-SERVICES" not in save and "KUBE-SVC-" not in save and "KUBE-SEP-" not in save
    for kubelet in ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY", "KUBE-FIREWALL", "KUBE-MARK-DROP"):
        assert kubelet in save
    again = node.run(sys.executable, "-m", "proxyd", *cleanup)
    assert "nothing to remove" in again.stdout
    node.run(
        tool(variant, IPFamily.IPV4, "restore"),
        stdin="*mangle\nCOMMIT\n*filter\nCOMMIT\n*nat\nCOMMIT\n",
    )


def test_detection_follows_the_kubelet_hint() -> None:
    _prerequisites()
    with Topology("pxi-") as topo:
        node = topo.add_node()
        runner = SubprocessRunner(node.argv())
        assert detect_variant(runner) is Variant.NFT
        node.run(
            tool(Variant.LEGACY, IPFamily.IPV4, "restore"),
            "--noflush",
            stdin="*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n",
        )
        assert detect_variant(runner) is Variant.LEGACY
        node.run(
            tool(Variant.NFT, IPFamily.IPV4, "restore"),
            "--noflush",
            stdin="*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n",
        )
        assert detect_variant(runner) is Variant.NFT
