"""``proxyd cleanup`` removes what IPVS mode installs, in a namespace of its own.

This kernel has no IPVS, so ``proxyd apply --proxy-mode ipvs`` cannot leave that state
behind; the test builds it the way IPVS mode does (the same sets, the chains and jumps
of :func:`~proxyd.backends.ipvs_plan.restore_text`, the device as a bridge), plus a
foreign chain and set and kube-proxy's IPVS leftovers, then runs the real command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from proxyd.backends.iptables import Variant, tool
from proxyd.backends.ipvs import DEFAULT_INTERFACE
from proxyd.backends.ipvs_plan import IpvsOptions, jumps, restore_text, set_specs
from proxyd.commands.cleanup import KUBE_PROXY_NODE_PORT_SETS, owned_devices, owned_ipsets
from proxyd.model import IPFamily, Protocol
from tests.conftest import require

FOREIGN_CHAIN, FOREIGN_SET, KUBE_SET = "FOREIGN-CHAIN", "FOREIGN-SET", "KUBE-CLUSTER-IP"
FAMILIES = (IPFamily.IPV4, IPFamily.IPV6)


def test_owned_ipsets_are_proxyds_and_kube_proxys_only_when_asked() -> None:
    names = ["PROXYD-CLUSTER-IP", "KUBE-NODE-PORT-TCP", "cali40all-ipam-pools", "PROXYDX"]
    assert owned_ipsets(names, kube_proxy=False) == ["PROXYD-CLUSTER-IP"]
    assert owned_ipsets(names, kube_proxy=True) == ["KUBE-NODE-PORT-TCP", "PROXYD-CLUSTER-IP"]


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def run(
        self, *cmd: str, stdin: str = "", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd], input=stdin, capture_output=True,
            text=True, timeout=60, check=check,
        )  # fmt: skip

    def cleanup(self, *flags: str) -> str:
        done = self.run(sys.executable, "-m", "proxyd", "cleanup", *flags, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def saved(self, variant: Variant) -> str:
        return "".join(self.run(tool(variant, f, "save")).stdout for f in FAMILIES)

    def ipsets(self) -> set[str]:
        return set(self.run("ipset", "list", "-n").stdout.split())

    def links(self) -> set[str]:
        out = self.run("ip", "-o", "link", "show").stdout
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


@pytest.fixture
def netns() -> Iterator[Netns]:
    require(os.geteuid() == 0, "needs root for network namespaces")
    for binary in ("ip", "ipset", *(tool(v, f, "restore") for v in Variant for f in FAMILIES)):
        require(shutil.which(binary), f"{binary} not installed (.ci/install)")
    ns = Netns(f"pxf-{uuid.uuid4().hex[:8]}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False, capture_output=True)


def leave_ipvs_state(ns: Netns, variant: Variant) -> None:
    """What IPVS mode (and kube-proxy's) leaves on a node, and someone else's chain/set."""
    creates = [
        f"create {s.name} bitmap:port range 0-65535"
        if s.kind == "bitmap:port"
        else f"create {s.name} {s.kind} family {'inet6' if s.family is IPFamily.IPV6 else 'inet'}"
        for s in set_specs()
    ]
    creates += [f"create {FOREIGN_SET} hash:ip", f"create {KUBE_SET} hash:ip,port"]
    ns.run("ipset", "restore", stdin="\n".join(creates) + "\n")
    for family in FAMILIES:
        ns.run(
            tool(variant, family, "restore"),
            "--noflush",
            stdin=restore_text(family, IpvsOptions(), jumps()),
        )
    ns.run(
        tool(variant, IPFamily.IPV4, "restore"),
        "--noflush",
        stdin=(
            f"*nat\n:{FOREIGN_CHAIN} - [0:0]\n-A PREROUTING -j {FOREIGN_CHAIN}\n"
            f"-A {FOREIGN_CHAIN} -m set --match-set {FOREIGN_SET} dst -j RETURN\nCOMMIT\n"
        ),
    )
    for device in (DEFAULT_INTERFACE, "kube-ipvs0"):
        ns.run("ip", "link", "add", device, "type", "bridge")
        ns.run("ip", "addr", "add", "10.96.0.10/32", "dev", device)


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.parametrize("variant", list(Variant))
def test_cleanup_removes_ipvs_mode_state_and_spares_the_rest(
    netns: Netns, variant: Variant
) -> None:
    leave_ipvs_state(netns, variant)
    assert "PROXYD-IPVS-SERVICES" in netns.saved(variant)

    out = netns.cleanup()

    saved = netns.saved(variant)
    assert "PROXYD-" not in saved
    assert f"-A PREROUTING -j {FOREIGN_CHAIN}" in saved
    assert netns.ipsets() == {FOREIGN_SET, KUBE_SET}
    assert DEFAULT_INTERFACE not in netns.links() and "kube-ipvs0" in netns.links()
    if not os.path.exists("/proc/net/ip_vs"):  # this kernel: no IPVS
        assert "proxyd cleanup: IPVS: skipped (this kernel has no IPVS" in out
    assert f"ipsets: removed {', '.join(sorted(s.name for s in set_specs()))}" in out
    assert f"devices: removed {DEFAULT_INTERFACE}" in out

    again = netns.cleanup()  # idempotent
    assert "ipsets: nothing to remove" in again and "devices: nothing to remove" in again
    assert "removed" not in again.replace("virtual servers removed", "")

    netns.cleanup("--kube-proxy")
    assert netns.ipsets() == {FOREIGN_SET}
    assert "kube-ipvs0" not in netns.links()
    assert f"-A PREROUTING -j {FOREIGN_CHAIN}" in netns.saved(variant)


@pytest.mark.root
@pytest.mark.netns
def test_kube_proxy_only_keeps_proxyds_state(netns: Netns) -> None:
    variant = Variant.NFT
    leave_ipvs_state(netns, variant)

    netns.cleanup("--kube-proxy-only")

    assert "PROXYD-IPVS-SERVICES" in netns.saved(variant)
    assert netns.ipsets() == {FOREIGN_SET, *(s.name for s in set_specs())}
    assert DEFAULT_INTERFACE in netns.links() and "kube-ipvs0" not in netns.links()


def test_kube_proxy_node_port_sets_are_kube_proxys_names() -> None:
    """kube-proxy's names, both families; SCTP's are hash:ip,port sets, the longest cut
    to ipset's 31 characters as kube-proxy does (a longer name cannot be listed)."""
    assert set(KUBE_PROXY_NODE_PORT_SETS[Protocol.SCTP]) == {
        "KUBE-NODE-PORT-SCTP-HASH",
        "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
        "KUBE-6-NODE-PORT-SCTP-HASH",
        "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS",
    }
    assert set(KUBE_PROXY_NODE_PORT_SETS[Protocol.TCP]) == {
        "KUBE-NODE-PORT-TCP",
        "KUBE-NODE-PORT-LOCAL-TCP",
        "KUBE-6-NODE-PORT-TCP",
        "KUBE-6-NODE-PORT-LOCAL-TCP",
    }
    assert "KUBE-6-NODE-PORT-LOCAL-UDP" in KUBE_PROXY_NODE_PORT_SETS[Protocol.UDP]


def test_kube_proxy_only_ipsets_are_kube_proxys() -> None:
    names = ["PROXYD-CLUSTER-IP", "KUBE-NODE-PORT-TCP", "FOREIGN"]
    assert owned_ipsets(names, proxyd=False, kube_proxy=True) == ["KUBE-NODE-PORT-TCP"]


@pytest.mark.parametrize(
    ("interface", "own", "kube_proxy", "want"),
    [
        pytest.param(DEFAULT_INTERFACE, True, False, [DEFAULT_INTERFACE], id="default"),
        pytest.param("lb0", True, True, ["kube-ipvs0", "lb0"], id="both"),
        pytest.param("lb0", False, True, ["kube-ipvs0"], id="kube-proxy-only"),
        pytest.param("kube-ipvs0", True, True, ["kube-ipvs0"], id="replacing-both"),
        # proxyd serves from kube-ipvs0: removing kube-proxy's leftovers must keep it
        pytest.param("kube-ipvs0", False, True, [], id="replacing-kube-proxy-only"),
    ],
)
def test_owned_devices(interface: str, own: bool, kube_proxy: bool, want: list[str]) -> None:
    assert owned_devices(interface, own=own, kube_proxy=kube_proxy) == want
