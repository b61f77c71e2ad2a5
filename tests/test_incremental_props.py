"""Property: however writes, syncs, failed syncs and writes racing a sync's checkout
interleave, once the store is quiet and a sync has run, the plan handed to the backend
equals a plan built from scratch, and the iptables rules the backend's partial syncs
leave equal those of one full render of that plan."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd.backends import Backend, SyncResult
from proxyd.backends.iptables import IptablesBackend, Variant
from proxyd.backends.iptables_render import FamilyState, RenderOptions, render
from proxyd.model import (
    ClusterSnapshot,
    EndpointSlice,
    IPFamily,
    NodePlan,
    Protocol,
    Service,
    TrafficPolicy,
)
from proxyd.plan import build_plan
from proxyd.runner import ManualClock
from proxyd.store import ClusterState
from tests.builders import eps, new_syncer, node, pool, port_spec, sep, svc
from tests.test_iptables_kernel_model import KernelRunner

NODE = "n1"
NAMES = ("a", "b")
SLICES = ("s1", "s2")
IPS = ("10.244.1.2", "10.244.1.3", "10.244.2.2")
OPTIONS = RenderOptions(cluster_cidrs=("10.244.0.0/16",))


class RacyState(ClusterState):
    """Runs queued writes just before the next snapshot is copied (an informer thread
    writing between the sync's checkout and its snapshot)."""

    def __init__(self) -> None:
        super().__init__()
        self.racing: list[Callable[[], None]] = []

    def snapshot(self) -> ClusterSnapshot:
        racing, self.racing = self.racing, []
        for write in racing:
            write()
        return super().snapshot()


@dataclass
class RenderingBackend:
    """Keeps the last applied plan and rules like a backend: a failed sync applies
    nothing; a partial sync renders against what the last successful one left."""

    fail: bool = False
    state: FamilyState | None = None
    text: list[str] = field(default_factory=list)
    plan: NodePlan | None = None

    def sync(self, plan: NodePlan, *, full: bool) -> SyncResult:
        if self.fail:
            return SyncResult(ok=False, full=full, error="refused")
        payload = render(plan, IPFamily.IPV4, OPTIONS, self.state, full=full)
        self.state, self.plan = payload.state, plan
        return SyncResult(ok=True, full=full)

    def cleanup(self) -> None:
        raise AssertionError("not called")


def service(name: str, variant: int) -> Service:
    fields: dict[str, Any] = {}
    if variant == 1:
        fields["openyurt_scopes"] = ("openyurt.io/nodepool",)
    elif variant == 2:
        fields["internal_traffic_policy"] = TrafficPolicy.LOCAL
    elif variant == 3:
        fields["ports"] = (port_spec(53, "http", Protocol.UDP),)
    return svc(name, cluster_ips=(f"10.96.0.{NAMES.index(name) + 10}",), **fields)


def slice_(name: str, owner: str, ips: tuple[int, ...]) -> EndpointSlice:
    nodes = ("n1", "n2", "n3")
    return eps(owner, [sep(IPS[i], node_name=nodes[i]) for i in ips], name=name)


def write(state: ClusterState, op: tuple[Any, ...]) -> None:
    match op:
        case ("svc", name, variant):
            state.set_service(service(name, variant))
        case ("del_svc", name):
            state.delete_service(service(name, 0).ref)
        case ("slice", name, owner, ips):
            state.set_slice(slice_(name, owner, ips))
        case ("del_slice", name):
            state.delete_slice("default", name)
        case ("node", name, p):
            state.set_node(node(name, pool=p))
        case ("pool", p, members):
            state.set_pool(pool(p, *members))


writes = st.one_of(
    st.tuples(st.just("svc"), st.sampled_from(NAMES), st.integers(0, 3)),
    st.tuples(st.just("svc"), st.just("a"), st.integers(0, 1)),
    st.tuples(st.just("slice"), st.just("s1"), st.just("a"), st.sampled_from(((0,), (1,)))),
    st.tuples(st.just("del_svc"), st.sampled_from(NAMES)),
    st.tuples(st.just("slice"), st.sampled_from(SLICES), st.sampled_from(NAMES),
              st.sampled_from(((), (0,), (0, 1), (2,)))),
    st.tuples(st.just("del_slice"), st.sampled_from(SLICES)),
    st.tuples(st.just("node"), st.sampled_from(("n1", "n2", "n3")),
              st.sampled_from((None, "p1", "p2"))),
    st.tuples(st.just("pool"), st.sampled_from(("p1", "p2")),
              st.lists(st.sampled_from(("n1", "n2", "n3")), unique=True)),
)
steps = st.one_of(
    st.tuples(st.just("write"), writes),
    st.tuples(st.just("race"), writes),
    st.tuples(st.just("sync"), st.booleans()),  # True: the backend refuses it
    st.tuples(st.just("tick"), st.floats(0, 40)),
)


def play(
    sequence: list[tuple[str, Any]],
    state: RacyState,
    backend: Backend,
    sync_failing: Callable[[str, Any], None],
) -> None:
    """Run ``sequence`` through a Syncer (``sync_failing`` arms the backend's failure for
    each sync step, and disarms it for ``("end", None)``), then two clean syncs: a write
    raced into the last sync's snapshot is handed to the second."""
    clock = ManualClock()
    s = new_syncer(state, backend, clock, node_name=NODE)
    for kind, arg in sequence:
        if kind == "write":
            write(state, arg)
        elif kind == "race":
            state.racing.append(functools.partial(write, state, arg))
        elif kind == "tick":
            clock.advance(float(arg))
        else:
            sync_failing(kind, arg)
            s.sync()
    state.racing.clear()
    sync_failing("end", None)
    s.sync()
    s.sync()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, max_size=40))
def test_incremental_syncs_converge_to_the_plan_from_scratch(
    sequence: list[tuple[str, Any]],
) -> None:
    state, backend = RacyState(), RenderingBackend()

    def sync_failing(kind: str, arg: Any) -> None:
        backend.fail = kind == "sync" and bool(arg)

    play(sequence, state, backend, sync_failing)
    expected = build_plan(state.snapshot(), NODE)
    assert backend.plan == expected
    fresh = render(expected, IPFamily.IPV4, OPTIONS, None, full=True).state
    assert backend.state is not None
    assert dict(backend.state.services) == dict(fresh.services)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(steps, st.tuples(st.just("legacy_fail"), st.none())), max_size=30))
def test_daemon_syncs_leave_the_tables_a_fresh_node_would_get(
    sequence: list[tuple[str, Any]],
) -> None:
    """The same, end to end: Syncer → IptablesBackend → a model of the kernel's tables
    (refused restores are atomic, or commit filter before nat fails)."""
    state, kernel = RacyState(), KernelRunner()
    backend = IptablesBackend(kernel, Variant.NFT, options=OPTIONS, families=(IPFamily.IPV4,))

    def sync_failing(kind: str, arg: Any) -> None:
        kernel.fail = "nat" if kind == "legacy_fail" else "all" if kind == "sync" and arg else None

    play(sequence, state, backend, sync_failing)
    fresh = KernelRunner()
    IptablesBackend(fresh, Variant.NFT, options=OPTIONS, families=(IPFamily.IPV4,)).sync(
        build_plan(state.snapshot(), NODE), full=True)
    assert kernel.tables == fresh.tables
