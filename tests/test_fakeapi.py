"""The fake API server, checked through the official ``kubernetes`` client (typed API,
``Watch``, discovery) and plain HTTP for the controls."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch

from proxyd.sandbox.fakeapi import (
    FakeApiServer,
    parse_field_selector,
    parse_label_selector,
    write_kubeconfig,
)
from tests.builders import list_obj, node_obj, pool_obj, slice_obj, svc_obj

# --- selectors (pure) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "want"),
    [
        pytest.param("", {}, True, id="empty-matches-all"),
        pytest.param("a", {"a": ""}, True, id="exists"),
        pytest.param("a", {}, False, id="exists-missing"),
        pytest.param("!a", {}, True, id="not-exists"),
        pytest.param("!a", {"a": "1"}, False, id="not-exists-present"),
        pytest.param("a=1", {"a": "1"}, True, id="equals"),
        pytest.param("a==1", {"a": "2"}, False, id="double-equals-other-value"),
        pytest.param("a!=1", {}, True, id="not-equals-matches-missing"),
        pytest.param("a!=1", {"a": "1"}, False, id="not-equals-same"),
        pytest.param("a in (1, 2)", {"a": "2"}, True, id="in"),
        pytest.param("a in (1,2)", {}, False, id="in-missing"),
        pytest.param("a notin (1,2)", {}, True, id="notin-matches-missing"),
        pytest.param("a notin (1,2)", {"a": "1"}, False, id="notin-listed"),
        pytest.param("!x,a in (1,2),b", {"a": "1", "b": ""}, True, id="anded-all-true"),
        pytest.param("!x,a in (1,2),b", {"a": "1", "b": "", "x": ""}, False, id="anded-one-false"),
    ],
)
def test_label_selector(selector: str, labels: dict[str, str], want: bool) -> None:
    assert parse_label_selector(selector)(labels) is want


@pytest.mark.parametrize("selector", ["a=b=c", "=x", "a in (1", "!", "a b"])
def test_label_selector_rejects_malformed(selector: str) -> None:
    with pytest.raises(ValueError):
        parse_label_selector(selector)


@pytest.mark.parametrize(
    ("selector", "want"),
    [
        ("metadata.name=web", True),
        ("metadata.name==web", True),
        ("metadata.name!=web", False),
        ("metadata.namespace=default,metadata.name=web", True),
        ("metadata.namespace=kube-system", False),
    ],
)
def test_field_selector(selector: str, want: bool) -> None:
    assert parse_field_selector(selector)(svc_obj("web")) is want


def test_field_selector_rejects_unknown_field() -> None:
    with pytest.raises(ValueError, match="not supported"):
        parse_field_selector("spec.clusterIP=1.2.3.4")


# --- through the kubernetes client -------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval=0.2) as srv:
        yield srv


def _client_config(kubeconfig: str | Path) -> Any:
    """Client configuration from a kubeconfig, urllib3 retries off (they hide timeouts)."""
    cfg = client.Configuration()
    load: Any = config.load_kube_config
    load(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.retries = False
    return cfg


def _typed(api_class: Any, api: Any) -> Any:
    """A typed API object, as ``Any`` (the client's models make every field optional)."""
    return api_class(api)


@pytest.fixture
def api(server: FakeApiServer, tmp_path: Path) -> Iterator[Any]:
    with client.ApiClient(_client_config(server.write_kubeconfig(tmp_path / "kc"))) as api_client:
        yield api_client


def _watch(func: Callable[..., Any], **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every event of one watch call (ends by ``timeout_seconds``)."""
    watcher: Any = watch.Watch
    return [(ev["type"], ev["raw_object"]) for ev in watcher().stream(func, **kwargs)]


def test_typed_client_reads_services_nodes_slices_and_version(
    server: FakeApiServer, api: Any
) -> None:
    server.apply(svc_obj("web", "shop", labels={"app": "web"}))
    server.apply(node_obj("node-a", internal_ips=["10.0.0.1"]))
    server.apply(slice_obj("web", ["10.244.1.2"], namespace="shop"))
    core = _typed(client.CoreV1Api, api)

    services = core.list_service_for_all_namespaces(label_selector="app in (web)")
    assert [s.metadata.name for s in services.items] == ["web"]
    assert int(services.metadata.resource_version) == server.resource_version
    assert core.read_namespaced_service("web", "shop").spec.cluster_ip == "10.96.0.10"
    assert core.list_namespaced_service("other").items == []
    assert core.read_node("node-a").status.addresses[0].address == "10.0.0.1"
    slices = _typed(client.DiscoveryV1Api, api).list_endpoint_slice_for_all_namespaces()
    assert slices.items[0].endpoints[0].addresses == ["10.244.1.2"]
    assert _typed(client.VersionApi, api).get_code().major == "1"


def test_list_items_are_raw_json_with_fields_typed_models_drop(
    server: FakeApiServer, api: Any
) -> None:
    server.apply(svc_obj("web", topologyKeys=["kubernetes.io/hostname", "*"]))
    response = _typed(client.CoreV1Api, api).list_service_for_all_namespaces(_preload_content=False)
    body = json.loads(response.data)
    assert body["kind"] == "ServiceList"
    assert body["items"][0]["spec"]["topologyKeys"] == ["kubernetes.io/hostname", "*"]
    assert "kind" not in body["items"][0]  # as the real server: built-in list items


def test_missing_object_is_a_404_status(api: Any) -> None:
    with pytest.raises(client.ApiException) as err:
        _typed(client.CoreV1Api, api).read_namespaced_service("nope", "default")
    assert err.value.status == 404
    assert json.loads(err.value.body or "{}")["reason"] == "NotFound"


def test_events_can_be_created_and_patched(server: FakeApiServer, api: Any) -> None:
    core = _typed(client.CoreV1Api, api)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="web."),
        involved_object=client.V1ObjectReference(kind="Service", name="web", namespace="shop"),
        reason="NoLocalEndpoints",
        message="m",
        type="Warning",
        count=1,
    )
    created = core.create_namespaced_event("shop", event)
    patched = core.patch_namespaced_event(created.metadata.name, "shop", {"count": 2})
    assert (created.count, patched.count) == (1, 2)
    stored = server.get("Event", created.metadata.name, "shop")
    assert stored is not None and stored["count"] == 2
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_event(
            "shop", {**created.to_dict(), "metadata": {"name": created.metadata.name}}
        )
    assert err.value.status == 409


def test_discovery_serves_nodepool_versions_and_404_without_crd(
    server: FakeApiServer, api: Any
) -> None:
    server.set_nodepool_crd(["v1alpha1"])
    group = _typed(client.ApisApi, api).get_api_versions()
    openyurt = [g for g in group.groups if g.name == "apps.openyurt.io"]
    assert [v.version for v in openyurt[0].versions] == ["v1alpha1"]
    server.apply(pool_obj("p1", ["node-a"], version="v1alpha1"))
    custom = _typed(client.CustomObjectsApi, api)
    pools = custom.list_cluster_custom_object("apps.openyurt.io", "v1alpha1", "nodepools")
    assert [p["metadata"]["name"] for p in pools["items"]] == ["p1"]
    assert pools["items"][0]["kind"] == "NodePool"  # custom resources keep kind in lists
    with pytest.raises(client.ApiException) as err:
        custom.list_cluster_custom_object("apps.openyurt.io", "v1beta1", "nodepools")
    assert err.value.status == 404

    server.set_nodepool_crd(None)
    assert server.objects("NodePool") == []
    assert "apps.openyurt.io" not in {
        g.name for g in _typed(client.ApisApi, api).get_api_versions().groups
    }
    with pytest.raises(client.ApiException) as err:
        custom.list_cluster_custom_object("apps.openyurt.io", "v1alpha1", "nodepools")
    assert err.value.status == 404


def test_pages_come_from_one_consistent_snapshot(server: FakeApiServer, api: Any) -> None:
    for i in range(5):
        server.apply(svc_obj(f"s{i}"))
    core = _typed(client.CoreV1Api, api)
    first = core.list_service_for_all_namespaces(limit=2)
    server.delete("Service", "s4", "default")
    server.apply(svc_obj("s0", cluster_ip="10.96.0.99"))
    names, token = [s.metadata.name for s in first.items], first.metadata._continue
    while token:
        page = core.list_service_for_all_namespaces(limit=2, _continue=token)
        names += [s.metadata.name for s in page.items]
        token = page.metadata._continue
    assert names == ["s0", "s1", "s2", "s3", "s4"]
    assert server.counts("services") == {"list": 1, "page": 3}


def test_continue_after_compaction_is_410(server: FakeApiServer, api: Any) -> None:
    for i in range(3):
        server.apply(svc_obj(f"s{i}"))
    core = _typed(client.CoreV1Api, api)
    first = core.list_service_for_all_namespaces(limit=1)
    server.compact()
    with pytest.raises(client.ApiException) as err:
        core.list_service_for_all_namespaces(limit=1, _continue=first.metadata._continue)
    assert err.value.status == 410


def test_watch_resumes_from_history(server: FakeApiServer, api: Any) -> None:
    server.apply(svc_obj("a"))
    rv = str(server.resource_version)
    server.apply(svc_obj("b"))
    server.apply(svc_obj("a", cluster_ip="10.96.0.11"))
    server.delete("Service", "b", "default")
    events = _watch(
        _typed(client.CoreV1Api, api).list_service_for_all_namespaces,
        resource_version=rv,
        timeout_seconds=1,
    )
    assert [(t, o["metadata"]["name"]) for t, o in events] == [
        ("ADDED", "b"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),
    ]
    versions = [int(o["metadata"]["resourceVersion"]) for _, o in events]
    assert versions == sorted(versions) and versions[-1] == server.resource_version


def test_unchanged_write_makes_no_version_and_no_event(server: FakeApiServer) -> None:
    first = server.apply(svc_obj("a"))
    again = server.apply(svc_obj("a"))
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert server.resource_version == int(first["metadata"]["resourceVersion"])


def test_history_beyond_its_limit_is_compacted() -> None:
    with FakeApiServer(history_limit=2) as small:
        small.apply(svc_obj("a"))
        old = small.resource_version
        for ip in ("10.96.0.2", "10.96.0.3", "10.96.0.4"):
            small.apply(svc_obj("a", cluster_ip=ip))
        watch_url = f"{small.url}/api/v1/services?watch=true&timeoutSeconds=1&resourceVersion="
        with urllib.request.urlopen(f"{watch_url}{old}", timeout=5) as response:
            event = json.loads(response.readline())
        assert (event["type"], event["object"]["code"]) == ("ERROR", 410)
        with urllib.request.urlopen(f"{watch_url}{small.resource_version - 2}", timeout=5) as resp:
            events = [json.loads(line) for line in resp.read().splitlines()]
        assert [e["type"] for e in events] == ["MODIFIED", "MODIFIED"]


def test_watch_without_version_starts_with_current_objects(server: FakeApiServer, api: Any) -> None:
    server.apply(svc_obj("a"))
    events = _watch(
        _typed(client.CoreV1Api, api).list_service_for_all_namespaces, timeout_seconds=1
    )
    assert [(t, o["metadata"]["name"]) for t, o in events] == [("ADDED", "a")]


def test_live_events_and_bookmarks(server: FakeApiServer, api: Any) -> None:
    rv = str(server.resource_version)
    timer = threading.Timer(0.3, lambda: server.apply(svc_obj("late")))
    timer.start()
    events = _watch(
        _typed(client.CoreV1Api, api).list_service_for_all_namespaces,
        resource_version=rv,
        timeout_seconds=1,
        allow_watch_bookmarks=True,
    )
    timer.join()
    kinds = [t for t, _ in events]
    assert ("ADDED", "late") in [(t, o["metadata"].get("name")) for t, o in events]
    assert "BOOKMARK" in kinds[kinds.index("ADDED") :]
    bookmark = next(o for t, o in reversed(events) if t == "BOOKMARK")
    assert bookmark["metadata"]["resourceVersion"] == str(server.resource_version)


def test_selector_transitions_become_added_and_deleted(server: FakeApiServer, api: Any) -> None:
    server.apply(svc_obj("a", labels={"tier": "web"}))
    rv = str(server.resource_version)
    server.apply(svc_obj("a", labels={"tier": "db"}))
    server.apply(svc_obj("a", labels={"tier": "web"}))
    events = _watch(
        _typed(client.CoreV1Api, api).list_service_for_all_namespaces,
        resource_version=rv,
        label_selector="tier=web",
        timeout_seconds=1,
    )
    assert [t for t, _ in events] == ["DELETED", "ADDED"]


def test_field_selector_on_name(server: FakeApiServer, api: Any) -> None:
    server.apply(node_obj("node-a"))
    server.apply(node_obj("node-b"))
    nodes = _typed(client.CoreV1Api, api).list_node(field_selector="metadata.name=node-b")
    assert [n.metadata.name for n in nodes.items] == ["node-b"]
    with pytest.raises(client.ApiException) as err:
        _typed(client.CoreV1Api, api).list_node(field_selector="spec.unschedulable=true")
    assert err.value.status == 400


@pytest.mark.parametrize("as_http", [False, True], ids=["error-event", "http-410"])
def test_watch_from_compacted_version_is_410(
    server: FakeApiServer, api: Any, as_http: bool
) -> None:
    server.apply(svc_obj("a"))
    rv = str(server.resource_version)
    server.apply(svc_obj("b"))
    server.compact()
    server.expired_as_http = as_http
    core = _typed(client.CoreV1Api, api)
    stale = {"watch": True, "resource_version": rv, "timeout_seconds": 1}
    if as_http:
        with pytest.raises(client.ApiException) as err:
            core.list_service_for_all_namespaces(**stale, _preload_content=False)
        assert err.value.status == 410
    else:
        response = core.list_service_for_all_namespaces(**stale, _preload_content=False)
        event = json.loads(response.data.splitlines()[0])
        response.release_conn()
        assert (event["type"], event["object"]["code"]) == ("ERROR", 410)
    fresh = str(server.resource_version)
    assert (
        _watch(core.list_service_for_all_namespaces, resource_version=fresh, timeout_seconds=1)
        == []
    )


def test_dropped_watch_ends_without_closing_chunk(server: FakeApiServer, api: Any) -> None:
    response = _typed(client.CoreV1Api, api).list_service_for_all_namespaces(
        watch=True, resource_version="0", timeout_seconds=30, _preload_content=False
    )
    _wait(lambda: server.active_watches("services") == 1)
    assert server.drop_watches() == 1
    try:
        with pytest.raises(urllib3.exceptions.ProtocolError):
            for _ in response.stream(amt=None):
                pass
    finally:
        response.close()
        response.release_conn()
    assert server.counts("services")["watch"] == 1


def test_stall_delays_answers(server: FakeApiServer, api: Any) -> None:
    server.stall(1.5)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        _typed(client.CoreV1Api, api).list_node(_request_timeout=(1, 0.5))
    time.sleep(1.1)
    assert _typed(client.CoreV1Api, api).list_node(_request_timeout=(1, 1)).items == []


def test_stop_and_start_on_the_same_port_keep_state(server: FakeApiServer, api: Any) -> None:
    server.apply(svc_obj("a"))
    port, rv = server.port, server.resource_version
    server.stop()
    with pytest.raises(urllib3.exceptions.NewConnectionError):
        _typed(client.CoreV1Api, api).list_node(_request_timeout=(1, 1))
    server.apply(svc_obj("b"))
    server.start()
    assert server.port == port
    items = _typed(client.CoreV1Api, api).list_service_for_all_namespaces().items
    assert [s.metadata.name for s in items] == ["a", "b"]
    assert server.resource_version == rv + 1


# --- HTTP controls and the command line ----------------------------------------------------


def _http(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_http_controls(server: FakeApiServer) -> None:
    base = f"{server.url}/_control"
    applied = _http(f"{base}/objects", "POST", list_obj(svc_obj("a"), svc_obj("b")))
    assert applied == {"applied": 2}
    assert _http(f"{base}/objects?kind=Service&namespace=default&name=b", "DELETE")
    assert [o["metadata"]["name"] for o in server.objects("Service")] == ["a"]
    _http(f"{server.url}/api/v1/services")
    assert _http(f"{base}/counts?resource=services") == {"list": 1, "page": 1}
    _http(f"{base}/reset-counts", "POST")
    assert _http(f"{base}/counts?resource=services") == {}
    assert _http(f"{base}/compact", "POST") == {"resourceVersion": server.resource_version}
    assert _http(f"{base}/drop-watches", "POST") == {"dropped": 0}
    assert _http(f"{base}/nodepool-crd?versions=v1alpha1", "POST") == {"versions": ["v1alpha1"]}
    assert _http(f"{base}/nodepool-crd", "POST") == {"versions": []}
    with pytest.raises(urllib.error.HTTPError) as err:
        _http(f"{base}/nope", "POST")
    err.value.close()
    assert err.value.code == 404


def test_http_down_takes_the_server_away_and_back(server: FakeApiServer) -> None:
    assert _http(f"{server.url}/_control/down?seconds=1", "POST") == {"down": 1.0}
    time.sleep(0.3)
    with pytest.raises(urllib.error.URLError):
        _http(f"{server.url}/version")
    _wait(lambda: _reachable(f"{server.url}/version"), timeout=5)


def test_command_line_serves_objects_from_a_directory(tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    (objects / "svc.json").write_text(json.dumps(list_obj(svc_obj("a"), svc_obj("b"))))
    (objects / "node.yaml").write_text(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n"
        "  annotations: {t: 2024-01-01T00:00:00Z}\n---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"
    )
    kubeconfig = tmp_path / "kubeconfig"
    argv = [
        sys.executable,
        "-m",
        "proxyd.sandbox.fakeapi",
        "--objects",
        str(objects),
        "--kubeconfig",
        str(kubeconfig),
    ]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            started = json.loads(proc.stdout.readline())
            assert (started["objects"], started["ignored"]) == (3, 1)
            cfg = _client_config(kubeconfig)
            with client.ApiClient(cfg) as api:
                core = _typed(client.CoreV1Api, api)
                node = core.read_node("node-a")
                assert node.metadata.annotations == {"t": "2024-01-01T00:00:00Z"}
                assert len(core.list_service_for_all_namespaces().items) == 2
            assert cfg.host == started["url"]
        finally:
            proc.terminate()
        assert proc.wait(5) == 0


def test_write_kubeconfig_points_the_client_at_the_server(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:1234")
    assert _client_config(path).host == "http://127.0.0.1:1234"


def _reachable(url: str) -> bool:
    try:
        _http(url)
    except (urllib.error.URLError, ConnectionError):
        return False
    return True


def _wait(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
