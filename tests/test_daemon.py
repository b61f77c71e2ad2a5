"""The daemon in-process: fake API server → informers → syncer → a recording backend.

No kernel needed: the backend is a fake that records every sync and can be told to fail,
which is how the failing-backend behaviour (/healthz 503, /livez 200, retries, full
resync after a failure) is tested without a test hook in production flags.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client import CollectorRegistry

from proxyd.backends import SyncResult
from proxyd.backends.commands_runner import CompletedRun
from proxyd.backends.iptables import Variant
from proxyd.commands.run import Daemon, Shutdown, SyncAborted, Syncer, _iptables_cold
from proxyd.config import Config
from proxyd.model import NodePlan, ServiceRef
from proxyd.runner import ManualClock
from proxyd.sandbox.fakeapi import FakeApiServer
from proxyd.sources.kube import InformerOptions, api_client
from proxyd.store import ClusterState
from tests.builders import ep_obj, eps, new_syncer, node, node_obj, slice_obj, svc, svc_obj

T = TypeVar("T")
FAST = InformerOptions(request_timeout=5.0, watch_timeout=30, backoff_initial=0.05,
                       backoff_cap=0.5, pool_recheck_interval=1.0)
K8S = ServiceRef("default", "kubernetes")
WEB = ServiceRef("default", "web")


@dataclass
class FakeBackend:
    """Records (services in the plan, full) per sync; ``fail`` makes syncs fail."""

    fail: bool = False
    syncs: list[tuple[frozenset[ServiceRef], bool]] = field(default_factory=list)
    plans: list[NodePlan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sync(self, plan: NodePlan, *, full: bool) -> SyncResult:
        with self.lock:
            self.syncs.append((frozenset(sp.key.service for sp in plan.services), full))
            self.plans.append(plan)
        if self.fail:
            return SyncResult(ok=False, full=full, error="iptables-restore failed (exit 1)")
        return SyncResult(ok=True, full=full, rules={"nat": 10 * len(plan.services)})

    def cleanup(self) -> None:
        raise AssertionError("the daemon must never clean up on its own")

    def last(self) -> NodePlan | None:
        with self.lock:
            return self.plans[-1] if self.plans else None


def eventually(check: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
    """Poll ``check`` until it returns something true (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check}")
        time.sleep(0.02)


def fetch(url: str) -> tuple[int, bytes]:
    """GET → (status, body); (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def http(port: int, path: str) -> tuple[int, bytes]:
    return fetch(f"http://127.0.0.1:{port}{path}")


@dataclass
class Running:
    api: FakeApiServer
    daemon: Daemon
    backend: FakeBackend

    def get(self, name: str, path: str) -> tuple[int, bytes]:
        return http(self.daemon.ports[name], path)

    def services_in_last_plan(self) -> set[str]:
        plan = self.backend.last()
        return {str(sp.key.service) for sp in plan.services} if plan else set()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[tuple[FakeApiServer, Daemon, threading.Thread]] = []

    def start(*objects: dict, cold: bool = False, sync_period: float = 30.0,
              backend: FakeBackend | None = None) -> Running:
        api = FakeApiServer().start()
        api.apply_all(objects)
        cfg = Config(node_name="n1", metrics_bind_address="127.0.0.1:0",
                     healthz_bind_address="127.0.0.1:0", sync_period=sync_period,
                     min_sync_period=0.05)
        backend = backend or FakeBackend()
        daemon = Daemon(cfg, backend, client=api_client(api.write_kubeconfig(tmp_path / "kc")),
                        registry=CollectorRegistry(), informer_options=FAST, cold=cold)
        thread = threading.Thread(target=daemon.run, name="daemon")
        thread.start()
        started.append((api, daemon, thread))
        eventually(lambda: "healthz" in daemon.ports, what="servers up")
        return Running(api, daemon, backend)

    yield start
    for api, daemon, thread in started:
        daemon.stop()
        thread.join(15)
        assert not thread.is_alive(), "daemon did not stop"
        api.close()


def kubernetes_objects() -> list[dict]:
    return [
        svc_obj("kubernetes", cluster_ip="10.96.0.1", ports=[{"name": "https", "port": 443,
                                                              "protocol": "TCP"}]),
        slice_obj("kubernetes", ["192.168.0.10"], ports=[{"name": "https", "port": 6443,
                                                          "protocol": "TCP"}]),
    ]


def web(replicas: int, **annotations: str) -> list[dict]:
    return [
        svc_obj("web", annotations=annotations or None),
        slice_obj("web", [ep_obj(f"10.244.1.{i + 2}", node="n1") for i in range(replicas)]),
    ]


def test_first_sync_is_full_then_changes_are_partial(cluster) -> None:
    run = cluster(node_obj("n1"), *kubernetes_objects(), *web(1))
    eventually(lambda: run.backend.syncs, what="first sync")
    assert run.backend.syncs[0] == (frozenset({K8S, WEB}), True)
    run.api.apply(web(3)[1])
    eventually(lambda: len(run.backend.plans[-1].services[-1].internal) == 3, what="scaled")
    assert run.backend.syncs[-1][1] is False
    run.api.delete("Service", "web", "default")
    eventually(lambda: run.services_in_last_plan() == {"default/kubernetes"}, what="deleted")


def test_cold_start_programs_the_api_server_service_first(cluster) -> None:
    run = cluster(node_obj("n1"), *kubernetes_objects(), *web(2), cold=True)
    eventually(lambda: len(run.backend.syncs) >= 2, what="prime + first sync")
    assert run.backend.syncs[:2] == [(frozenset({K8S}), True), (frozenset({K8S, WEB}), True)]


def test_warm_start_does_not_prime(cluster) -> None:
    run = cluster(node_obj("n1"), *kubernetes_objects(), *web(2), cold=False)
    eventually(lambda: run.backend.syncs, what="first sync")
    assert run.backend.syncs[0][0] == {K8S, WEB}


def test_healthz_fails_while_backend_fails_and_recovers(cluster) -> None:
    run = cluster(node_obj("n1"), *kubernetes_objects(), sync_period=1.0)
    eventually(lambda: run.get("healthz", "/healthz")[0] == 200, what="healthy")
    run.backend.fail = True
    run.api.apply_all(web(1))
    eventually(lambda: run.get("healthz", "/healthz")[0] == 503, timeout=8, what="503")
    status, body = run.get("healthz", "/livez")
    assert status == 200, body
    failures = len(run.backend.syncs)
    eventually(lambda: len(run.backend.syncs) > failures, what="retries continue")
    run.backend.fail = False
    eventually(lambda: run.get("healthz", "/healthz")[0] == 200, timeout=8, what="recovered")
    assert run.backend.syncs[-1][1] is True or any(full for _, full in run.backend.syncs[-3:])
    _, metrics = run.get("metrics", "/metrics")
    assert b"proxyd_sync_failures_total" in metrics
    assert b"kubeproxy_sync_proxy_rules_iptables_restore_failures_total" in metrics


def test_network_programming_latency_is_observed_for_new_changes(cluster) -> None:
    run = cluster(node_obj("n1"), *kubernetes_objects())
    eventually(lambda: run.backend.syncs, what="first sync")
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")  # RFC 3339, as the API
    svc_o, slice_o = web(2)
    slice_o["metadata"]["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time":
                                          stamp}
    run.api.apply_all([svc_o, slice_o])
    eventually(lambda: b"kubeproxy_network_programming_duration_seconds_count 1.0"
               in run.get("metrics", "/metrics")[1], what="latency observed")


def test_objects_rejected_and_watch_restarts_are_counted(cluster) -> None:
    run = cluster(node_obj("n1"), *kubernetes_objects())
    eventually(lambda: run.backend.syncs, what="first sync")
    bad = svc_obj("bad", ports=[{"name": "x", "port": 99999, "protocol": "TCP"}])
    run.api.apply(bad)
    run.api.drop_watches("services")
    eventually(lambda: b'proxyd_objects_rejected_total{kind="Service"' in
               run.get("metrics", "/metrics")[1], what="rejection counted")
    eventually(lambda: b'proxyd_watch_restarts_total{cause="error",resource="services"}' in
               run.get("metrics", "/metrics")[1], what="restart counted")


def test_warnings_become_rate_limited_events(cluster) -> None:
    bad_keys = svc_obj("web", topologyKeys=["*", "kubernetes.io/hostname"])
    run = cluster(node_obj("n1"), *kubernetes_objects(), bad_keys, web(1)[1])
    eventually(lambda: run.api.objects("Event"), what="event posted")
    [event] = run.api.objects("Event")
    assert (event["reason"], event["involvedObject"]["name"]) == ("InvalidTopologyKeys", "web")
    run.api.apply(web(2)[1])  # a new sync with the same warning: no second event
    eventually(lambda: len(run.backend.plans[-1].services[-1].internal) == 2, what="synced")
    assert len(run.api.objects("Event")) == 1


def test_metrics_endpoint_serves_kube_proxy_names(cluster) -> None:
    run = cluster(node_obj("n1"), *kubernetes_objects())
    eventually(lambda: run.backend.syncs, what="first sync")
    status, body = run.get("metrics", "/metrics")
    assert status == 200
    for name in (b"kubeproxy_sync_proxy_rules_duration_seconds_bucket",
                 b"kubeproxy_sync_full_proxy_rules_duration_seconds_count",
                 b"kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                 b"proxyd_service_ports{mode=\"none\"} 1.0",
                 b"process_resident_memory_bytes"):
        assert name in body
    assert run.get("metrics", "/proxyMode") == (200, b"iptables")
    assert run.get("metrics", "/nope")[0] == 404


def test_healthz_is_503_until_the_first_sync_succeeds_livez_is_not(cluster) -> None:
    run = cluster(node_obj("n1"), *kubernetes_objects(), backend=FakeBackend(fail=True))
    eventually(lambda: len(run.backend.syncs) >= 2, what="failed syncs")
    assert run.get("healthz", "/healthz")[0] == 503
    assert run.get("healthz", "/livez")[0] == 200
    run.backend.fail = False
    eventually(lambda: run.get("healthz", "/healthz")[0] == 200, what="first sync")


def being_deleted(node: dict, how: str) -> dict:
    """``node`` as the API shows it once its deletion started (``how``: timestamp or
    the cluster autoscaler's taint)."""
    if how == "timestamp":
        return {**node, "metadata": {**node["metadata"],
                                     "deletionTimestamp": "2024-05-01T10:00:00Z"}}
    return {**node, "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler",
                                         "value": "1714557600", "effect": "NoSchedule"}]}}


@pytest.mark.parametrize("how", ["timestamp", "autoscaler-taint"])
def test_node_being_deleted_fails_healthz_not_livez(cluster, how: str) -> None:
    run = cluster(node_obj("n1"), *kubernetes_objects())
    eventually(lambda: run.get("healthz", "/healthz")[0] == 200, what="healthy")
    assert json.loads(run.get("healthz", "/healthz")[1])["nodeEligible"] is True
    run.api.apply(being_deleted(node_obj("n1"), how))
    eventually(lambda: run.get("healthz", "/healthz")[0] == 503, what="ineligible")
    assert json.loads(run.get("healthz", "/healthz")[1])["nodeEligible"] is False
    assert run.get("healthz", "/livez")[0] == 200
    run.api.apply(node_obj("n1"))  # deletion called off (taint removed)
    eventually(lambda: run.get("healthz", "/healthz")[0] == 200, what="eligible again")


def test_another_node_being_deleted_leaves_this_one_eligible(cluster) -> None:
    run = cluster(node_obj("n1"), being_deleted(node_obj("n2"), "timestamp"),
                  *kubernetes_objects())
    eventually(lambda: run.get("healthz", "/healthz")[0] == 200, what="healthy")
    assert json.loads(run.get("healthz", "/healthz")[1])["nodeEligible"] is True


def test_healthz_body_reports_last_update(cluster) -> None:
    run = cluster(node_obj("n1"), *kubernetes_objects())
    eventually(lambda: run.backend.syncs, what="first sync")
    eventually(lambda: not json.loads(run.get("healthz", "/healthz")[1])["lastUpdated"]
               .startswith("0001"), what="lastUpdated set")


# --- the syncer alone, on a manual clock ------------------------------------------------


def syncer(backend: FakeBackend, clock: ManualClock, retries: list[float],
           registry: CollectorRegistry | None = None) -> tuple[Syncer, ClusterState]:
    state = ClusterState()
    return new_syncer(state, backend, clock, retry_after=retries.append, registry=registry), state


def test_full_sync_every_sync_period_and_after_own_node_changes() -> None:
    clock, backend, retries = ManualClock(), FakeBackend(), []
    s, state = syncer(backend, clock, retries)
    state.set_node(node("n1"))
    state.set_service(svc("web"))
    s.sync()
    clock.advance(10)
    state.set_slice(eps("web", ["10.244.1.2"]))
    s.sync()
    clock.advance(20)
    s.sync()
    clock.advance(1)
    state.set_node(node("n2"))  # another node: re-plan, but no full restore
    s.sync()
    state.set_node(node("n1", zone="z1"))
    s.sync()
    assert [full for _, full in backend.syncs] == [True, False, True, False, True]


@dataclass
class CrashingBackend(FakeBackend):
    """Raises what no backend should (a bug) on the next ``crashes`` syncs."""

    crashes: int = 0

    def sync(self, plan: NodePlan, *, full: bool) -> SyncResult:
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("bug in a backend")
        return super().sync(plan, full=full)


def test_standing_warnings_stay_in_the_warnings_gauge_across_syncs() -> None:
    registry = CollectorRegistry()
    state = ClusterState()
    s = new_syncer(state, FakeBackend(), ManualClock(), registry=registry,
                   standing_warnings=("ConntrackTuning", "ConntrackTuning"))
    state.set_service(svc("web"))
    s.sync()
    s.sync()
    assert registry.get_sample_value("proxyd_warnings", {"reason": "ConntrackTuning"}) == 2


def test_a_crashing_sync_is_a_failed_sync_retried_not_the_end_of_the_daemon() -> None:
    clock, backend, retries = ManualClock(), CrashingBackend(crashes=1), []
    registry = CollectorRegistry()
    s, state = syncer(backend, clock, retries, registry)
    state.set_service(svc("web"))
    s.sync()  # raises inside; must not escape
    assert retries == [1.0]
    assert registry.get_sample_value("proxyd_sync_failures_total", {"mode": "full"}) == 1
    s.sync()
    assert [full for _, full in backend.syncs] == [True]
    assert backend.syncs[0][0] == {ServiceRef("default", "web")}


def test_changes_checked_out_by_a_sync_that_crashed_in_planning_are_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import proxyd.commands.run as run_module

    clock, backend, retries = ManualClock(), FakeBackend(), []
    s, state = syncer(backend, clock, retries)
    state.set_service(svc("web"))
    state.set_service(svc("api", cluster_ips=("10.96.0.11",)))
    s.sync()
    state.set_slice(eps("web", ["10.244.1.2"]))  # checked out by the sync that crashes
    real = run_module.build_plan

    def crash_once(*args: object, **kwargs: object) -> NodePlan:
        monkeypatch.setattr(run_module, "build_plan", real)
        raise RuntimeError("bug in the planner")

    monkeypatch.setattr(run_module, "build_plan", crash_once)
    s.sync()
    s.sync()
    plan = backend.last()
    assert plan is not None
    web = next(sp for sp in plan.services if sp.key.service == ServiceRef("default", "web"))
    assert {e.ip for e in web.internal} == {"10.244.1.2"}


def test_failure_forces_full_and_schedules_backoff() -> None:
    clock, backend, retries = ManualClock(), FakeBackend(fail=True), []
    s, state = syncer(backend, clock, retries)
    state.set_service(svc("web"))
    s.sync()
    s.sync()
    backend.fail = False
    s.sync()
    clock.advance(1)
    state.set_slice(eps("web", ["10.244.1.2"]))
    s.sync()
    assert [full for _, full in backend.syncs] == [True, True, True, False]
    assert retries == [1.0, 2.0]


def test_unchanged_services_are_not_replanned() -> None:
    clock, backend, retries = ManualClock(), FakeBackend(), []
    s, state = syncer(backend, clock, retries)
    state.set_service(svc("a"))
    state.set_service(svc("b"))
    s.sync()
    first = backend.plans[-1]
    state.set_slice(eps("b", ["10.244.1.2"]))
    s.sync()
    second = backend.plans[-1]
    assert first.services[0] is second.services[0]  # "a" reused, not rebuilt
    assert second.services[1] != first.services[1]


# --- shutdown ------------------------------------------------------------------------------


@dataclass
class StubSyncer:
    busy: bool = False


@dataclass
class StubDaemon:
    syncer: StubSyncer = field(default_factory=StubSyncer)
    stops: int = 0

    def stop(self) -> None:
        self.stops += 1


def test_first_signal_asks_to_stop_after_the_current_sync() -> None:
    daemon = StubDaemon(StubSyncer(busy=True))
    Shutdown(daemon, abort_after=3600).on_signal(signal.SIGTERM, None)
    assert daemon.stops == 1


def test_second_signal_aborts_a_running_sync_but_not_the_cleanup() -> None:
    daemon = StubDaemon(StubSyncer(busy=True))
    shutdown = Shutdown(daemon, abort_after=3600)
    shutdown.on_signal(signal.SIGTERM, None)
    with pytest.raises(SyncAborted):
        shutdown.on_signal(signal.SIGTERM, None)
    daemon.syncer.busy = False
    shutdown.on_signal(signal.SIGINT, None)  # cleanup under way: ignored
    assert daemon.stops == 1


def test_sync_still_running_after_the_grace_period_is_aborted() -> None:
    daemon = StubDaemon(StubSyncer(busy=True))
    shutdown = Shutdown(daemon, abort_after=0.1)
    previous = signal.signal(signal.SIGTERM, shutdown.on_signal)
    try:
        with pytest.raises(SyncAborted):
            shutdown.on_signal(signal.SIGTERM, None)
            time.sleep(10)  # the long restore: interrupted by the real signal
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- cold start detection ----------------------------------------------------------------


@dataclass
class SaveRunner:
    """Answers ``iptables-*-save -t nat`` with a fixed dump."""

    dump: str
    code: int = 0

    def run(self, argv, stdin: bytes = b"") -> CompletedRun:
        assert argv[0].endswith("-save") and argv[1:] == ["-t", "nat"]
        return CompletedRun(self.code, self.dump)


NAT = "*nat\n:PREROUTING ACCEPT [0:0]\n{}COMMIT\n"


@pytest.mark.parametrize(
    ("dump", "code", "cold"),
    [
        pytest.param(NAT.format(""), 0, True, id="empty-node-is-cold"),
        pytest.param(NAT.format(":PROXYD-SERVICES - [0:0]\n"), 0, False, id="restart-is-warm"),
        pytest.param("", 1, False, id="unreadable-is-treated-as-warm"),
    ],
)
def test_cold_node_detection(dump: str, code: int, cold: bool) -> None:
    assert _iptables_cold(SaveRunner(dump, code), Variant.NFT) is cold


def test_co_resident_kube_proxy_is_reported(caplog) -> None:
    dump = NAT.format(":KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n")
    with caplog.at_level("WARNING", logger="proxyd.run"):
        assert _iptables_cold(SaveRunner(dump), Variant.LEGACY) is True
    assert "kube-proxy rules are present" in caplog.text


def test_store_listener_hears_only_writes_that_change_something() -> None:
    heard: list[str] = []
    state = ClusterState(on_change=heard.append)
    state.set_service(svc("web"))
    state.set_service(svc("web"))  # the same object again (a relist): nothing to sync
    state.set_slice(eps("web", ["10.244.1.2"]))
    state.delete_slice("default", "nope")
    state.set_node(node("n1"))
    state.set_node(node("n1"))
    state.delete_node("n1")
    state.delete_service(ServiceRef("default", "web"))
    assert heard == ["service", "slice", "node", "node", "service"]


def test_programming_latency_runs_from_the_latest_change_not_an_earlier_one() -> None:
    clock, backend, retries, registry = ManualClock(), FakeBackend(), [], CollectorRegistry()
    s, state = syncer(backend, clock, retries, registry)
    state.set_service(svc("web"))
    state.set_slice(eps("web", ["10.244.1.2"], trigger_time=clock.time()))
    clock.advance(0.5)
    s.sync()
    clock.advance(100)
    state.set_slice(eps("web", ["10.244.1.3"], trigger_time=clock.time()))  # changed now
    clock.advance(2)
    s.sync()
    state.delete_slice("default", "web-abcde")  # a delete carries no trigger time
    clock.advance(1)
    s.sync()
    name = "kubeproxy_network_programming_duration_seconds"
    assert registry.get_sample_value(f"{name}_count") == 2
    assert registry.get_sample_value(f"{name}_sum") == pytest.approx(2.5)
