"""IpvsBackend over sequences of syncs: draining, in-place changes, addresses and markers
moving between services, failures half-way, a kernel changed behind proxyd's back.

The fake kernel here is :class:`tests.test_ipvs_backend.FakeKernel` made as strict as the
real one about duplicates and missing objects (EEXIST, ESRCH, ...), so an operation the
backend sends twice or out of order shows up as a refused operation.
"""

from __future__ import annotations

import errno

import pytest

import proxyd.backends.ipvs as i
from proxyd.backends.ipvs import AddDest, DelService, IpvsBackend, KernelDest, Op
from proxyd.backends.ipvs_plan import RealServer, VirtualServer, VsKey, desired_state
from proxyd.model import Endpoint, NodePlan, Protocol, ServicePlan, TrafficPolicy
from tests.builders import ep, node_plan, sp
from tests.test_ipvs_backend import KEY, VIP, Clock, FakeKernel, FakeRunner, weights

A, B, C = ep("10.244.1.2"), ep("10.244.1.3"), ep("10.244.1.4")
NODE, NODE2 = "192.168.1.5", "192.168.1.6"
EXT = "10.250.0.10"


class StrictKernel(FakeKernel):
    """Refuses what the kernel refuses: adding what exists, changing what does not."""

    def _do(self, op: Op) -> int:
        match op:
            case i.AddService(s) if s.key in self.vs:
                return errno.EEXIST
            case i.SetService(s) if s.key not in self.vs:
                return errno.ESRCH
            case i.DelService(k) if k not in self.vs:
                return errno.ESRCH
            case i.AddDest(k, r) if k in self.vs and r.addr in self.dests_[k]:
                return errno.EEXIST
            case i.SetDest(k, r) | i.DelDest(k, r) if k in self.vs and r.addr not in self.dests_[k]:
                return errno.ENOENT
            case i.DelDest(k, _) if k not in self.vs:
                return errno.ESRCH
            case i.AddAddress(a) if a in self.addrs:
                return errno.EEXIST
            case i.DelAddress(a) if a not in self.addrs:
                return errno.EADDRNOTAVAIL
        return super()._do(op)


@pytest.fixture
def kernel() -> StrictKernel:
    return StrictKernel()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(kernel: StrictKernel, clock: Clock) -> IpvsBackend:
    return IpvsBackend(kernel, FakeRunner(), clock=clock, drain_timeout=60)


def web(*eps: Endpoint, **fields: object) -> ServicePlan:
    return sp(internal=eps, cluster_ips=(VIP,), **fields)  # type: ignore[arg-type]


def converged(kernel: FakeKernel, plan: NodePlan) -> bool:
    """The kernel holds exactly what ``plan`` wants (nothing draining)."""
    want = desired_state(plan)
    return (
        kernel.vs == {k: s.server for k, s in want.services.items()}
        and {k: set(d) for k, d in kernel.dests_.items()}
        == {k: {r.addr for r in s.reals} for k, s in want.services.items()}
        and kernel.addrs == set(want.addresses)
        and {n: m for n, m in kernel.sets.items() if m} == {n: m for n, m in want.sets.items() if m}
    )


# --- bugs found (each failed before its fix) ---------------------------------------------


def test_removed_endpoint_drains_when_node_addresses_change_in_the_same_partial_sync(
    backend: IpvsBackend, kernel: StrictKernel
) -> None:
    """A node address change recomputes every fragment; the real servers the plan dropped
    in that sync must still be read from the kernel, not from the mirror (active 0)."""
    backend.sync(node_plan(web(A, B), addresses=(NODE,)), full=True)
    kernel.active("10.244.1.3", 2)
    assert backend.sync(node_plan(web(A), addresses=(NODE2,)), full=False).ok
    assert weights(kernel) == {"10.244.1.2": 1, "10.244.1.3": 0}
    assert backend.draining == {(KEY, ("10.244.1.3", 8080))}


def test_scheduler_fallback_on_an_in_place_change_does_not_add_real_servers_twice(
    backend: IpvsBackend, kernel: StrictKernel
) -> None:
    """SetService refused (no such scheduler module): the virtual server still exists, so
    the real servers added after it took effect; the retry must not add them again."""
    kernel.refuse["mh"] = errno.ENOENT
    backend.sync(node_plan(web(A)), full=True)
    result = backend.sync(node_plan(web(A, B, ipvs_scheduler="mh")), full=False)
    assert result.ok, result.detail
    assert [r for r, _ in result.warnings] == ["scheduler_unavailable"]
    assert kernel.vs[KEY].scheduler == "rr"
    assert weights(kernel) == {"10.244.1.2": 1, "10.244.1.3": 1}


@pytest.mark.parametrize("doomed", [KEY, VsKey(Protocol.TCP, NODE, 30080)], ids=["vip", "np"])
def test_refused_virtual_server_delete_keeps_the_marker_that_makes_it_proxyds(
    backend: IpvsBackend, kernel: StrictKernel, doomed: VsKey
) -> None:
    """Without its address on the interface / its port in the NodePort set, a virtual
    server that survived a refused delete is no longer recognisably proxyd's and leaks."""
    backend.sync(node_plan(web(A, node_port=30080), addresses=(NODE,)), full=True)
    kernel.fail_next = DelService(doomed)
    empty = node_plan(addresses=(NODE,))
    assert not backend.sync(empty, full=False).ok
    assert backend.sync(empty, full=False).ok  # full: reads the kernel again
    assert kernel.vs == {} and kernel.addrs == set()
    assert converged(kernel, empty)


@pytest.mark.parametrize("everything", ["0.0.0.0/0", "::/0"])
def test_source_range_of_everything_needs_no_net_entry(everything: str) -> None:
    """ipset refuses a /0 in a hash:ip,port,net member (every sync would fail); a family
    open to all sources needs no firewall entry at all."""
    lb = sp(
        internal=[A],
        cluster_ips=(VIP,),
        load_balancer_ips=("192.0.2.30", "2001:db8::30"),
        load_balancer_source_ranges=(everything, "198.51.100.0/24", "2001:db8:1::/48"),
    )
    state = desired_state(node_plan(lb))
    open_v6 = everything == "::/0"
    assert all(not m.endswith("/0") for ms in state.sets.values() for m in ms)
    assert state.sets["PROXYD-LB-FW"] == ({"192.0.2.30,tcp:80"} if open_v6 else frozenset())
    assert state.sets["PROXYD-6-LB-FW"] == (frozenset() if open_v6 else {"2001:db8::30,tcp:80"})


def test_foreign_virtual_server_on_a_port_that_is_also_a_node_port_is_left_alone(
    backend: IpvsBackend, kernel: StrictKernel
) -> None:
    """Another proxy's service (say kube-proxy's, during a split migration) at its own
    address on a port that happens to be one of proxyd's NodePorts is not proxyd's."""
    foreign = VsKey(Protocol.TCP, "10.99.0.1", 30080)
    kernel.vs[foreign] = VirtualServer(foreign, "wlc")
    kernel.dests_[foreign] = {}
    p = node_plan(web(A, node_port=30080), addresses=(NODE,))
    assert backend.sync(p, full=True).ok
    assert backend.sync(p, full=True).ok
    assert foreign in kernel.vs


@pytest.mark.parametrize("full", [False, True])
def test_node_port_on_an_address_the_node_no_longer_has_is_still_deleted(
    backend: IpvsBackend, kernel: StrictKernel, full: bool
) -> None:
    backend.sync(node_plan(web(A, node_port=30080), addresses=(NODE,)), full=True)
    moved = node_plan(web(A, node_port=30080), addresses=(NODE2,))
    assert backend.sync(moved, full=full).ok and converged(kernel, moved)
    assert backend.sync(moved, full=True).ok and converged(kernel, moved)


# --- sequences found sound (kept as regression tests) -----------------------------------


def test_draining_endpoint_readded_keeps_weight_and_is_never_deleted_later(
    backend: IpvsBackend, kernel: StrictKernel, clock: Clock
) -> None:
    backend.sync(node_plan(web(A, B)), full=True)
    kernel.active("10.244.1.3", 1)
    backend.sync(node_plan(web(A)), full=False)
    backend.sync(node_plan(web(A, B)), full=False)
    kernel.active("10.244.1.3", 0)
    clock.now += 120  # past the old drain deadline
    for full in (False, True, False):
        assert backend.sync(node_plan(web(A, B)), full=full).ok
    assert weights(kernel) == {"10.244.1.2": 1, "10.244.1.3": 1} and not backend.draining


def test_scheduler_and_persistence_change_in_place_keep_real_servers(
    backend: IpvsBackend, kernel: StrictKernel
) -> None:
    backend.sync(node_plan(web(A, B)), full=True)
    steps = [
        {"ipvs_scheduler": "sh:fallback", "session_affinity_timeout": 10800},
        {"ipvs_scheduler": "sh", "session_affinity_timeout": 60},
        {},
    ]
    for fields in steps:
        kernel.ops.clear()
        p = node_plan(web(A, B, **fields))
        assert backend.sync(p, full=False).ok
        assert [type(o).__name__ for o in kernel.ops] == ["SetService"]
        assert converged(kernel, p)
    assert kernel.vs[KEY] == VirtualServer(KEY, "rr")


def test_service_ip_moving_to_another_service_keeps_its_address(
    backend: IpvsBackend, kernel: StrictKernel
) -> None:
    backend.sync(node_plan(web(A)), full=True)
    for p in (
        node_plan(sp("api", internal=[B], cluster_ips=(VIP,), port=443)),
        node_plan(sp("api", internal=[B], cluster_ips=("10.96.0.11",), external_ips=(VIP,))),
        node_plan(sp("api", internal=[B], cluster_ips=("10.96.0.11",))),
    ):
        assert backend.sync(p, full=False).ok
        assert converged(kernel, p)
        assert backend.sync(p, full=True).ok and converged(kernel, p)


def test_node_port_reused_by_another_service_with_another_policy(
    backend: IpvsBackend, kernel: StrictKernel
) -> None:
    backend.sync(node_plan(web(A, node_port=30080), addresses=(NODE,)), full=True)
    local = sp(
        "api",
        internal=[B],
        cluster_ips=("10.96.0.11",),
        node_port=30080,
        external_traffic_policy=TrafficPolicy.LOCAL,
    )
    p = node_plan(web(A), local, addresses=(NODE,))
    assert backend.sync(p, full=False).ok and converged(kernel, p)
    assert kernel.sets["PROXYD-NODE-PORT-TCP"] == set()
    assert kernel.sets["PROXYD-NODE-PORT-LOCAL-TCP"] == {"30080"}


def test_shared_external_ip_is_unbound_only_with_its_last_virtual_server(
    backend: IpvsBackend, kernel: StrictKernel
) -> None:
    one = web(A, external_ips=(EXT,))
    two = sp("api", internal=[B], cluster_ips=("10.96.0.11",), port=443, external_ips=(EXT,))
    backend.sync(node_plan(one, two), full=True)
    assert backend.sync(node_plan(two), full=False).ok
    assert EXT in kernel.addrs and VIP not in kernel.addrs
    assert backend.sync(node_plan(), full=False).ok
    assert kernel.addrs == set() and kernel.vs == {}


def test_conflicting_claim_takes_over_when_the_winner_goes(
    backend: IpvsBackend, kernel: StrictKernel
) -> None:
    loser = sp("zz", internal=[B], cluster_ips=("10.96.0.11",), external_ips=(VIP,))
    result = backend.sync(node_plan(web(A), loser), full=True)
    assert "conflict" in {r for r, _ in result.warnings}
    p = node_plan(loser)
    assert backend.sync(p, full=False).ok and converged(kernel, p)
    assert weights(kernel) == {"10.244.1.3": 1}


def test_failure_half_way_then_the_next_sync_converges(
    backend: IpvsBackend, kernel: StrictKernel
) -> None:
    backend.sync(node_plan(web(A, B), addresses=(NODE,)), full=True)
    api = sp("api", internal=[C], cluster_ips=("10.96.0.11",), node_port=30081)
    p = node_plan(web(A, C), api, addresses=(NODE,))
    kernel.fail_next = AddDest(
        VsKey(Protocol.TCP, "10.96.0.11", 80), RealServer("10.244.1.4", 8080)
    )
    assert not backend.sync(p, full=False).ok
    assert backend.sync(p, full=False).ok and converged(kernel, p)


def test_kernel_changed_behind_proxyds_back_is_repaired_by_a_full_sync(
    backend: IpvsBackend, kernel: StrictKernel
) -> None:
    p = node_plan(web(A, B, node_port=30080), addresses=(NODE,))
    backend.sync(p, full=True)
    del kernel.vs[KEY], kernel.dests_[KEY]  # someone deleted it
    foreign = VsKey(Protocol.TCP, "10.99.0.1", 80)
    kernel.vs[foreign] = VirtualServer(foreign, "wlc")
    kernel.dests_[foreign] = {}
    kernel.addrs.discard(VIP)
    assert backend.sync(p, full=False).ok  # trusts the mirror: nothing to do
    assert backend.sync(p, full=True).ok
    assert kernel.vs.pop(foreign) and (kernel.dests_.pop(foreign) == {})
    assert converged(kernel, p)


def test_dual_stack_plan_converges_and_drains_per_family(
    backend: IpvsBackend, kernel: StrictKernel
) -> None:
    a6, b6 = ep("fd00:244::2"), ep("fd00:244::3")
    key6 = VsKey(Protocol.TCP, "fd00:96::10", 80)
    dual = sp(internal=[A, B, a6, b6], cluster_ips=(VIP, "fd00:96::10"), node_port=30080)
    p = node_plan(dual, addresses=(NODE, "fd00::5"))
    backend.sync(p, full=True)
    assert converged(kernel, p)
    assert kernel.sets["PROXYD-6-CLUSTER-IP"] == {"fd00:96::10,tcp:80"}
    kernel.dests_[key6][("fd00:244::3", 8080)] = KernelDest("fd00:244::3", 8080, 1, True, 4)
    fewer = node_plan(
        sp(internal=[A, B, a6], cluster_ips=(VIP, "fd00:96::10"), node_port=30080),
        addresses=(NODE, "fd00::5"),
    )
    assert backend.sync(fewer, full=False).ok
    assert weights(kernel, key6) == {"fd00:244::2": 1, "fd00:244::3": 0}
    assert weights(kernel) == {"10.244.1.2": 1, "10.244.1.3": 1}


def test_many_draining_real_servers_go_as_their_connections_end(
    backend: IpvsBackend, kernel: StrictKernel
) -> None:
    eps = [ep(f"10.244.2.{i}") for i in range(1, 41)]
    backend.sync(node_plan(web(*eps)), full=True)
    for e in eps[1:]:
        kernel.active(e.ip, 1)
    p = node_plan(web(eps[0]))
    assert backend.sync(p, full=False).ok and len(backend.draining) == 39
    for e in eps[1:21]:
        kernel.active(e.ip, 0)
    assert backend.sync(p, full=False).ok and len(backend.draining) == 19
    assert backend.sync(p, full=True).ok and len(backend.draining) == 19
    assert sum(1 for w in weights(kernel).values() if w == 0) == 19
