"""Kubernetes Events for what an operator must see, rate-limited.

The planner records problems in ``ServicePlan.warnings`` (invalid topologyKeys, this
node in no pool for a nodepool-scoped service …) and a backend in ``SyncResult.warnings``
(an IPVS scheduler the kernel lacks …). After each sync the daemon collects both
(:func:`plan_warnings`, :func:`backend_warnings`) and :meth:`EventRecorder.record` turns
each into a Warning Event on its Service. A warning that persists is re-posted at most
once per ``repeat_interval`` and all events share a token bucket, so a misconfigured
cluster cannot flood the API server. Posting happens on a worker thread: a slow or
unreachable API server never delays a sync (events are dropped instead).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from proxyd.errors import ProxydError, SourceError
from proxyd.model import NodePlan, ServiceRef
from proxyd.runner import Clock

__all__ = [
    "EventRecorder",
    "EventSink",
    "KubeEventSink",
    "ServiceWarning",
    "backend_warnings",
    "plan_warnings",
    "warning_reason",
]

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Creates one Event object (``POST /api/v1/namespaces/{ns}/events``); raises
    :class:`~proxyd.errors.SourceError` when the API server refuses or is unreachable."""

    def create(self, namespace: str, body: dict[str, Any]) -> None: ...


class KubeEventSink:
    """Posts through the ``kubernetes`` client (``CoreV1Api.create_namespaced_event``) on
    the daemon's ``ApiClient``; the response body is not parsed (nothing reads it).

    ``CoreV1Api`` is built on the first post, on the recorder's worker thread: importing
    it loads the client's whole model package (about half a second of CPU), which would
    otherwise delay the daemon's start and its first sync."""

    def __init__(self, api_client: Any) -> None:
        self._client = api_client
        self._api: Any = None

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        if self._api is None:
            from kubernetes import client

            self._api = client.CoreV1Api(self._client)  # body is a dict, not the model
        try:
            self._api.create_namespaced_event(
                namespace, body, _preload_content=False, _request_timeout=(5, 10)
            )
        except ApiException as exc:
            raise SourceError(f"create event in {namespace}: HTTP {exc.status} {exc.reason}") \
                from exc
        except (HTTPError, OSError) as exc:
            raise SourceError(f"create event in {namespace}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ServiceWarning:
    service: ServiceRef
    reason: str
    message: str


# Event reasons are CamelCase words (what ``kubectl get events`` shows in REASON), matched
# against the planner's wording in order (tests/test_daemon_events.py pins each one
# against proxyd.topology, so a rewording there cannot silently change the reason).
_REASONS = (
    (re.compile(r"schedul", re.IGNORECASE), "UnknownIPVSScheduler"),
    (re.compile(r"openyurt\.io/topologyKeys"), "UnknownOpenYurtScope"),
    (re.compile(r"topologyKeys"), "InvalidTopologyKeys"),
    (re.compile(r"is in no node pool"), "NodeNotInPool"),
    (re.compile(r"members of node pool .* unknown"), "NodePoolMembersUnknown"),
    (re.compile(r"hint", re.IGNORECASE), "TopologyHintsIgnored"),
)
# Hints go missing or stale for a moment during every rollout; kube-proxy only logs them.
# They are logged and counted, not posted.
_NOT_POSTED = frozenset({"TopologyHintsIgnored"})


def warning_reason(message: str) -> str:
    """The Event reason for one planner warning (``TopologyWarning`` when none fits)."""
    for pattern, reason in _REASONS:
        if pattern.search(message):
            return reason
    return "TopologyWarning"


# Backend warnings are (label, "<service port>: message"); labels as ipvs_plan names them.
_BACKEND_REASONS = {
    "unknown_scheduler": "UnknownIPVSScheduler",
    "unknown_scheduler_flag": "UnknownIPVSSchedulerFlag",
    "scheduler_unavailable": "IPVSSchedulerUnavailable",
    "conflict": "ServiceAddressConflict",
}
_SERVICE_PORT = re.compile(r"^(?P<ns>[a-z0-9][a-z0-9-]*)/(?P<name>[a-z0-9][a-z0-9.-]*):")


def backend_warnings(
    pairs: Iterable[tuple[str, str]],
) -> tuple[list[ServiceWarning], list[tuple[str, str]]]:
    """A backend's ``(label, "ns/name:port/PROTO: message")`` warnings → warnings about a
    Service, and (reason, message) pairs about no service (configuration), which can only
    be logged."""
    about_services: list[ServiceWarning] = []
    other: list[tuple[str, str]] = []
    for label, message in pairs:
        reason = _BACKEND_REASONS.get(label) or label.title().replace("_", "")
        match = _SERVICE_PORT.match(message)
        if match is None:
            other.append((reason, message))
        else:
            ref = ServiceRef(match["ns"], match["name"])
            about_services.append(ServiceWarning(ref, reason, message))
    return about_services, other


def plan_warnings(plan: NodePlan) -> list[ServiceWarning]:
    """Distinct warnings of a plan, one per (service, message), sorted."""
    seen = {
        ServiceWarning(sp.key.service, warning_reason(text), text)
        for sp in plan.services
        for text in sp.warnings
    }
    return sorted(seen, key=lambda w: (w.service, w.reason, w.message))


class EventRecorder:
    """Rate-limited Warning Events about Services, posted from a worker thread.

    ``repeat_interval``: the same (service, reason, message) is posted at most this
    often. ``burst``/``per_second``: token bucket over all events. ``on_outcome(reason,
    outcome)`` counts ``posted``, ``suppressed`` (rate limit), ``dropped`` (queue full)
    and ``failed`` (API error).
    """

    def __init__(
        self,
        sink: EventSink,
        clock: Clock,
        *,
        component: str,
        node: str,
        repeat_interval: float = 600.0,
        burst: int = 25,
        per_second: float = 0.1,
        queue_size: int = 100,
        on_outcome: Callable[[str, str], None] = lambda reason, outcome: None,
    ) -> None:
        self._sink = sink
        self._clock = clock
        self._component = component
        self._node = node
        self._repeat = repeat_interval
        self._burst = float(burst)
        self._rate = per_second
        self._on_outcome = on_outcome
        self._tokens = float(burst)
        self._stamp = clock.monotonic()
        self._last_posted: dict[ServiceWarning, float] = {}
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(queue_size)
        self._worker: threading.Thread | None = None

    def record(self, warnings: Iterable[ServiceWarning]) -> None:
        """Post the warnings worth an Event (hint problems are not), rate-limited."""
        for warning in warnings:
            if warning.reason not in _NOT_POSTED:
                self.warn(warning)

    def warn(self, warning: ServiceWarning) -> None:
        """Queue a Warning Event unless rate limits say no; never blocks."""
        now = self._clock.monotonic()
        last = self._last_posted.get(warning)
        if last is not None and now - last < self._repeat:
            return  # still fresh in the API server; not a suppression
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            self._on_outcome(warning.reason, "suppressed")
            return
        try:
            self._queue.put_nowait(self._body(warning))
        except queue.Full:
            self._on_outcome(warning.reason, "dropped")
            return
        self._tokens -= 1
        self._last_posted[warning] = now

    def start(self) -> None:
        """Post queued events from a background thread until :meth:`close`."""
        self._worker = threading.Thread(target=self._drain, name="events", daemon=True)
        self._worker.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the worker after it posted what is queued (bounded by ``timeout``)."""
        if self._worker is None:
            return
        # A full queue means the worker is stuck on the API server: it is a daemon thread.
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._worker.join(timeout)
        self._worker = None

    def _drain(self) -> None:
        while (body := self._queue.get()) is not None:
            reason = str(body["reason"])
            try:
                self._sink.create(body["metadata"]["namespace"], body)
            except ProxydError as exc:
                log.warning("posting event failed: %s", exc)
                self._on_outcome(reason, "failed")
            else:
                self._on_outcome(reason, "posted")

    def _body(self, warning: ServiceWarning) -> dict[str, Any]:
        stamp = datetime.fromtimestamp(self._clock.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ref = warning.service
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Service",
                "namespace": ref.namespace,
                "name": ref.name,
            },
            "reason": warning.reason,
            "message": warning.message,
            "type": "Warning",
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": self._component, "host": self._node},
            "reportingComponent": self._component,
            "reportingInstance": self._node,
        }
