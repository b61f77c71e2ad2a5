"""manifests.load: files, documents, lists, directories, notes, and errors with locations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyd.errors import InputError, SourceError
from proxyd.model import ServiceRef
from proxyd.sources.manifests import load, read_objects
from proxyd.store import ClusterState
from tests.builders import list_obj, node_obj, pool_obj, port_obj, slice_obj, svc_obj

Obj = dict[str, Any]

CONFIGMAP: Obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}}


def _yaml(path: Path, *docs: Obj | None) -> str:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(path)


def _load(*paths: str) -> tuple[ClusterState, list[str]]:
    state = ClusterState()
    notes = load(paths, state)
    return state, notes


def _error(*paths: str) -> InputError:
    with pytest.raises(InputError) as info:
        _load(*paths)
    return info.value


def test_multi_document_yaml_fills_every_kind(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path / "all.yaml",
        svc_obj("web"),
        slice_obj("web", ["10.244.1.2"]),
        node_obj("n1", pool="p"),
        pool_obj("p", ["n1"]),
    )
    state, notes = _load(path)
    snap = state.snapshot()
    assert notes == []
    assert set(snap.services) == {ServiceRef("default", "web")}
    assert set(snap.slices) == {("default", "web-abcde")}
    assert set(snap.nodes) == {"n1"}
    assert set(snap.pools) == {"p"}


def test_kind_list_items_are_loaded(tmp_path: Path) -> None:
    path = _yaml(tmp_path / "list.yaml", list_obj(svc_obj("a"), svc_obj("b"), node_obj("n1")))
    snap = _load(path)[0].snapshot()
    assert {str(r) for r in snap.services} == {"default/a", "default/b"}
    assert set(snap.nodes) == {"n1"}


def test_typed_list_items_inherit_kind_and_api_version(tmp_path: Path) -> None:
    bare = [{k: v for k, v in svc_obj(n).items() if k not in ("kind", "apiVersion")}
            for n in ("a", "b")]
    path = _yaml(tmp_path / "list.yaml", {"apiVersion": "v1", "kind": "ServiceList",
                                          "items": bare})
    assert {str(r) for r in _load(path)[0].snapshot().services} == {"default/a", "default/b"}


def test_json_file_single_object_and_list(tmp_path: Path) -> None:
    one = tmp_path / "one.json"
    one.write_text(json.dumps(svc_obj("a")))
    many = tmp_path / "many.json"
    many.write_text(json.dumps(list_obj(svc_obj("b"), pool_obj("p"))))
    snap = _load(str(one), str(many))[0].snapshot()
    assert {str(r) for r in snap.services} == {"default/a", "default/b"}
    assert set(snap.pools) == {"p"}


def test_directory_is_read_in_sorted_order_non_recursively(tmp_path: Path) -> None:
    _yaml(tmp_path / "b.yml", svc_obj("web", cluster_ip="10.96.0.2"))
    _yaml(tmp_path / "a.yaml", svc_obj("web", cluster_ip="10.96.0.1"), svc_obj("only-a"))
    (tmp_path / "c.json").write_text(json.dumps(svc_obj("from-json")))
    (tmp_path / "README.md").write_text("not a manifest: {")
    _yaml(tmp_path / ".hidden.yaml", svc_obj("hidden"))
    (tmp_path / "sub").mkdir()
    _yaml(tmp_path / "sub" / "deep.yaml", svc_obj("deep"))
    services = _load(str(tmp_path))[0].snapshot().services
    assert {str(r) for r in services} == {"default/web", "default/only-a", "default/from-json"}
    assert services[ServiceRef("default", "web")].cluster_ips == ("10.96.0.2",)  # b after a


def test_empty_directory_gives_a_note(tmp_path: Path) -> None:
    assert _load(str(tmp_path))[1] == [f"{tmp_path}: no *.yaml, *.yml or *.json files"]


def test_ignored_kinds_give_notes_with_file_and_document(tmp_path: Path) -> None:
    v1beta1 = {**slice_obj("web"), "apiVersion": "discovery.k8s.io/v1beta1"}
    path = _yaml(tmp_path / "x.yaml", svc_obj("web"), None, CONFIGMAP, v1beta1)
    state, notes = _load(path)
    assert notes == [
        f"{path} document 3: ignoring kind ConfigMap (v1)",
        f"{path} document 4: ignoring kind EndpointSlice (discovery.k8s.io/v1beta1)",
    ]
    assert state.snapshot().slices == {}


def test_empty_documents_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("---\n# only a comment\n---\n" + yaml.safe_dump(svc_obj()) + "---\n")
    assert len(_load(str(path))[0].snapshot().services) == 1


def test_unquoted_timestamps_stay_strings(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    text = yaml.safe_dump(slice_obj("web"))
    text = text.replace(
        "metadata:\n",
        "metadata:\n  annotations:\n"
        "    endpoints.kubernetes.io/last-change-trigger-time: 2024-05-01T08:00:00Z\n",
    )
    path.write_text(text)
    (eps,) = _load(str(path))[0].snapshot().slices.values()
    assert eps.trigger_time == 1714550400.0


# --- errors --------------------------------------------------------------------------------


def test_translate_error_names_file_document_object_and_field(tmp_path: Path) -> None:
    path = _yaml(tmp_path / "x.yaml", svc_obj("ok"), svc_obj("web", ports=[port_obj("http")]))
    err = _error(path)
    assert (err.where, err.field, err.reason) == (
        f"{path} document 2 (Service default/web)", "spec.ports[0].port", "invalid_port")


def test_list_item_error_names_the_item(tmp_path: Path) -> None:
    path = _yaml(tmp_path / "x.yaml", list_obj(svc_obj("a"), svc_obj("b", cluster_ip="x")))
    err = _error(path)
    assert (err.where, err.field) == (
        f"{path} document 1, items[1] (Service default/b)", "spec.clusterIP")


def test_bad_yaml_names_document_and_line(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(svc_obj()) + "---\nkind: Service\nmetadata: [\n")
    err = _error(str(path))
    assert err.where == f"{path} document 2"
    assert err.field.startswith("line ")
    assert err.reason == "bad_yaml"


def test_bad_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"kind": "Service",\n  "metadata": }')
    err = _error(str(path))
    assert (err.where, err.field, err.reason) == (f"{path} document 1", "line 2, column 15",
                                                  "bad_json")


@pytest.mark.parametrize(
    ("doc", "field", "reason"),
    [
        pytest.param(["a", "list"], "(document)", "not_an_object", id="document-is-a-list"),
        pytest.param("text", "(document)", "not_an_object", id="document-is-a-string"),
        pytest.param({"kind": "List", "items": {"a": 1}}, "items", "not_a_list",
                     id="list-items-not-a-list"),
    ],
)
def test_document_that_is_not_an_object(tmp_path: Path, doc: Any, field: str, reason: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(svc_obj()) + "---\n" + yaml.safe_dump(doc))
    err = _error(str(path))
    assert (err.where, err.field, err.reason) == (f"{path} document 2", field, reason)


def test_list_item_that_is_not_an_object(tmp_path: Path) -> None:
    path = _yaml(tmp_path / "x.yaml", {"apiVersion": "v1", "kind": "List", "items": [3]})
    assert _error(path).where == f"{path} document 1, items[0]"


def test_object_without_kind(tmp_path: Path) -> None:
    obj = svc_obj()
    del obj["kind"]
    path = _yaml(tmp_path / "x.yaml", obj)
    err = _error(path)
    assert (err.where, err.field) == (f"{path} document 1 (object web)", "kind")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(b"kind: \xff\n")
    assert _error(str(path)).reason == "bad_encoding"


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.yaml: cannot read"):
        _load(str(tmp_path / "nope.yaml"))


def test_an_error_leaves_the_state_untouched(tmp_path: Path) -> None:
    good = _yaml(tmp_path / "a.yaml", svc_obj("a"))
    bad = _yaml(tmp_path / "b.yaml", svc_obj("b", cluster_ip="x"))
    state = ClusterState()
    with pytest.raises(InputError):
        load([good, bad], state)
    assert state.snapshot().services == {}
    assert state.pending() == (0, 0)


def test_read_objects_yields_raw_objects_with_locations(tmp_path: Path) -> None:
    path = _yaml(tmp_path / "x.yaml", CONFIGMAP, list_obj(svc_obj("a")))
    (tmp_path / "empty").mkdir()
    notes: list[str] = []
    got = list(read_objects([path, str(tmp_path / "empty")], notes))
    assert got == [
        (f"{path} document 1", CONFIGMAP),
        (f"{path} document 2, items[0]", svc_obj("a")),
    ]
    assert notes == [f"{tmp_path / 'empty'}: no *.yaml, *.yml or *.json files"]
