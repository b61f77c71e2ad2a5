"""Idle node: the periodic resync is full every syncPeriod (DESIGN §3), also when a sync
takes time. The runner used to time the period from the start of the previous run while
the syncer times it from the end of the last full sync, so every other periodic run
came a little early for "full" and rules deleted behind proxyd's back came back only
after 2 x syncPeriod."""

from __future__ import annotations

import itertools
import threading

from proxyd.backends import SyncResult
from proxyd.model import NodePlan
from proxyd.runner import BoundedFrequencyRunner, ManualClock
from proxyd.store import ClusterState
from tests.builders import new_syncer, node, svc


class SlowBackend:
    """Each sync takes ``seconds`` of the manual clock; stops the loop after ``limit``."""

    def __init__(self, clock: ManualClock, stop: threading.Event, limit: int) -> None:
        self.clock, self.stop, self.limit = clock, stop, limit
        self.syncs: list[tuple[float, bool]] = []

    def sync(self, plan: NodePlan, *, full: bool) -> SyncResult:
        self.syncs.append((self.clock.monotonic() - 1000.0, full))
        self.clock.advance(0.25)
        if len(self.syncs) == self.limit:
            self.stop.set()
        return SyncResult(ok=True, full=full)

    def cleanup(self) -> None:
        raise AssertionError("not called")


def test_idle_periodic_resync_is_full_every_sync_period() -> None:
    clock, stop = ManualClock(), threading.Event()
    backend = SlowBackend(clock, stop, limit=4)
    state = ClusterState()
    state.set_node(node("n1"))
    state.set_service(svc("web"))
    runner: BoundedFrequencyRunner
    syncer = new_syncer(state, backend, clock, retry_after=lambda s: runner.retry_after(s))
    runner = BoundedFrequencyRunner(syncer.sync, min_interval=1.0, max_interval=30.0,
                                    clock=clock, burst=2)
    runner.request()
    runner.loop(stop)
    assert [full for _, full in backend.syncs] == [True, True, True, True]
    starts = [at for at, _ in backend.syncs]
    assert all(29.0 < b - a <= 30.25 for a, b in itertools.pairwise(starts))
