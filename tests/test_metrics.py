"""Metrics: names, what each observation changes, lint cleanliness, documentation."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from proxyd.metrics import DURATION_BUCKETS, PROGRAMMING_BUCKETS, Metrics
from proxyd.model import ServicePlan, TrafficPolicy
from tests.builders import ep, node_plan, sp
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
LOCAL = TrafficPolicy.LOCAL


def fresh(restore_based: bool = True) -> tuple[Metrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return Metrics(registry, restore_based=restore_based), registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def counted(name: str, mode: str, n_internal: int, **fields: Any) -> ServicePlan:
    """Service port ``name`` whose ``n_internal`` endpoints were chosen by ``mode``."""
    internal = [ep(f"10.0.0.{i + 1}", 80) for i in range(n_internal)]
    return sp(name, internal=internal, mode=mode, **fields)


def test_buckets_reach_thirty_minutes() -> None:
    assert DURATION_BUCKETS[-1] == PROGRAMMING_BUCKETS[-1] == 1800.0
    assert list(DURATION_BUCKETS) == sorted(set(DURATION_BUCKETS))


def test_successful_syncs_split_full_and_partial() -> None:
    m, r = fresh()
    m.observe_sync(full=True, ok=True, duration=2.0, finished_at=1234.0, rules={"nat": 7})
    m.observe_sync(full=False, ok=True, duration=0.01, finished_at=1240.0, rules={"nat": 9})
    assert value(r, "kubeproxy_sync_proxy_rules_duration_seconds_count") == 2
    assert value(r, "kubeproxy_sync_full_proxy_rules_duration_seconds_sum") == 2.0
    assert value(r, "kubeproxy_sync_partial_proxy_rules_duration_seconds_sum") == 0.01
    assert value(r, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") == 1240.0
    assert value(r, "proxyd_programmed_rules", table="nat") == 9
    assert value(r, "proxyd_sync_failures_total", mode="full") is None


def test_slow_sync_lands_below_the_thirty_minute_bucket() -> None:
    m, r = fresh()
    m.observe_sync(full=True, ok=True, duration=1500.0, finished_at=1.0, rules={})
    name = "kubeproxy_sync_full_proxy_rules_duration_seconds_bucket"
    assert value(r, name, le="1200.0") == 0
    assert value(r, name, le="1800.0") == 1


@pytest.mark.parametrize(
    ("restore_based", "full", "want_restore", "want_partial"),
    [
        pytest.param(True, True, 1, 0, id="iptables-full"),
        pytest.param(True, False, 1, 1, id="iptables-partial"),
        pytest.param(False, False, 0, 0, id="ipvs-is-not-a-restore"),
    ],
)
def test_failed_sync_counts(restore_based, full, want_restore, want_partial) -> None:
    m, r = fresh(restore_based)
    m.observe_sync(full=full, ok=False, duration=1.0, finished_at=5.0, rules={"nat": 1})
    mode = "full" if full else "partial"
    assert value(r, "proxyd_sync_failures_total", mode=mode) == 1
    assert value(r, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total") == want_restore
    assert (
        value(r, "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total")
        == want_partial
    )
    assert value(r, "kubeproxy_sync_proxy_rules_duration_seconds_count") == 0
    assert value(r, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") == 0
    assert value(r, "proxyd_programmed_rules", table="nat") is None


def test_network_programming_only_for_changes_after_start() -> None:
    m, r = fresh()
    m.observe_programming([90.0, 100.0, 103.5], now=104.0, started=100.0)
    assert value(r, "kubeproxy_network_programming_duration_seconds_count") == 2
    assert value(r, "kubeproxy_network_programming_duration_seconds_sum") == pytest.approx(4.5)


def test_queued_and_pending_changes() -> None:
    m, r = fresh()
    m.queued(at=50.0, service_events=2, endpoint_events=0)
    m.queued(at=51.0, service_events=0, endpoint_events=3)
    m.set_pending(services=1, endpoints=2)
    assert value(r, "kubeproxy_sync_proxy_rules_service_changes_total") == 2
    assert value(r, "kubeproxy_sync_proxy_rules_endpoint_changes_total") == 3
    assert value(r, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds") == 51.0
    assert value(r, "kubeproxy_sync_proxy_rules_service_changes_pending") == 1
    assert value(r, "kubeproxy_sync_proxy_rules_endpoint_changes_pending") == 2


def test_plan_gauges_per_mode_and_vanished_modes_disappear() -> None:
    m, r = fresh()
    first = node_plan(  # every port had 4 endpoints before topology
        counted("a", "PreferSameZone", 2, candidates=4),
        counted("b", "PreferSameZone", 1, candidates=4),
        counted("c", "openyurt:nodepool", 0, candidates=4),
        counted("d", "internalTrafficPolicy:Local", 0, candidates=4,
                internal_traffic_policy=LOCAL),
        counted("e", "none", 3, candidates=4, external_traffic_policy=LOCAL, local_endpoints=0,
                node_port=30001),
    )
    m.observe_plan(first)
    assert value(r, "proxyd_service_ports", mode="PreferSameZone") == 2
    assert value(r, "proxyd_endpoints", mode="PreferSameZone", decision="kept") == 3
    assert value(r, "proxyd_endpoints", mode="PreferSameZone", decision="dropped") == 5
    assert value(r, "proxyd_endpoints", mode="openyurt:nodepool", decision="dropped") == 4
    assert value(r, "proxyd_service_ports_without_local_endpoints",
                 traffic_policy="internal") == 1
    assert value(r, "proxyd_service_ports_without_local_endpoints",
                 traffic_policy="external") == 1

    m.observe_plan(node_plan(counted("a", "none", 1)))
    assert value(r, "proxyd_service_ports", mode="PreferSameZone") is None
    assert value(r, "proxyd_service_ports", mode="none") == 1
    assert value(r, "proxyd_endpoints", mode="none", decision="dropped") == 0
    assert value(r, "proxyd_service_ports_without_local_endpoints",
                 traffic_policy="external") == 0


def test_warnings_gauge_counts_reasons_and_forgets_solved_ones() -> None:
    m, r = fresh()
    m.set_warnings(["InvalidTopologyKeys", "InvalidTopologyKeys", "NodeNotInPool"])
    assert value(r, "proxyd_warnings", reason="InvalidTopologyKeys") == 2
    m.set_warnings(["NodeNotInPool"])
    assert value(r, "proxyd_warnings", reason="InvalidTopologyKeys") is None
    assert value(r, "proxyd_warnings", reason="NodeNotInPool") == 1


def test_source_and_event_hooks() -> None:
    m, r = fresh()
    m.object_rejected("Service", "bad_port")
    m.watch_restart("endpointslices", "gone")
    m.event("InvalidTopologyKeys", "posted")
    assert value(r, "proxyd_objects_rejected_total", kind="Service", reason="bad_port") == 1
    assert value(r, "proxyd_watch_restarts_total", resource="endpointslices", cause="gone") == 1
    assert value(r, "proxyd_events_total", reason="InvalidTopologyKeys", outcome="posted") == 1


def _exercised() -> bytes:
    """Exposition text with every metric (and every labelled one) carrying a sample."""
    m, r = fresh()
    m.observe_sync(full=True, ok=True, duration=0.5, finished_at=10.0, rules={"nat": 3})
    m.observe_sync(full=False, ok=False, duration=0.5, finished_at=11.0, rules={})
    m.observe_programming([10.0], now=11.0, started=0.0)
    m.queued(at=9.0, service_events=1, endpoint_events=1)
    m.set_pending(services=0, endpoints=0)
    m.observe_plan(node_plan(counted("a", "none", 1)))
    m.set_warnings(["NodeNotInPool"])
    m.object_rejected("Service", "x")
    m.watch_restart("services", "gone")
    m.event("TopologyWarning", "posted")
    return generate_latest(r)


def test_exposition_is_clean_for_promtool() -> None:
    promtool = shutil.which("promtool")
    require(promtool, "promtool is missing (Debian package prometheus, .ci/install)")
    assert promtool is not None
    proc = subprocess.run([promtool, "check", "metrics"], input=_exercised(),
                          capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def test_every_metric_is_documented() -> None:
    types = re.findall(rb"^# TYPE (\S+) (\w+)", _exercised(), re.MULTILINE)
    # *_created series exist unless the daemon disabled them (process-wide) already
    names = {n for n, t in types if not (n.endswith(b"_created") and t == b"gauge")}
    doc = (ROOT / "docs" / "metrics.md").read_text()
    missing = {n.decode() for n in names if f"`{n.decode()}`" not in doc}
    assert not missing, f"metrics not in docs/metrics.md: {sorted(missing)}"
    kube_names = {n for n in names if n.startswith(b"kubeproxy_")}
    assert len(kube_names) == 12  # the kube-proxy names dashboards rely on
