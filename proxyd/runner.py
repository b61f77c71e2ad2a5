"""The one place that owns time: a clock abstraction and the bounded-frequency sync runner.

Every sync of the daemon goes through :class:`BoundedFrequencyRunner`: change
notifications call :meth:`~BoundedFrequencyRunner.request` (cheap, merges with any
request already pending), the loop runs the sync function no more often than the token
bucket allows (``burst`` runs back to back, then one per ``min_interval``), without
requests ``max_interval`` after the previous run ended (the periodic resync), and at a
time set by :meth:`~BoundedFrequencyRunner.retry_after` after a failure. The clock is
injected, so tests advance a :class:`ManualClock` step by step instead of sleeping; no
other proxyd module sleeps or reads the clock directly.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Backoff", "BoundedFrequencyRunner", "Clock", "ManualClock", "SystemClock"]

_EPS = 1e-9  # token arithmetic in floats: a token refilled "exactly" on time counts


class Clock(Protocol):
    """Time as proxyd sees it: a monotonic clock for intervals, wall time for
    timestamps shown to people and Prometheus, and an interruptible sleep."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Block until ``event`` is set or ``timeout`` seconds passed; True if set."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(max(timeout, 0.0))


class ManualClock:
    """A clock that only moves when told to: for tests and simulations.

    :meth:`wait` does not block: when the event is not set it advances the clock by
    ``timeout`` (a simulated sleep), so a loop driven by this clock runs deterministically
    in the calling thread. Wall time is ``wall_offset`` + monotonic time.
    """

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def wait(self, event: threading.Event, timeout: float) -> bool:
        self.waits.append(timeout)
        if event.is_set():
            return True
        if math.isfinite(timeout):
            self._now += max(timeout, 0.0)
        return event.is_set()


class Backoff:
    """Exponential retry delays: ``initial``, doubled per failure, capped at ``maximum``
    (the first one too: a sync period under the usual first delay bounds retries);
    :meth:`reset` after a success. Deterministic (the runner's token bucket already
    spreads retries out, and a node's retries do not contend with other nodes')."""

    def __init__(self, initial: float, maximum: float) -> None:
        if initial <= 0 or maximum <= 0:
            raise ValueError(f"backoff needs initial > 0 and maximum > 0, got {initial}, {maximum}")
        initial = min(initial, maximum)
        self._initial = initial
        self._maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._maximum)
        return delay

    def reset(self) -> None:
        self._next = self._initial


class BoundedFrequencyRunner:
    """Runs ``fn`` when requested, rate-limited, and periodically.

    - :meth:`request` marks a run as wanted; many requests before the run merge into one.
    - A token bucket of size ``burst`` refilled at one token per ``min_interval`` bounds
      the rate: a request that arrives too early waits for the next token.
    - Without requests, ``fn`` still runs ``max_interval`` after the previous run ended
      (as kube-proxy's runner does: a slow run does not eat into the period).
    - :meth:`retry_after` schedules a run ``seconds`` from now (the earliest retry wins),
      still subject to the token bucket.

    ``fn`` runs on the thread calling :meth:`loop` (or :meth:`run_if_due`), never
    concurrently with itself. Requests made while ``fn`` runs cause another run.
    """

    def __init__(
        self,
        fn: Callable[[], None],
        *,
        min_interval: float,
        max_interval: float,
        clock: Clock,
        burst: int = 2,
    ) -> None:
        if min_interval < 0 or max_interval <= 0 or burst < 1:
            raise ValueError(
                f"runner needs min_interval >= 0, max_interval > 0, burst >= 1; got "
                f"{min_interval}, {max_interval}, {burst}"
            )
        self._fn = fn
        self._min_interval = min_interval
        self._max_interval = max_interval
        self._burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        now = clock.monotonic()
        self._tokens = float(burst)
        self._stamp = now
        self._pending = False
        self._retry_at: float | None = None
        self._periodic_at = now + max_interval

    # --- called from any thread -----------------------------------------------------

    def request(self) -> None:
        """Ask for a run as soon as the rate limit allows; never blocks."""
        with self._lock:
            self._pending = True
        self._wake.set()

    def retry_after(self, seconds: float) -> None:
        """Ask for a run ``seconds`` from now (e.g. after a failed sync)."""
        with self._lock:
            at = self._clock.monotonic() + max(seconds, 0.0)
            if self._retry_at is None or at < self._retry_at:
                self._retry_at = at
        self._wake.set()

    def wake(self) -> None:
        """Interrupt the loop's wait so it re-checks its stop event."""
        self._wake.set()

    # --- the loop ---------------------------------------------------------------------

    def due_in(self) -> float:
        """Seconds until the next run may start (0: now)."""
        with self._lock:
            now = self._clock.monotonic()
            self._refill(now)
            wanted = self._periodic_at
            if self._retry_at is not None:
                wanted = min(wanted, self._retry_at)
            if self._pending:
                wanted = now
            return max(wanted, self._token_at(now)) - now

    def run_if_due(self) -> bool:
        """Run ``fn`` once if a run is due and a token is available."""
        with self._lock:
            now = self._clock.monotonic()
            self._refill(now)
            due = (
                self._pending
                or now >= self._periodic_at
                or (self._retry_at is not None and now >= self._retry_at)
            )
            if not due or self._tokens < 1 - _EPS:
                return False
            self._tokens -= 1
            self._pending = False
            self._retry_at = None
        self._fn()
        with self._lock:  # from the end of the run, as the syncer times its full syncs
            self._periodic_at = self._clock.monotonic() + self._max_interval
        return True

    def loop(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set (call :meth:`wake` after setting it)."""
        while not stop.is_set():
            if self.run_if_due():
                continue
            self._wake.clear()
            if stop.is_set():
                break
            self._clock.wait(self._wake, self.due_in())

    # --- token bucket (lock held) -------------------------------------------------------

    def _refill(self, now: float) -> None:
        if self._min_interval == 0:
            self._tokens = float(self._burst)
        else:
            gained = (now - self._stamp) / self._min_interval
            self._tokens = min(float(self._burst), self._tokens + gained)
        self._stamp = now

    def _token_at(self, now: float) -> float:
        if self._tokens >= 1 - _EPS:
            return now
        return now + (1 - self._tokens) * self._min_interval
