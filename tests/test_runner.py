"""The bounded-frequency runner, stepped through a manual clock."""

from __future__ import annotations

import threading

import pytest

from proxyd.runner import Backoff, BoundedFrequencyRunner, ManualClock, SystemClock


class Recorder:
    """The sync function: records the clock time of every run."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.runs: list[float] = []
        self.start = clock.monotonic()

    def __call__(self) -> None:
        self.runs.append(round(self.clock.monotonic() - self.start, 6))


def make(min_interval: float = 1.0, max_interval: float = 10.0, burst: int = 1):
    clock = ManualClock()
    rec = Recorder(clock)
    runner = BoundedFrequencyRunner(
        rec, min_interval=min_interval, max_interval=max_interval, burst=burst, clock=clock
    )
    return clock, rec, runner


def test_nothing_runs_before_a_request_or_the_period() -> None:
    clock, rec, runner = make()
    assert not runner.run_if_due()
    clock.advance(9.999)
    assert not runner.run_if_due()
    assert rec.runs == []


def test_request_runs_at_once_when_a_token_is_free() -> None:
    _clock, rec, runner = make()
    runner.request()
    assert runner.due_in() == 0
    assert runner.run_if_due()
    assert rec.runs == [0.0]


def test_requests_merge_into_one_run() -> None:
    _clock, rec, runner = make()
    for _ in range(5):
        runner.request()
    assert runner.run_if_due()
    assert not runner.run_if_due()
    assert rec.runs == [0.0]


def test_request_too_early_waits_for_min_interval() -> None:
    clock, rec, runner = make(min_interval=1.0)
    runner.request()
    runner.run_if_due()
    clock.advance(0.3)
    runner.request()
    assert runner.due_in() == pytest.approx(0.7)
    assert not runner.run_if_due()
    clock.advance(0.7)
    assert runner.run_if_due()
    assert rec.runs == [0.0, 1.0]


def test_burst_allows_back_to_back_runs_then_limits() -> None:
    clock, rec, runner = make(min_interval=1.0, burst=2)
    for _ in range(3):
        runner.request()
        runner.run_if_due()
    assert rec.runs == [0.0, 0.0]
    assert runner.due_in() == pytest.approx(1.0)
    clock.advance(1.0)
    assert runner.run_if_due()
    assert rec.runs == [0.0, 0.0, 1.0]


def test_period_runs_without_requests_and_restarts_after_each_run() -> None:
    clock, rec, runner = make(max_interval=10.0)
    clock.advance(4.0)
    runner.request()
    runner.run_if_due()
    assert runner.due_in() == pytest.approx(10.0)
    clock.advance(10.0)
    assert runner.run_if_due()
    assert rec.runs == [4.0, 14.0]


def test_retry_after_schedules_a_run_and_earliest_retry_wins() -> None:
    clock, _rec, runner = make(min_interval=1.0, max_interval=30.0)
    runner.retry_after(5.0)
    runner.retry_after(3.0)
    runner.retry_after(8.0)
    assert runner.due_in() == pytest.approx(3.0)
    clock.advance(3.0)
    assert runner.run_if_due()
    assert runner.due_in() == pytest.approx(30.0)  # the retry was consumed


def test_retry_after_still_respects_min_interval() -> None:
    _clock, _rec, runner = make(min_interval=2.0)
    runner.request()
    runner.run_if_due()
    runner.retry_after(0.5)
    assert runner.due_in() == pytest.approx(2.0)


def test_request_during_run_causes_another_run() -> None:
    clock = ManualClock()
    runs: list[float] = []
    runner: BoundedFrequencyRunner

    def fn() -> None:
        runs.append(clock.monotonic())
        if len(runs) == 1:
            runner.request()

    runner = BoundedFrequencyRunner(fn, min_interval=0.5, max_interval=10, clock=clock, burst=1)
    runner.request()
    runner.run_if_due()
    assert runner.due_in() == pytest.approx(0.5)
    clock.advance(0.5)
    assert runner.run_if_due()
    assert runs == [1000.0, 1000.5]


def test_zero_min_interval_never_limits() -> None:
    _clock, rec, runner = make(min_interval=0.0, burst=1)
    for _ in range(4):
        runner.request()
        assert runner.run_if_due()
    assert rec.runs == [0.0, 0.0, 0.0, 0.0]


def test_loop_waits_exactly_until_due_and_stops() -> None:
    clock = ManualClock()
    stop = threading.Event()
    runs: list[float] = []

    def fn() -> None:
        runs.append(clock.monotonic() - 1000.0)
        if len(runs) == 3:
            stop.set()

    runner = BoundedFrequencyRunner(fn, min_interval=1.0, max_interval=5.0, clock=clock, burst=1)
    runner.request()
    runner.loop(stop)
    assert runs == [0.0, 5.0, 10.0]
    assert clock.waits == [5.0, 5.0]


def test_loop_on_the_real_clock_reacts_to_request_and_stop() -> None:
    stop = threading.Event()
    ran = threading.Event()
    runner = BoundedFrequencyRunner(
        ran.set, min_interval=0.0, max_interval=3600.0, clock=SystemClock()
    )
    thread = threading.Thread(target=runner.loop, args=(stop,))
    thread.start()
    try:
        runner.request()
        assert ran.wait(5)
    finally:
        stop.set()
        runner.wake()
        thread.join(5)
    assert not thread.is_alive()


@pytest.mark.parametrize(
    ("kwargs"),
    [
        pytest.param({"min_interval": -1.0, "max_interval": 1.0}, id="negative-min"),
        pytest.param({"min_interval": 1.0, "max_interval": 0.0}, id="zero-max"),
        pytest.param({"min_interval": 1.0, "max_interval": 1.0, "burst": 0}, id="zero-burst"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BoundedFrequencyRunner(lambda: None, clock=ManualClock(), **kwargs)  # type: ignore[arg-type]


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(1.0, 5.0)
    assert [backoff.next() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 1.0
