"""Every Prometheus metric proxyd exports, registered once on an injected registry.

Names follow kube-proxy's (``kubeproxy_…``) wherever kube-proxy has the metric, so
existing dashboards and alerts keep working; proxyd's own metrics (topology decisions,
rejected objects, watch restarts, sync failures) are under ``proxyd_``. Two kube-proxy
gauges carry a ``_total`` suffix that Prometheus' own lint rejects for gauges; proxyd
publishes them under lint-clean ``proxyd_`` names instead (docs/metrics.md has the
mapping). Latency histograms reach 30 minutes: syncs of minutes happen on big nodes.
The daemon calls the ``observe_*``/``set_*`` methods; nothing here reads a clock.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proxyd.model import NodePlan, ServicePort, TrafficPolicy

__all__ = ["DURATION_BUCKETS", "PROGRAMMING_BUCKETS", "Metrics"]

DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
)
PROGRAMMING_BUCKETS = (
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
    90.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1200.0, 1800.0,
)


class Metrics:
    """proxyd's metrics. ``restore_based`` says whether a failed sync is a failed
    ``iptables-restore`` (iptables mode) for kube-proxy's restore-failure counters."""

    def __init__(self, registry: CollectorRegistry, *, restore_based: bool = True) -> None:
        self._restore_based = restore_based
        self._exported: dict[int, set[tuple[str, ...]]] = {}
        r = registry
        self.sync_duration = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds (full and partial syncs).",
            buckets=DURATION_BUCKETS, registry=r)
        self.sync_full_duration = Histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "Latency of full syncs in seconds.", buckets=DURATION_BUCKETS, registry=r)
        self.sync_partial_duration = Histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "Latency of partial syncs in seconds.", buckets=DURATION_BUCKETS, registry=r)
        self.last_sync = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "Unix time of the last successful sync.", registry=r)
        self.last_queued = Gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "Unix time of the last change that queued a sync.", registry=r)
        self.network_programming = Histogram(
            "kubeproxy_network_programming_duration_seconds",
            "Time from an EndpointSlice change (last-change-trigger-time) to its rules being "
            "programmed; only changes made after proxyd started.",
            buckets=PROGRAMMING_BUCKETS, registry=r)
        self.endpoint_changes_pending = Gauge(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "EndpointSlice changes not yet synced.", registry=r)
        self.endpoint_changes = Counter(
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "EndpointSlice add/update/delete events received.", registry=r)
        self.service_changes_pending = Gauge(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Service changes not yet synced.", registry=r)
        self.service_changes = Counter(
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "Service add/update/delete events received.", registry=r)
        self.restore_failures = Counter(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
            "Failed iptables-restore runs (full and partial).", registry=r)
        self.partial_restore_failures = Counter(
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
            "Failed iptables-restore runs of partial syncs.", registry=r)
        self.sync_failures = Counter(
            "proxyd_sync_failures_total",
            "Failed syncs (refused by the backend, or an internal error), by mode (full|partial).",
            ["mode"], registry=r)
        self.rules = Gauge(
            "proxyd_programmed_rules",
            "Rules (iptables tables) or objects (ipvs, ipset) programmed after the last "
            "successful sync; kube-proxy's kubeproxy_sync_proxy_rules_iptables_total.",
            ["table"], registry=r)
        self.no_local_endpoints = Gauge(
            "proxyd_service_ports_without_local_endpoints",
            "Service ports with a Local traffic policy and no local endpoint; kube-proxy's "
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total.",
            ["traffic_policy"], registry=r)
        self.service_ports = Gauge(
            "proxyd_service_ports",
            "Service ports programmed, by the topology mode that chose their endpoints.",
            ["mode"], registry=r)
        self.endpoints = Gauge(
            "proxyd_endpoints",
            "Endpoints of programmed service ports by topology mode: kept for this node's "
            "internal traffic, or dropped (other node/zone/pool, not ready).",
            ["mode", "decision"], registry=r)
        self.warnings = Gauge(
            "proxyd_warnings",
            "Problems the last sync reported (planner and backend), by reason as in the "
            "Event: InvalidTopologyKeys, NodeNotInPool, UnknownIPVSScheduler, …; one per "
            "service and message.", ["reason"], registry=r)
        self.objects_rejected = Counter(
            "proxyd_objects_rejected_total",
            "API objects ignored because they are malformed.", ["kind", "reason"], registry=r)
        self.watch_restarts = Counter(
            "proxyd_watch_restarts_total",
            "Watches restarted, by resource and cause (gone, error, timeout, …).",
            ["resource", "cause"], registry=r)
        self.events = Counter(
            "proxyd_events_total",
            "Kubernetes Events proxyd wanted to post, by reason and outcome "
            "(posted, suppressed by rate limit, failed).", ["reason", "outcome"], registry=r)

    # --- sync -----------------------------------------------------------------------

    def observe_sync(
        self, *, full: bool, ok: bool, duration: float, finished_at: float,
        rules: Mapping[str, int],
    ) -> None:
        """One finished sync attempt."""
        mode = "full" if full else "partial"
        if ok:
            self.sync_duration.observe(duration)
            (self.sync_full_duration if full else self.sync_partial_duration).observe(duration)
            self.last_sync.set(finished_at)
            for table, count in rules.items():
                self.rules.labels(table=table).set(count)
            return
        self.sync_failures.labels(mode=mode).inc()
        if self._restore_based:
            self.restore_failures.inc()
            if not full:
                self.partial_restore_failures.inc()

    def observe_programming(
        self, trigger_times: Iterable[float], *, now: float, started: float
    ) -> None:
        """Network programming latency of the changes a successful sync applied; changes
        older than this process are skipped (they would report the downtime, not the
        proxy's latency)."""
        for trigger in trigger_times:
            if trigger >= started:
                self.network_programming.observe(max(now - trigger, 0.0))

    def queued(self, *, at: float, service_events: int, endpoint_events: int) -> None:
        """Change events arrived (``*_events`` of each kind) and a sync was queued."""
        self.last_queued.set(at)
        if service_events:
            self.service_changes.inc(service_events)
        if endpoint_events:
            self.endpoint_changes.inc(endpoint_events)

    def set_pending(self, *, services: int, endpoints: int) -> None:
        self.service_changes_pending.set(services)
        self.endpoint_changes_pending.set(endpoints)

    # --- what the plan decided ------------------------------------------------------

    def observe_plan(self, plan: NodePlan) -> None:
        """Topology gauges from a plan (kept/dropped against each port's candidates)."""
        ports: Tally[str] = Tally()
        kept: Tally[str] = Tally()
        dropped: Tally[str] = Tally()
        no_local: Tally[str] = Tally()
        for sp in plan.services:
            ports[sp.mode] += 1
            kept[sp.mode] += len(sp.internal)
            dropped[sp.mode] += max(sp.candidates - len(sp.internal), 0)
            if sp.port.internal_traffic_policy is TrafficPolicy.LOCAL and not sp.internal:
                no_local["internal"] += 1
            if (
                sp.port.external_traffic_policy is TrafficPolicy.LOCAL
                and _externally_reachable(sp.port)
                and not sp.local_endpoints
            ):
                no_local["external"] += 1
        self._replace(self.service_ports, {(m,): n for m, n in ports.items()})
        self._replace(self.endpoints, {
            **{(m, "kept"): n for m, n in kept.items()},
            **{(m, "dropped"): n for m, n in dropped.items()},
        })
        self._replace(self.no_local_endpoints, {
            (policy,): no_local[policy] for policy in ("internal", "external")
        })

    def _replace(self, gauge: Gauge, values: Mapping[tuple[str, ...], int]) -> None:
        """Set a labelled gauge to exactly ``values``: label sets that disappeared are
        removed (a mode no service uses any more stops being exported), the others are
        overwritten in place, so a scrape never sees the gauge empty."""
        exported = self._exported.setdefault(id(gauge), set())
        for labels in exported - values.keys():
            gauge.remove(*labels)
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        exported.clear()
        exported.update(values)

    def set_warnings(self, reasons: Iterable[str]) -> None:
        """The reasons of every distinct problem currently reported (repeats count)."""
        self._replace(self.warnings, {(r,): n for r, n in Tally(reasons).items()})

    # --- hooks for sources and events -----------------------------------------------

    def object_rejected(self, kind: str, reason: str) -> None:
        self.objects_rejected.labels(kind=kind, reason=reason).inc()

    def watch_restart(self, resource: str, cause: str) -> None:
        self.watch_restarts.labels(resource=resource, cause=cause).inc()

    def event(self, reason: str, outcome: str) -> None:
        self.events.labels(reason=reason, outcome=outcome).inc()



def _externally_reachable(port: ServicePort) -> bool:
    return bool(port.node_port or port.external_ips or port.load_balancer_ips)
