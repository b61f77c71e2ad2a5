"""The API informers (``proxyd.sources.kube``) through the real ``kubernetes`` client
against the fake API server: ordering, resume without relist, 410 relists, outages,
malformed objects, NodePool discovery, selection of other proxies' objects."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from proxyd.errors import SourceError
from proxyd.model import (
    ClusterSnapshot,
    EndpointSlice,
    NodeInfo,
    NodePlan,
    NodePool,
    Service,
    ServiceRef,
)
from proxyd.plan import build_plan
from proxyd.sandbox.fakeapi import FakeApiServer
from proxyd.sources import manifests
from proxyd.sources.kube import InformerOptions, KubeSources, api_client, snapshot_once
from proxyd.store import ClusterState
from tests.builders import ep_obj, list_obj, node_obj, pool_obj, port_obj, slice_obj, svc_obj

NODE = "node-a"
RESOURCES = ("services", "endpointslices", "nodes", "nodepools")
KINDS = ("Service", "EndpointSlice", "Node", "NodePool")
FAST = InformerOptions(
    request_timeout=2.0,
    watch_timeout=30,
    backoff_initial=0.05,
    backoff_cap=0.4,
    pool_recheck_interval=0.2,
)
PROXY_LABEL = "service.kubernetes.io/service-proxy-name"


class RecordingState(ClusterState):
    """A ClusterState that remembers every write, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, str]] = []
        self._ops_lock = threading.Lock()

    def _log(self, op: str, key: str) -> None:
        with self._ops_lock:
            self.ops.append((op, key))

    def set_service(self, svc: Service) -> None:
        self._log("set_service", str(svc.ref))
        super().set_service(svc)

    def delete_service(self, ref: ServiceRef) -> None:
        self._log("delete_service", str(ref))
        super().delete_service(ref)

    def set_slice(self, eps: EndpointSlice) -> None:
        self._log("set_slice", f"{eps.namespace}/{eps.name}")
        super().set_slice(eps)

    def delete_slice(self, namespace: str, name: str) -> None:
        self._log("delete_slice", f"{namespace}/{name}")
        super().delete_slice(namespace, name)

    def set_node(self, node: NodeInfo) -> None:
        self._log("set_node", node.name)
        super().set_node(node)

    def delete_node(self, name: str) -> None:
        self._log("delete_node", name)
        super().delete_node(name)

    def set_pool(self, pool: NodePool) -> None:
        self._log("set_pool", pool.name)
        super().set_pool(pool)

    def delete_pool(self, name: str) -> None:
        self._log("delete_pool", name)
        super().delete_pool(name)

    def take_ops(self) -> list[tuple[str, str]]:
        with self._ops_lock:
            ops, self.ops = self.ops, []
            return ops


class Recorder:
    """Collects ``on_reject`` / ``on_watch_restart`` calls from the informer threads."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, first: str, second: str) -> None:
        with self._lock:
            self.calls.append((first, second))

    def of(self, first: str) -> list[str]:
        with self._lock:
            return [b for a, b in self.calls if a == first]


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval=0.5) as srv:
        yield srv


@pytest.fixture
def kubeconfig(server: FakeApiServer, tmp_path: Path) -> str:
    return server.write_kubeconfig(tmp_path / "kubeconfig")


@contextmanager
def running(
    kubeconfig: str,
    state: ClusterState,
    options: InformerOptions = FAST,
    *,
    wait: bool = True,
    **kwargs: Any,
) -> Iterator[KubeSources]:
    """Informers started (and synced unless ``wait`` is false); stopped afterwards."""
    client = api_client(kubeconfig)
    sources = KubeSources(client, state, options=options, **kwargs)
    sources.start()
    try:
        if wait:
            eventually(sources.has_synced, what="informers synced")
        yield sources
    finally:
        sources.stop()
        client.close()


def eventually(check: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not reached in {timeout}s: {what or check}"
        time.sleep(0.01)


def manifest_state(server: FakeApiServer, tmp_path: Path) -> ClusterState:
    """The server's current objects loaded through the manifest source."""
    objects = [obj for kind in KINDS for obj in server.objects(kind)]
    path = tmp_path / "objects.json"
    path.write_text(json.dumps(list_obj(*objects)))
    state = ClusterState()
    manifests.load([str(path)], state)
    return state


def plan_of(snapshot: ClusterSnapshot) -> NodePlan:
    return build_plan(snapshot, NODE)


def converged(state: ClusterState, server: FakeApiServer, tmp_path: Path) -> Callable[[], bool]:
    """The store holds exactly the server's objects (hence the same plan as manifests)."""
    return lambda: state.snapshot() == manifest_state(server, tmp_path).snapshot()


def seed(server: FakeApiServer) -> None:
    """node-a in pool p1 (and its NodePool), node-b outside, service web with a slice."""
    server.apply(node_obj(NODE, pool="p1", zone="z1", internal_ips=["10.0.0.1"]))
    server.apply(node_obj("node-b", zone="z2", internal_ips=["10.0.0.2"]))
    server.apply(pool_obj("p1", [NODE]))
    server.apply(svc_obj("web", annotations={"openyurt.io/topologyKeys": "openyurt.io/nodepool"}))
    server.apply(
        slice_obj("web", [ep_obj("10.244.1.2", node=NODE), ep_obj("10.244.2.2", node="node-b")])
    )


# --- events reach the store, in order, and give the manifest plan ------------------------


def test_changes_reach_the_store_in_order_and_plan_like_manifests(
    server: FakeApiServer, kubeconfig: str, tmp_path: Path
) -> None:
    seed(server)
    state = RecordingState()
    with running(kubeconfig, state):
        eventually(converged(state, server, tmp_path))
        assert {ep.addr for ep in plan_of(state.snapshot()).services[0].internal} == {
            "10.244.1.2:8080"
        }
        state.take_ops()
        steps: list[tuple[Callable[[], object], tuple[str, str]]] = [
            (
                lambda: server.apply(
                    slice_obj(
                        "web", [ep_obj("10.244.1.2", node=NODE), ep_obj("10.244.1.3", node=NODE)]
                    )
                ),
                ("set_slice", "default/web-abcde"),
            ),
            (
                lambda: server.apply(
                    svc_obj("web", topologyKeys=["topology.kubernetes.io/zone", "*"])
                ),
                ("set_service", "default/web"),
            ),
            (
                lambda: server.apply(
                    node_obj(NODE, pool="p1", zone="z2", internal_ips=["10.0.0.1"])
                ),
                ("set_node", NODE),
            ),
            (lambda: server.apply(pool_obj("p1", [NODE, "node-b"])), ("set_pool", "p1")),
            (lambda: server.delete("NodePool", "p1"), ("delete_pool", "p1")),
            (lambda: server.delete("Node", "node-b"), ("delete_node", "node-b")),
            (
                lambda: server.delete("EndpointSlice", "web-abcde", "default"),
                ("delete_slice", "default/web-abcde"),
            ),
            (lambda: server.delete("Service", "web", "default"), ("delete_service", "default/web")),
        ]
        for change, op in steps:
            change()
            eventually(converged(state, server, tmp_path), what=str(op))
            assert plan_of(state.snapshot()) == plan_of(manifest_state(server, tmp_path).snapshot())
            assert state.take_ops() == [op]


def test_raw_fields_survive_translation(
    server: FakeApiServer, kubeconfig: str, tmp_path: Path
) -> None:
    server.apply(svc_obj("web", topologyKeys=["kubernetes.io/hostname", "*"]))
    state = ClusterState()
    with running(kubeconfig, state):
        services = state.snapshot().services
        assert [svc.topology_keys for svc in services.values()] == [("kubernetes.io/hostname", "*")]


def test_updates_of_one_object_arrive_in_version_order(
    server: FakeApiServer, kubeconfig: str
) -> None:
    seen: list[int] = []

    class PortLog(ClusterState):
        def set_service(self, svc: Service) -> None:
            seen.append(svc.ports[0].port)
            super().set_service(svc)

    with running(kubeconfig, PortLog()):
        for port in range(1000, 1050):
            server.apply(svc_obj("web", ports=[port_obj(port)]))
        eventually(lambda: seen and seen[-1] == 1049)
    assert seen == sorted(seen) and len(seen) == len(set(seen))


# --- resume, expiry, outage ----------------------------------------------------------------


def test_dropped_watch_resumes_from_last_version_without_list(
    server: FakeApiServer, kubeconfig: str, tmp_path: Path
) -> None:
    seed(server)
    state, restarts = ClusterState(), Recorder()
    with running(kubeconfig, state, on_watch_restart=restarts):
        eventually(lambda: all(server.active_watches(r) for r in RESOURCES))
        server.reset_counts()
        assert server.drop_watches() == 4
        server.apply(svc_obj("late", cluster_ip="10.96.0.11"))
        server.delete("EndpointSlice", "web-abcde", "default")
        server.apply(node_obj("node-c"))
        server.apply(pool_obj("p2", ["node-c"]))
        eventually(converged(state, server, tmp_path))
        for resource in RESOURCES:
            counts = server.counts(resource)
            assert "list" not in counts, resource
            assert counts["watch"] >= 1
            assert "error" in restarts.of(resource)


def test_watch_ended_by_the_server_is_renewed_without_list(
    server: FakeApiServer, kubeconfig: str, tmp_path: Path
) -> None:
    state, restarts = ClusterState(), Recorder()
    options = replace(FAST, watch_timeout=1)
    with running(kubeconfig, state, options, on_watch_restart=restarts):
        server.reset_counts()
        time.sleep(1.5)
        server.apply(svc_obj("web"))
        eventually(converged(state, server, tmp_path))
        assert "list" not in server.counts("services")
        assert server.counts("services")["watch"] >= 1
        assert "closed" in restarts.of("services")


def test_bookmarks_keep_the_resume_point_fresh(
    server: FakeApiServer, kubeconfig: str, tmp_path: Path
) -> None:
    server.apply(svc_obj("web"))
    state = ClusterState()
    with running(kubeconfig, state):
        for i in range(5):  # other resources move the global resourceVersion on
            server.apply(node_obj(f"node-{i}"))
        time.sleep(1.2)  # > 2 bookmark intervals: the services watch got a newer version
        server.compact()
        server.reset_counts()
        server.drop_watches()
        server.apply(svc_obj("after", cluster_ip="10.96.0.30"))
        eventually(converged(state, server, tmp_path))
        assert "list" not in server.counts("services")


@pytest.mark.parametrize("as_http", [False, True], ids=["error-event", "http-410"])
def test_410_relists_once_and_sees_deletes_made_in_the_gap(
    server: FakeApiServer, kubeconfig: str, tmp_path: Path, as_http: bool
) -> None:
    seed(server)
    server.apply(svc_obj("gone", cluster_ip="10.96.0.12"))
    server.apply(svc_obj("changed", cluster_ip="10.96.0.13"))
    server.expired_as_http = as_http
    state, restarts = RecordingState(), Recorder()
    with running(kubeconfig, state, on_watch_restart=restarts):
        server.stop()
        server.delete("Service", "gone", "default")
        server.delete("NodePool", "p1")
        server.delete("Node", "node-b")
        server.delete("EndpointSlice", "web-abcde", "default")
        server.apply(svc_obj("changed", cluster_ip="10.96.0.14"))
        server.apply(svc_obj("new", cluster_ip="10.96.0.15"))
        server.compact()
        server.reset_counts()
        state.take_ops()
        server.start()
        eventually(converged(state, server, tmp_path))
        eventually(lambda: all(server.active_watches(r) for r in RESOURCES))
        for resource in RESOURCES:
            assert server.counts(resource)["list"] == 1, resource
            assert "expired" in restarts.of(resource)
        ops = state.take_ops()
        deletes = [op for op in ops if op[0].startswith("delete")]
        assert sorted(deletes) == [
            ("delete_node", "node-b"),
            ("delete_pool", "p1"),
            ("delete_service", "default/gone"),
            ("delete_slice", "default/web-abcde"),
        ]
        assert ops.count(("set_service", "default/new")) == 1


@pytest.mark.slow
def test_api_server_down_keeps_state_backs_off_and_converges(
    server: FakeApiServer, kubeconfig: str, tmp_path: Path
) -> None:
    seed(server)
    halt = threading.Event()
    delays: list[tuple[str, float]] = []

    def sleep(seconds: float) -> None:
        delays.append((threading.current_thread().name, seconds))
        halt.wait(seconds)

    options = InformerOptions(
        request_timeout=1.0, watch_timeout=30, backoff_initial=0.2, backoff_cap=1.2
    )
    state = ClusterState()
    with running(kubeconfig, state, options, sleep=sleep):
        before = state.snapshot()
        server.stop()
        server.apply(svc_obj("while-down", cluster_ip="10.96.0.20"))
        server.delete("EndpointSlice", "web-abcde", "default")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert state.snapshot() == before  # nothing flushed, nothing invented
            time.sleep(0.5)
        server.start()
        back = time.monotonic()
        eventually(converged(state, server, tmp_path), timeout=10)
        took = time.monotonic() - back
        halt.set()
    per_thread: dict[str, list[float]] = {}
    for name, seconds in delays:
        per_thread.setdefault(name, []).append(seconds)
    assert set(per_thread) == {f"informer-{r}" for r in RESOURCES}
    for name, waits in per_thread.items():
        # uncapped waits double (jitter keeps each between half and all of 0.2 * 2^n),
        # then they stay at most the cap
        assert 0.1 <= waits[0] <= 0.2, name
        assert all(0.6 <= w <= 1.2 for w in waits[4:]), name
        assert len(waits) <= 4 + 30 / 0.6 + 2, name  # bounded: no hot loop
    assert took < 2.0


def test_stalled_api_server_is_timed_out_and_retried(
    server: FakeApiServer, kubeconfig: str, tmp_path: Path
) -> None:
    seed(server)
    server.stall(2.0)
    state, restarts = ClusterState(), Recorder()
    options = replace(FAST, request_timeout=0.5)
    with running(kubeconfig, state, options, wait=False, on_watch_restart=restarts) as sources:
        assert not sources.has_synced()
        eventually(sources.has_synced, timeout=6)
        eventually(converged(state, server, tmp_path))
    assert "error" in restarts.of("services")


def test_backoff_doubles_up_to_the_cap_and_resets_after_success(
    server: FakeApiServer, kubeconfig: str
) -> None:
    halt = threading.Event()
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "informer-services":
            delays.append(seconds)
        halt.wait(0.001)

    server.stop()
    state = ClusterState()
    options = replace(FAST, backoff_initial=0.1, backoff_cap=0.8)
    with running(kubeconfig, state, options, wait=False, sleep=sleep, rand=lambda: 1.0) as src:
        eventually(lambda: len(delays) >= 7)
        assert delays[:7] == [0.1, 0.2, 0.4, 0.8, 0.8, 0.8, 0.8]
        server.start()
        eventually(src.has_synced)
        count = len(delays)
        server.stop()
        eventually(lambda: len(delays) > count)
        assert delays[count] == 0.1
        halt.set()


def test_jitter_spreads_waits_between_half_and_full(server: FakeApiServer, kubeconfig: str) -> None:
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "informer-nodes":
            delays.append(seconds)
        time.sleep(0.001)

    server.stop()
    options = replace(FAST, backoff_initial=0.4, backoff_cap=0.4)
    with running(kubeconfig, ClusterState(), options, wait=False, sleep=sleep, rand=lambda: 0.0):
        eventually(lambda: len(delays) >= 2)
    assert delays[:2] == [0.2, 0.2]


def test_stop_ends_threads_promptly_even_mid_watch(server: FakeApiServer, kubeconfig: str) -> None:
    options = replace(FAST, watch_timeout=300)
    client = api_client(kubeconfig)
    sources = KubeSources(client, ClusterState(), options=options)
    sources.start()
    eventually(sources.has_synced)
    eventually(lambda: all(server.active_watches(r) for r in RESOURCES))
    started = time.monotonic()
    sources.stop()
    assert time.monotonic() - started < 1.0
    assert not [t for t in threading.enumerate() if t.name.startswith("informer-")]
    client.close()


# --- malformed objects ----------------------------------------------------------------------


def test_malformed_object_among_1000_good_ones(
    server: FakeApiServer, kubeconfig: str, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(1000):
        server.apply(svc_obj(f"s{i:04d}"))
    server.apply(svc_obj("bad", ports=[port_obj(70000)]))
    state, rejects = ClusterState(), Recorder()
    caplog.set_level(logging.WARNING, logger="proxyd.sources.kube")
    with running(kubeconfig, state, on_reject=rejects) as sources:
        services = state.snapshot().services
        assert len(services) == 1000
        assert all(ref.name != "bad" for ref in services)
        assert [kind for kind, _ in rejects.calls] == ["Service"]
        assert [r.getMessage() for r in caplog.records if "default/bad" in r.getMessage()]

        # the same version again (relist after 410): not reported again
        server.compact()
        server.drop_watches()
        server.apply(svc_obj("s0000", cluster_ip="10.96.0.99"))
        eventually(lambda: state.snapshot().services[_ref("s0000")].cluster_ips == ("10.96.0.99",))
        assert len(rejects.calls) == 1

        # a good object turning bad keeps its last good version; reported once
        server.apply(svc_obj("s0001", ports=[port_obj(0)]))
        eventually(lambda: len(rejects.calls) == 2)
        assert state.snapshot().services[_ref("s0001")].ports[0].port == 80

        # fixed: it arrives
        server.apply(svc_obj("bad", ports=[port_obj(81)]))
        eventually(lambda: _ref("bad") in state.snapshot().services)
        assert sources.has_synced()
    assert len(rejects.calls) == 2


def test_relist_keeps_the_last_good_version_of_a_malformed_object(
    server: FakeApiServer, kubeconfig: str
) -> None:
    server.apply(svc_obj("web"))
    state, rejects = ClusterState(), Recorder()
    with running(kubeconfig, state, on_reject=rejects):
        server.stop()
        server.apply(svc_obj("web", ports=[port_obj("eighty")]))
        server.compact()
        server.start()
        eventually(lambda: rejects.calls)
        assert _ref("web") in state.snapshot().services


def test_a_translate_bug_is_reported_not_fatal(
    server: FakeApiServer, kubeconfig: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxyd.sources import kube, translate

    def fragile(obj: Any) -> Service:
        if obj["metadata"]["name"] == "boom":
            raise RuntimeError("bug")
        return translate.service(obj)

    monkeypatch.setattr(kube, "_SERVICES", replace(kube._SERVICES, translate=fragile))
    server.apply(svc_obj("boom"))
    server.apply(svc_obj("fine"))
    state, rejects = ClusterState(), Recorder()
    with running(kubeconfig, state, on_reject=rejects):
        assert {ref.name for ref in state.snapshot().services} == {"fine"}
        assert rejects.calls == [("Service", "internal_error")]
        server.apply(svc_obj("later"))
        eventually(lambda: _ref("later") in state.snapshot().services)


# --- NodePools -------------------------------------------------------------------------------


def test_nodepool_crd_absent_then_created_then_removed(
    server: FakeApiServer, kubeconfig: str, caplog: pytest.LogCaptureFixture
) -> None:
    server.set_nodepool_crd(None)
    state, restarts = ClusterState(), Recorder()
    caplog.set_level(logging.INFO, logger="proxyd.sources.kube")
    with running(kubeconfig, state, on_watch_restart=restarts) as sources:
        assert sources.has_synced()  # a disabled informer does not hold the daemon back
        time.sleep(0.7)  # several re-checks
        not_served = [r for r in caplog.records if "not served" in r.getMessage()]
        assert len(not_served) == 1

        server.set_nodepool_crd(["v1alpha1"])
        server.apply(pool_obj("p1", [NODE], version="v1alpha1"))
        eventually(lambda: "p1" in state.snapshot().pools)

        server.set_nodepool_crd(None)
        eventually(lambda: not state.snapshot().pools)
        eventually(lambda: "not_served" in restarts.of("nodepools"))


def test_nodepool_preferred_version_is_used(server: FakeApiServer, kubeconfig: str) -> None:
    server.set_nodepool_crd(["v1beta1", "v1alpha1"])
    server.apply(pool_obj("p1", [NODE]))
    with running(kubeconfig, ClusterState()):
        eventually(lambda: server.active_watches("nodepools"))
    assert server.counts("nodepools")["list"] == 1


# --- selection -------------------------------------------------------------------------------


def test_other_proxies_and_headless_objects_are_left_out(
    server: FakeApiServer, kubeconfig: str, tmp_path: Path
) -> None:
    mine = {PROXY_LABEL: "proxyd"}
    theirs = {PROXY_LABEL: "kube-proxy-2"}
    server.apply(svc_obj("plain", cluster_ip="10.96.0.1"))
    server.apply(svc_obj("mine", cluster_ip="10.96.0.2", labels=mine))
    server.apply(svc_obj("theirs", cluster_ip="10.96.0.3", labels=theirs))
    server.apply(svc_obj("headless", cluster_ip="None"))
    server.apply(slice_obj("plain", ["10.244.1.1"]))
    server.apply(slice_obj("mine", ["10.244.1.2"], labels=mine))
    server.apply(slice_obj("theirs", ["10.244.1.3"], labels=theirs))
    server.apply(
        slice_obj("headless", ["10.244.1.4"], labels={"service.kubernetes.io/headless": ""})
    )
    server.apply(node_obj(NODE))
    state = ClusterState()
    with running(kubeconfig, state):
        snapshot = state.snapshot()
        assert {ref.name for ref in snapshot.services} == {"plain", "mine", "headless"}
        assert {name for _, name in snapshot.slices} == {"plain-abcde", "mine-abcde"}
        assert plan_of(snapshot) == plan_of(manifest_state(server, tmp_path).snapshot())

        server.apply(svc_obj("plain", cluster_ip="10.96.0.1", labels=theirs))
        eventually(lambda: _ref("plain") not in state.snapshot().services)


def test_own_proxy_name_is_configurable(server: FakeApiServer, kubeconfig: str) -> None:
    server.apply(svc_obj("edge", labels={PROXY_LABEL: "edge-proxy"}))
    server.apply(svc_obj("default-proxyd", labels={PROXY_LABEL: "proxyd"}))
    state = ClusterState()
    options = replace(FAST, proxy_name="edge-proxy")
    with running(kubeconfig, state, options):
        assert {ref.name for ref in state.snapshot().services} == {"edge"}


# --- snapshot_once and client construction -------------------------------------------------


def test_snapshot_once_equals_the_manifest_snapshot(
    server: FakeApiServer, kubeconfig: str, tmp_path: Path
) -> None:
    seed(server)
    server.apply(svc_obj("theirs", labels={PROXY_LABEL: "other"}))
    for i in range(1200):  # more than one page
        server.apply(slice_obj("web", [f"10.245.{i // 250}.{i % 250}"], name=f"web-{i:04d}"))
    snapshot = snapshot_once(kubeconfig)
    assert snapshot == manifest_state(server, tmp_path).snapshot()
    assert plan_of(snapshot) == plan_of(manifest_state(server, tmp_path).snapshot())


def test_snapshot_once_skips_malformed_and_works_without_nodepools(
    server: FakeApiServer, kubeconfig: str
) -> None:
    server.set_nodepool_crd(None)
    server.apply(svc_obj("ok"))
    server.apply(svc_obj("bad", ports=[port_obj(-1)]))
    rejects = Recorder()
    snapshot = snapshot_once(kubeconfig, on_reject=rejects)
    assert {ref.name for ref in snapshot.services} == {"ok"}
    assert [kind for kind, _ in rejects.calls] == ["Service"]
    assert snapshot.pools == {}


def test_snapshot_once_from_an_unreachable_server_is_a_source_error(
    server: FakeApiServer, kubeconfig: str
) -> None:
    server.stop()
    with pytest.raises(SourceError, match="/api/v1/services"):
        snapshot_once(kubeconfig, request_timeout=1.0)


def test_api_client_errors_are_source_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SourceError, match="missing"):
        api_client(str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(SourceError, match="in-cluster"):
        api_client(None)


def _ref(name: str, namespace: str = "default") -> ServiceRef:
    return ServiceRef(namespace, name)
