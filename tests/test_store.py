"""ClusterState change tracking: what a sync is told to look at."""

from __future__ import annotations

from proxyd.model import NodePool, ServiceRef
from proxyd.store import ClusterState
from tests.builders import eps, node, svc

WEB, API = ServiceRef("default", "web"), ServiceRef("default", "api")


def test_a_change_undone_before_the_sync_is_no_change() -> None:
    state = ClusterState()
    state.set_service(svc("web"))
    state.checkout()
    state.set_service(svc("web", cluster_ips=("10.96.0.99",)))
    state.set_service(svc("web"))
    assert state.checkout().changed_services == frozenset()


def test_checkout_hands_over_each_change_once() -> None:
    state = ClusterState()
    state.set_service(svc("web"))
    state.set_slice(eps("api", ["10.244.1.2"]))
    first = state.checkout()
    assert (first.services, first.endpoints) == ({WEB}, {API})
    assert state.checkout().changed_services == frozenset()


def test_deleting_a_slice_marks_its_service() -> None:
    state = ClusterState()
    state.set_slice(eps("web", ["10.244.1.2"], name="web-a"))
    state.checkout()
    state.delete_slice("default", "web-a")
    assert state.checkout().endpoints == {WEB}


def test_a_slice_moved_to_another_service_marks_both() -> None:
    state = ClusterState()
    state.set_slice(eps("web", ["10.244.1.2"], name="shared"))
    state.checkout()
    state.set_slice(eps("api", ["10.244.1.2"], name="shared"))
    assert state.checkout().endpoints == {WEB, API}


def test_node_or_pool_changes_mark_topology_only_when_they_differ() -> None:
    state = ClusterState()
    state.set_node(node("n1"))
    state.set_pool(NodePool("hangzhou", frozenset({"n1"})))
    assert state.checkout().topology
    state.set_node(node("n1"))
    state.set_pool(NodePool("hangzhou", frozenset({"n1"})))
    assert not state.checkout().topology


def test_trigger_time_is_the_earliest_of_the_new_versions() -> None:
    state = ClusterState()
    state.set_slice(eps("web", ["10.244.1.2"], name="a", trigger_time=100.0))
    state.checkout()
    state.set_slice(eps("web", ["10.244.1.3"], name="a", trigger_time=200.0))
    state.set_slice(eps("web", ["10.244.1.4"], name="b", trigger_time=150.0))
    assert state.checkout().trigger_times == {WEB: 150.0}
    state.delete_slice("default", "a")  # a deletion carries no trigger time of its own
    assert state.checkout().trigger_times == {}


def test_listener_hears_only_real_changes() -> None:
    heard: list[str] = []
    state = ClusterState(on_change=heard.append)
    state.set_service(svc("web"))
    state.set_service(svc("web"))
    state.delete_service(API)
    state.set_node(node("n1"))
    assert heard == ["service", "node"]
