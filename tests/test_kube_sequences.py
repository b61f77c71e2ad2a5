"""Informer sequences through the real ``kubernetes`` client against the fake API
server, checked at the store's change tracking (what the next sync re-plans): a slice
moving to another service, a service deleted and recreated under the same name while the
watch is down, a slice leaving the server-side selector, the same objects listed again
after a 410."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from proxyd.model import ServiceRef
from proxyd.sandbox.fakeapi import FakeApiServer
from proxyd.sources.kube import InformerOptions, KubeSources, api_client
from proxyd.store import ClusterState
from tests.builders import node_obj, slice_obj, svc_obj

FAST = InformerOptions(request_timeout=2.0, watch_timeout=30, backoff_initial=0.05,
                       backoff_cap=0.2, pool_recheck_interval=0.2)
WEB, API = ServiceRef("default", "web"), ServiceRef("default", "api")


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval=0.5) as srv:
        yield srv


@pytest.fixture
def sources(server: FakeApiServer, tmp_path: Path) -> Iterator[Callable[[], ClusterState]]:
    """Starts informers into a new store and returns it once synced, its changes so far
    checked out (what a first sync takes); all stopped at teardown."""
    started: list[tuple[KubeSources, Any]] = []

    def start() -> ClusterState:
        state = ClusterState()
        client = api_client(server.write_kubeconfig(tmp_path / "kubeconfig"))
        src = KubeSources(client, state, options=FAST)
        src.start()
        started.append((src, client))
        eventually(src.has_synced)
        state.checkout()
        return state

    yield start
    for src, client in started:
        src.stop()
        client.close()


def eventually(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not reached in {timeout}s: {check}"
        time.sleep(0.01)


def test_a_slice_moving_to_another_service_replans_both(
    server: FakeApiServer, sources: Callable[[], ClusterState]
) -> None:
    server.apply(svc_obj("web"))
    server.apply(svc_obj("api", cluster_ip="10.96.0.11"))
    server.apply(slice_obj("web", ["10.244.1.2"], name="shared"))
    state = sources()
    server.apply(slice_obj("api", ["10.244.1.2"], name="shared"))
    eventually(lambda: state.snapshot().slices[("default", "shared")].service == API)
    assert state.checkout().endpoints == {WEB, API}


def test_service_recreated_while_the_watch_was_down_is_a_change(
    server: FakeApiServer, sources: Callable[[], ClusterState]
) -> None:
    server.apply(svc_obj("web"))
    state = sources()
    eventually(lambda: server.active_watches("services"))
    server.drop_watches("services")
    server.delete("Service", "web", "default")
    server.apply(svc_obj("web", cluster_ip="10.96.0.99"))
    eventually(lambda: state.snapshot().services[WEB].cluster_ips == ("10.96.0.99",))
    assert state.checkout().services == {WEB}


def test_a_slice_leaving_the_selector_leaves_the_store(
    server: FakeApiServer, sources: Callable[[], ClusterState]
) -> None:
    server.apply(svc_obj("web"))
    server.apply(slice_obj("web", ["10.244.1.2"]))
    state = sources()
    server.apply(slice_obj("web", ["10.244.1.2"],
                           labels={"service.kubernetes.io/headless": ""}))
    eventually(lambda: not state.snapshot().slices)
    assert state.checkout().endpoints == {WEB}


def test_objects_listed_again_after_410_are_no_change(
    server: FakeApiServer, sources: Callable[[], ClusterState]
) -> None:
    server.apply(svc_obj("web"))
    server.apply(slice_obj("web", ["10.244.1.2"]))
    state = sources()
    server.stop()
    server.apply(node_obj("node-z"))  # moves the version on, then history is compacted
    server.compact()
    server.reset_counts()
    server.start()
    eventually(lambda: server.counts("services").get("list") == 1
               and server.counts("endpointslices").get("list") == 1
               and server.active_watches("services") and server.active_watches("endpointslices"))
    changes = state.checkout()
    assert (changes.services, changes.endpoints) == (frozenset(), frozenset())


def test_stop_waits_its_timeout_in_all_not_per_informer(
    server: FakeApiServer, tmp_path: Path
) -> None:
    """Informers blocked in a list against a stalled API server cannot be interrupted;
    stop used to wait ``timeout`` for each of the four, one after the other."""
    server.stall(10.0)
    client = api_client(server.write_kubeconfig(tmp_path / "kubeconfig"))
    src = KubeSources(client, ClusterState(), options=replace(FAST, request_timeout=8.0))
    src.start()
    time.sleep(0.3)  # every informer is waiting for its first answer
    started = time.monotonic()
    src.stop(timeout=1.0)
    assert time.monotonic() - started < 1.8
    client.close()
