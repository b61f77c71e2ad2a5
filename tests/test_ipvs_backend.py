"""IpvsBackend against an in-memory kernel: diff, draining, ownership, fallbacks."""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

import proxyd.backends.commands_runner as commands_runner
import proxyd.backends.iptables as iptables
import proxyd.backends.ipvs_netlink as ipvs_netlink
from proxyd.backends import build_backend
from proxyd.backends.commands_runner import CompletedRun
from proxyd.backends.ipvs import (
    SYSCTLS,
    AddAddress,
    AddDest,
    AddMember,
    AddService,
    DelAddress,
    DelDest,
    DelMember,
    DelService,
    IpvsBackend,
    KernelDest,
    Op,
    OpError,
    SetDest,
    SetService,
)
from proxyd.backends.ipvs_plan import IpvsOptions, RealServer, SetSpec, VirtualServer, VsKey
from proxyd.commands.cleanup import KUBE_PROXY_NODE_PORT_SETS
from proxyd.config import Config, IptablesBackendChoice, ProxyMode
from proxyd.model import Endpoint, IPFamily, NodePlan, Protocol
from tests.builders import ep, node_plan, sp

VIP = "10.96.0.10"
KEY = VsKey(Protocol.TCP, VIP, 80)


@dataclass
class FakeKernel:
    """IpvsClient in memory. ``refuse`` maps a scheduler to the errno its use raises."""

    vs: dict[VsKey, VirtualServer] = field(default_factory=dict)
    dests_: dict[VsKey, dict[tuple[str, int], KernelDest]] = field(default_factory=dict)
    addrs: set[str] = field(default_factory=set)
    others: dict[str, set[str]] = field(default_factory=dict)  # addresses of other interfaces
    sets: dict[str, set[str]] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)
    prepared: int = 0
    sysctls: list[dict[str, str]] = field(default_factory=list)  # written by each prepare
    removed: bool = False
    refuse: dict[str, int] = field(default_factory=dict)
    fail_next: Op | None = None

    def prepare(self, interface: str, sets: Sequence[SetSpec], sysctls: Mapping[str, str]) -> None:
        self.prepared += 1
        self.sysctls.append(dict(sysctls))
        for s in sets:
            self.sets.setdefault(s.name, set())

    def services(self) -> dict[VsKey, VirtualServer]:
        return dict(self.vs)

    def dests(self, keys: Iterable[VsKey]) -> dict[VsKey, list[KernelDest]]:
        return {k: list(self.dests_[k].values()) for k in keys if k in self.vs}

    def addresses(self, interface: str) -> set[str]:
        return set(self.others.get(interface, self.addrs))

    def members(self, sets: Iterable[str]) -> dict[str, set[str]]:
        return {s: set(self.sets.get(s, ())) for s in sets}

    def apply(self, ops: Sequence[Op]) -> list[OpError]:
        errors = []
        for op in ops:
            self.ops.append(op)
            code = self._do(op)
            if code:
                errors.append(OpError(op, code, f"{op}: {code}"))
        return errors

    def _do(self, op: Op) -> int:
        if op == self.fail_next:
            self.fail_next = None
            return errno.EINVAL
        match op:
            case AddService(s) | SetService(s):
                if s.scheduler in self.refuse:
                    return self.refuse[s.scheduler]
                self.vs[s.key] = s
                self.dests_.setdefault(s.key, {})
            case DelService(k):
                del self.vs[k]
                del self.dests_[k]
            case AddDest(k, r) | SetDest(k, r):
                if k not in self.vs:
                    return errno.ESRCH
                old = self.dests_[k].get(r.addr)
                self.dests_[k][r.addr] = KernelDest(
                    r.address, r.port, r.weight, True, old.active if old else 0
                )
            case DelDest(k, r):
                del self.dests_[k][r.addr]
            case AddAddress(a):
                self.addrs.add(a)
            case DelAddress(a):
                self.addrs.remove(a)
            case AddMember(s, m):
                self.sets[s].add(m)
            case DelMember(s, m):
                self.sets[s].discard(m)
        return 0

    def remove(self, interface: str, sets: Iterable[str]) -> None:
        self.removed = True

    def active(self, real: str, n: int, key: VsKey = KEY) -> None:
        addr = (real, 8080)
        self.dests_[key][addr] = KernelDest(real, 8080, self.dests_[key][addr].weight, True, n)


class FakeRunner:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bytes]] = []

    def run(self, argv: Sequence[str], stdin: bytes = b"") -> CompletedRun:
        self.calls.append((list(argv), stdin))
        return CompletedRun(0, "")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plan(
    *eps: Endpoint,
    protocol: Protocol = Protocol.TCP,
    scheduler: str | None = None,
    node_port: int | None = None,
) -> NodePlan:
    """Service port default/web:http at VIP:80 with ``eps``, on a node at 192.168.1.5."""
    web = sp(
        internal=eps,
        protocol=protocol,
        cluster_ips=(VIP,),
        node_port=node_port,
        ipvs_scheduler=scheduler,
    )
    return node_plan(web, addresses=("192.168.1.5",))


A, B, C = ep("10.244.1.2"), ep("10.244.1.3"), ep("10.244.1.4")


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(kernel: FakeKernel, clock: Clock) -> IpvsBackend:
    return IpvsBackend(kernel, FakeRunner(), clock=clock, drain_timeout=60)


def weights(kernel: FakeKernel, key: VsKey = KEY) -> dict[str, int]:
    return {a: d.weight for (a, _), d in kernel.dests_[key].items()}


def test_full_sync_from_nothing_programs_everything_in_dependency_order(
    backend: IpvsBackend, kernel: FakeKernel
) -> None:
    result = backend.sync(plan(A, B), full=True)
    assert result.ok and result.full
    assert weights(kernel) == {"10.244.1.2": 1, "10.244.1.3": 1}
    assert kernel.addrs == {VIP}
    assert kernel.sets["PROXYD-CLUSTER-IP"] == {"10.96.0.10,tcp:80"}
    assert dict(result.rules) == {"ipvs": 1, "ipvs_real": 2, "ipset": 1}
    kinds = [type(op) for op in kernel.ops]
    assert kinds.index(AddAddress) < kinds.index(AddService) and kinds.index(
        AddMember
    ) < kinds.index(AddService)


def test_full_sync_sets_sysctls_and_writes_rules_with_missing_jumps(kernel: FakeKernel) -> None:
    runner = FakeRunner()
    IpvsBackend(kernel, runner, clock=Clock()).sync(plan(A), full=True)
    assert kernel.sysctls == [dict(SYSCTLS)]
    restores = [stdin.decode() for argv, stdin in runner.calls if argv[0].endswith("restore")]
    assert len(restores) == 1 and "-I PREROUTING 1" in restores[0]


ARP = {"net/ipv4/conf/all/arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2"}


@pytest.mark.parametrize(
    ("strict_arp", "want"),
    [
        pytest.param(False, dict(SYSCTLS), id="default-leaves-arp-alone"),
        pytest.param(True, {**SYSCTLS, **ARP}, id="strict-arp-adds-arp-sysctls"),
    ],
)
def test_strict_arp_sysctls_are_written_on_every_full_sync_only_when_enabled(
    kernel: FakeKernel, strict_arp: bool, want: dict[str, str]
) -> None:
    backend = IpvsBackend(kernel, FakeRunner(), clock=Clock(), strict_arp=strict_arp)
    for full in (True, False, True):  # a partial sync prepares nothing
        assert backend.sync(plan(A), full=full).ok
    assert kernel.sysctls == [want, want]
    assert not ARP.keys() & SYSCTLS.keys()  # without strict ARP nothing touches them


@pytest.mark.parametrize("strict_arp", [False, True])
def test_config_strict_arp_reaches_the_daemons_backend(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch, strict_arp: bool
) -> None:
    monkeypatch.setattr(commands_runner, "SubprocessRunner", FakeRunner)
    monkeypatch.setattr(ipvs_netlink, "NetlinkIpvsClient", lambda: kernel)
    monkeypatch.setattr(iptables, "available_families", lambda: (IPFamily.IPV4,))
    cfg = Config(
        node_name="n",
        proxy_mode=ProxyMode.IPVS,
        iptables_backend=IptablesBackendChoice.NFT,
        ipvs_strict_arp=strict_arp,
    )
    backend, _ = build_backend(cfg)
    assert backend.sync(plan(A), full=True).ok
    assert (ARP.items() <= kernel.sysctls[0].items()) is strict_arp


def test_unchanged_plan_writes_nothing(backend: IpvsBackend, kernel: FakeKernel) -> None:
    backend.sync(plan(A, B), full=True)
    kernel.ops.clear()
    result = backend.sync(plan(A, B), full=False)
    assert result.ok and kernel.ops == [] and result.written == frozenset()


def test_partial_sync_writes_only_the_difference(backend: IpvsBackend, kernel: FakeKernel) -> None:
    backend.sync(plan(A), full=True)
    kernel.ops.clear()
    result = backend.sync(plan(A, B), full=False)
    assert kernel.ops == [AddDest(KEY, RealServer("10.244.1.3", 8080))]
    assert {k.service.name for k in result.written} == {"web"}


def test_scheduler_change_is_an_in_place_update(backend: IpvsBackend, kernel: FakeKernel) -> None:
    backend.sync(plan(A), full=True)
    kernel.ops.clear()
    backend.sync(plan(A, scheduler="lc"), full=False)
    assert kernel.ops == [SetService(VirtualServer(KEY, "lc"))]


def test_removed_tcp_endpoint_drains_until_its_connections_end(
    backend: IpvsBackend, kernel: FakeKernel
) -> None:
    backend.sync(plan(A, B), full=True)
    kernel.active("10.244.1.3", 2)
    backend.sync(plan(A), full=False)
    assert weights(kernel) == {"10.244.1.2": 1, "10.244.1.3": 0}
    assert backend.draining == {(KEY, ("10.244.1.3", 8080))}
    kernel.ops.clear()
    backend.sync(plan(A), full=False)  # still active: nothing to do
    assert kernel.ops == []
    kernel.active("10.244.1.3", 0)
    backend.sync(plan(A), full=False)
    assert weights(kernel) == {"10.244.1.2": 1} and not backend.draining


def test_draining_has_an_upper_bound(
    backend: IpvsBackend, kernel: FakeKernel, clock: Clock
) -> None:
    backend.sync(plan(A, B), full=True)
    kernel.active("10.244.1.3", 5)
    backend.sync(plan(A), full=False)
    clock.now += 61
    backend.sync(plan(A), full=False)
    assert weights(kernel) == {"10.244.1.2": 1}


def test_removed_udp_endpoint_is_deleted_at_once(backend: IpvsBackend, kernel: FakeKernel) -> None:
    udp = VsKey(Protocol.UDP, VIP, 80)
    backend.sync(plan(A, B, protocol=Protocol.UDP), full=True)
    kernel.active("10.244.1.3", 3, udp)
    backend.sync(plan(A, protocol=Protocol.UDP), full=False)
    assert weights(kernel, udp) == {"10.244.1.2": 1}


def test_draining_endpoint_that_returns_gets_its_weight_back(
    backend: IpvsBackend, kernel: FakeKernel
) -> None:
    backend.sync(plan(A, B), full=True)
    kernel.active("10.244.1.3", 1)
    backend.sync(plan(A), full=False)
    backend.sync(plan(A, B), full=False)
    assert weights(kernel) == {"10.244.1.2": 1, "10.244.1.3": 1} and not backend.draining


def test_restart_rebuilds_weights_of_live_endpoints(kernel: FakeKernel) -> None:
    first = IpvsBackend(kernel, FakeRunner(), clock=Clock())
    first.sync(plan(A, B), full=True)
    kernel.dests_[KEY][("10.244.1.2", 8080)] = KernelDest("10.244.1.2", 8080, 0)  # left at 0
    second = IpvsBackend(kernel, FakeRunner(), clock=Clock())
    second.sync(plan(A, B), full=False)  # the first sync of a backend is always full
    assert weights(kernel) == {"10.244.1.2": 1, "10.244.1.3": 1}


def test_only_proxyds_virtual_servers_are_ever_changed(
    backend: IpvsBackend, kernel: FakeKernel
) -> None:
    foreign = VsKey(Protocol.TCP, "10.99.0.1", 80)
    foreign_np = VsKey(Protocol.TCP, "192.168.1.5", 31000)
    for key in (foreign, foreign_np):
        kernel.vs[key] = VirtualServer(key, "wlc")
        kernel.dests_[key] = {}
    backend.sync(plan(A, node_port=30080), full=True)
    assert VsKey(Protocol.TCP, "192.168.1.5", 30080) in kernel.vs
    kernel.ops.clear()
    backend.sync(node_plan(addresses=("192.168.1.5",)), full=True)
    assert set(kernel.vs) == {foreign, foreign_np}
    kinds = [type(op) for op in kernel.ops]
    assert max(i for i, k in enumerate(kinds) if k is DelService) < min(
        i for i, k in enumerate(kinds) if k in (DelMember, DelAddress)
    )
    assert kernel.addrs == set() and kernel.sets["PROXYD-NODE-PORT-TCP"] == set()


def test_stale_virtual_servers_of_a_previous_run_are_found_in_the_kernel(
    kernel: FakeKernel,
) -> None:
    stale = VsKey(Protocol.TCP, "10.96.0.99", 80)
    kernel.addrs.add("10.96.0.99")  # bound on proxyd's interface: proxyd's
    kernel.vs[stale] = VirtualServer(stale, "rr")
    kernel.dests_[stale] = {}
    IpvsBackend(kernel, FakeRunner(), clock=Clock()).sync(plan(A), full=True)
    assert set(kernel.vs) == {KEY} and kernel.addrs == {VIP}


def test_unknown_scheduler_is_a_warning_not_a_failure(
    backend: IpvsBackend, kernel: FakeKernel
) -> None:
    result = backend.sync(plan(A, scheduler="fastest"), full=True)
    assert result.ok and [r for r, _ in result.warnings] == ["unknown_scheduler"]
    assert kernel.vs[KEY].scheduler == "rr"


def test_scheduler_missing_in_the_kernel_falls_back_to_the_default(kernel: FakeKernel) -> None:
    kernel.refuse["mh"] = errno.ENOENT
    backend = IpvsBackend(
        kernel, FakeRunner(), clock=Clock(), options=IpvsOptions(default_scheduler="lc")
    )
    result = backend.sync(plan(A, B, scheduler="mh:port"), full=True)
    assert result.ok, result.error
    assert [r for r, _ in result.warnings] == ["scheduler_unavailable"]
    assert kernel.vs[KEY] == VirtualServer(KEY, "lc")
    assert weights(kernel) == {"10.244.1.2": 1, "10.244.1.3": 1}


def test_refused_operation_fails_the_sync_and_forces_the_next_one_full(
    backend: IpvsBackend, kernel: FakeKernel
) -> None:
    backend.sync(plan(A), full=True)
    kernel.fail_next = AddDest(KEY, RealServer("10.244.1.3", 8080))
    result = backend.sync(plan(A, B), full=False)
    assert not result.ok and "refused 1" in (result.error or "")
    before = kernel.prepared
    result = backend.sync(plan(A, B), full=False)
    assert result.ok and result.full and kernel.prepared == before + 1
    assert weights(kernel) == {"10.244.1.2": 1, "10.244.1.3": 1}


def test_cleanup_removes_only_proxyds_state(backend: IpvsBackend, kernel: FakeKernel) -> None:
    foreign = VsKey(Protocol.TCP, "10.99.0.1", 80)
    kernel.vs[foreign] = VirtualServer(foreign, "wlc")
    kernel.dests_[foreign] = {}
    backend.sync(plan(A, node_port=30080), full=True)
    backend.cleanup()
    assert set(kernel.vs) == {foreign} and kernel.removed


def test_remove_foreign_deletes_kube_proxys_virtual_servers_only(
    backend: IpvsBackend, kernel: FakeKernel
) -> None:
    backend.sync(plan(A, node_port=30080), full=True)  # proxyd: VIP:80, 192.168.1.5:30080
    mine = set(kernel.vs)
    node, other_node = "192.168.1.5", "192.168.1.6"
    kernel.others["kube-ipvs0"] = {"10.96.0.20", VIP}  # kube-proxy binds VIP too
    kernel.sets |= {"KUBE-NODE-PORT-TCP": {"30090", "30080"}, "KUBE-NODE-PORT-LOCAL-UDP": {"30091"}}
    theirs = {
        VsKey(Protocol.TCP, "10.96.0.20", 443),  # address on kube-ipvs0
        VsKey(Protocol.TCP, node, 30090),  # NodePort on a local address
        VsKey(Protocol.UDP, node, 30091),  # eTP Local NodePort
    }
    foreign = {
        VsKey(Protocol.TCP, "10.99.0.1", 443),  # someone else's
        VsKey(Protocol.TCP, other_node, 30090),  # port in the set, address not local
        VsKey(Protocol.UDP, node, 30090),  # port in the TCP set only
        VsKey(Protocol.TCP, node, 31000),  # port in no set
    }
    for key in theirs | foreign:
        kernel.vs[key] = VirtualServer(key, "rr")
        kernel.dests_[key] = {}

    gone = backend.remove_foreign("kube-ipvs0", KUBE_PROXY_NODE_PORT_SETS, {node})

    assert set(gone) == theirs
    assert set(kernel.vs) == mine | foreign  # proxyd's survive even where both markers hold
    assert not kernel.removed  # the markers stay: the caller removes them afterwards
    assert backend.sync(plan(A, node_port=30080), full=False).ok


def test_remove_foreign_reads_kube_proxys_sctp_sets_by_address_and_port(
    backend: IpvsBackend, kernel: FakeKernel
) -> None:
    node, node6 = "192.168.1.5", "fd00::5"
    kernel.sets |= {  # kube-proxy's SCTP sets are hash:ip,port; its IPv6 ones KUBE-6-…
        "KUBE-NODE-PORT-SCTP-HASH": {f"{node},sctp:30100"},
        "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS": {f"{node6},sctp:30101"},  # 31 characters
        "KUBE-6-NODE-PORT-UDP": {"30102"},
    }
    theirs = {
        VsKey(Protocol.SCTP, node, 30100),
        VsKey(Protocol.SCTP, node6, 30101),
        VsKey(Protocol.UDP, node6, 30102),
    }
    foreign = {
        VsKey(Protocol.SCTP, node, 30101),  # the set names this port on node6 only
        VsKey(Protocol.TCP, node, 30100),  # the port is SCTP's
        VsKey(Protocol.SCTP, node, 30102),  # a UDP port
    }
    for key in theirs | foreign:
        kernel.vs[key] = VirtualServer(key, "rr")
        kernel.dests_[key] = {}

    gone = backend.remove_foreign("kube-ipvs0", KUBE_PROXY_NODE_PORT_SETS, {node, node6})

    assert set(gone) == theirs and set(kernel.vs) == foreign


def test_sctp_node_ports_are_proxyds_by_address_and_port(
    backend: IpvsBackend, kernel: FakeKernel
) -> None:
    """proxyd's SCTP NodePort set holds node address and port: the same port on an
    address that is not the node's is someone else's virtual server."""
    backend.sync(plan(A, protocol=Protocol.SCTP, node_port=30080), full=True)
    mine = VsKey(Protocol.SCTP, "192.168.1.5", 30080)
    assert mine in kernel.vs
    assert kernel.sets["PROXYD-NODE-PORT-SCTP"] == {"192.168.1.5,sctp:30080"}
    foreign = VsKey(Protocol.SCTP, "192.168.1.6", 30080)
    kernel.vs[foreign] = VirtualServer(foreign, "rr")
    kernel.dests_[foreign] = {}
    restarted = IpvsBackend(kernel, FakeRunner(), clock=Clock())
    assert restarted.sync(node_plan(addresses=("192.168.1.5",)), full=True).ok
    assert set(kernel.vs) == {foreign} and kernel.sets["PROXYD-NODE-PORT-SCTP"] == set()


def test_refused_sctp_node_port_delete_keeps_its_set_member(
    backend: IpvsBackend, kernel: FakeKernel
) -> None:
    """The member is the virtual server's only marker: removing it after a refused
    delete would leave a virtual server proxyd no longer recognises."""
    backend.sync(plan(A, protocol=Protocol.SCTP, node_port=30080), full=True)
    doomed = VsKey(Protocol.SCTP, "192.168.1.5", 30080)
    kernel.fail_next = DelService(doomed)
    empty = node_plan(addresses=("192.168.1.5",))
    assert not backend.sync(empty, full=False).ok
    assert kernel.sets["PROXYD-NODE-PORT-SCTP"] == {"192.168.1.5,sctp:30080"}
    assert backend.sync(empty, full=False).ok  # full: reads the kernel again
    assert kernel.vs == {} and kernel.sets["PROXYD-NODE-PORT-SCTP"] == set()


def test_remove_foreign_keeps_proxyds_when_it_serves_from_kube_ipvs0(kernel: FakeKernel) -> None:
    backend = IpvsBackend(kernel, FakeRunner(), clock=Clock(), interface="kube-ipvs0")
    backend.sync(plan(A, node_port=30080), full=True)
    mine = set(kernel.vs)
    stale = VsKey(Protocol.TCP, "192.168.1.5", 30090)
    kernel.sets["KUBE-NODE-PORT-TCP"] = {"30080", "30090"}
    kernel.vs[stale] = VirtualServer(stale, "rr")
    kernel.dests_[stale] = {}

    gone = backend.remove_foreign("kube-ipvs0", KUBE_PROXY_NODE_PORT_SETS, {"192.168.1.5"})

    assert gone == [stale] and set(kernel.vs) == mine


def test_partial_sync_looks_only_at_changed_service_ports(kernel: FakeKernel) -> None:
    web = sp(internal=[A], cluster_ips=(VIP,))
    api = sp("api", internal=[B], cluster_ips=("10.96.0.11",))
    backend = IpvsBackend(kernel, FakeRunner(), clock=Clock())
    backend.sync(node_plan(api, web), full=True)
    drift = VsKey(Protocol.TCP, "10.96.0.11", 80)
    kernel.dests_[drift][("10.244.1.3", 8080)] = KernelDest("10.244.1.3", 8080, 7)  # drift
    kernel.ops.clear()
    moved = sp(internal=[A, C], cluster_ips=(VIP,))
    result = backend.sync(node_plan(api, moved), full=False)
    assert kernel.ops == [AddDest(KEY, RealServer("10.244.1.4", 8080))]
    assert {k.service.name for k in result.written} == {"web"}
    backend.sync(node_plan(api, moved), full=True)  # full repairs
    assert weights(kernel, drift) == {"10.244.1.3": 1}
