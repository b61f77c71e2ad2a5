"""A Node being deleted (kube-proxy's ``nodeEligible`` false): translation. The health side
is in tests/test_health.py and tests/test_daemon.py."""

from __future__ import annotations

from typing import Any

import pytest

from proxyd.errors import InputError
from proxyd.sources.translate import node, translate_object
from tests.builders import node_obj

TAINT = "ToBeDeletedByClusterAutoscaler"


def with_(
    obj: dict[str, Any],
    *,
    metadata: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out = {**obj, "metadata": {**obj["metadata"], **(metadata or {})}}
    return {**out, "spec": spec} if spec is not None else out


@pytest.mark.parametrize(
    ("obj", "want"),
    [
        pytest.param(node_obj("n1"), False, id="plain-node"),
        pytest.param(
            with_(node_obj("n1"), metadata={"deletionTimestamp": "2024-05-01T10:00:00Z"}),
            True,
            id="deletion-timestamp",
        ),
        pytest.param(
            with_(node_obj("n1"), metadata={"deletionTimestamp": None}),
            False,
            id="null-deletion-timestamp",
        ),
        pytest.param(
            with_(
                node_obj("n1"),
                spec={
                    "taints": [
                        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                        {"key": TAINT, "value": "1714557600", "effect": "NoSchedule"},
                    ]
                },
            ),
            True,
            id="autoscaler-taint",
        ),
        pytest.param(
            with_(
                node_obj("n1"),
                spec={
                    "taints": [
                        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                    ]
                },
            ),
            False,
            id="cordoned-is-still-eligible",
        ),
        pytest.param(
            with_(node_obj("n1"), spec={"taints": None, "podCIDR": "10.244.1.0/24"}),
            False,
            id="null-taints",
        ),
    ],
)
def test_being_deleted(obj: dict[str, Any], want: bool) -> None:
    assert node(obj).being_deleted is want
    assert translate_object(obj) == node(obj)


def test_translation_never_mutates_the_node() -> None:
    obj = with_(node_obj("n1"), spec={"taints": [{"key": TAINT, "effect": "NoSchedule"}]})
    before = repr(obj)
    node(obj)
    assert repr(obj) == before


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        pytest.param(
            with_(node_obj("n1"), metadata={"deletionTimestamp": 5}),
            "metadata.deletionTimestamp",
            id="timestamp-not-a-string",
        ),
        pytest.param(
            with_(node_obj("n1"), spec={"taints": {"key": TAINT}}),
            "spec.taints",
            id="taints-not-a-list",
        ),
        pytest.param(
            with_(node_obj("n1"), spec={"taints": ["x"]}),
            "spec.taints[0]",
            id="taint-not-an-object",
        ),
        pytest.param(
            with_(node_obj("n1"), spec={"taints": [{"key": 1}]}),
            "spec.taints[0].key",
            id="taint-key-not-a-string",
        ),
    ],
)
def test_malformed_deletion_fields_are_rejected(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as err:
        node(obj)
    assert (err.value.where, err.value.field) == ("Node n1", field)
