"""A write that lands between a sync's checkout and its snapshot, then is undone.

The sync checks out the pending changes, then copies the store. An informer write in
between is in the copy (the plan may use it) but still pending; if it is then undone,
the change tracker used to see a flap against the value from before that write and drop
it, so no later sync re-planned the service: its rules kept the undone value for good
(a periodic full sync re-uses unchanged services' plans).
"""

from __future__ import annotations

from collections.abc import Callable

from proxyd.backends import SyncResult
from proxyd.commands.run import Syncer
from proxyd.model import ClusterSnapshot, NodePlan, ServiceRef
from proxyd.plan import build_plan
from proxyd.runner import ManualClock
from proxyd.store import ClusterState
from tests.builders import eps, new_syncer, node, svc

WEB = ServiceRef("default", "web")


class RacyState(ClusterState):
    """Runs ``before_snapshot`` once, just before the next snapshot is copied: an
    informer thread's write landing between the sync's checkout and its snapshot."""

    def __init__(self) -> None:
        super().__init__()
        self.before_snapshot: Callable[[], None] | None = None

    def snapshot(self) -> ClusterSnapshot:
        hook, self.before_snapshot = self.before_snapshot, None
        if hook is not None:
            hook()
        return super().snapshot()


class LastPlan:
    plan: NodePlan | None = None

    def sync(self, plan: NodePlan, *, full: bool) -> SyncResult:
        self.plan = plan
        return SyncResult(ok=True, full=full)

    def cleanup(self) -> None:
        raise AssertionError("not called")


def synced_web() -> tuple[RacyState, LastPlan, Syncer]:
    """Node n1 serving ``web`` (one endpoint), synced once."""
    state, backend = RacyState(), LastPlan()
    s = new_syncer(state, backend, ManualClock())
    state.set_node(node("n1"))
    state.set_service(svc("web"))
    state.set_slice(eps("web", ["10.244.1.2"]))
    s.sync()
    return state, backend, s


def test_slice_write_between_checkout_and_snapshot_then_undone_is_replanned() -> None:
    state, backend, s = synced_web()
    state.set_slice(eps("web", ["10.244.1.3"]))
    state.before_snapshot = lambda: state.set_slice(eps("web", ["10.244.1.4"]))
    s.sync()  # planned with .4 (in the snapshot); .3 -> .4 still pending
    state.set_slice(eps("web", ["10.244.1.3"]))  # back to .3: not a flap for the plan
    s.sync()
    assert backend.plan == build_plan(state.snapshot(), "n1")
    assert backend.plan is not None
    assert {e.ip for e in backend.plan.services[0].internal} == {"10.244.1.3"}


def test_service_write_between_checkout_and_snapshot_then_undone_is_replanned() -> None:
    state, backend, s = synced_web()
    state.set_service(svc("web", cluster_ips=("10.96.0.20",)))
    state.before_snapshot = lambda: state.set_service(svc("web", cluster_ips=("10.96.0.30",)))
    s.sync()
    state.set_service(svc("web", cluster_ips=("10.96.0.20",)))
    s.sync()
    assert backend.plan == build_plan(state.snapshot(), "n1")


def test_a_flap_seen_by_no_snapshot_is_still_dropped() -> None:
    state = ClusterState()
    state.set_service(svc("web"))
    state.checkout()
    state.snapshot()
    state.set_service(svc("web", cluster_ips=("10.96.0.99",)))
    state.set_service(svc("web"))
    assert state.checkout().changed_services == frozenset()


def test_a_change_pending_at_a_snapshot_and_undone_is_still_handed_over() -> None:
    state = ClusterState()
    state.set_service(svc("web"))
    state.checkout()
    state.set_service(svc("web", cluster_ips=("10.96.0.99",)))
    state.snapshot()
    state.set_service(svc("web"))
    assert state.checkout().services == {WEB}
