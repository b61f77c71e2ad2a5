"""``proxyd explain``: every mode of DESIGN §2 explained per endpoint, consistent with
the selection, and the command end to end on manifests."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from proxyd.cli import main
from proxyd.commands.explain import explain_service
from proxyd.errors import SourceError
from proxyd.model import (
    ClusterSnapshot,
    Endpoint,
    EndpointPort,
    PortSpec,
    Protocol,
    Service,
    ServiceRef,
    ServiceType,
)
from proxyd.topology import NodeView, explain, select
from tests import builders
from tests.test_topology import (
    ALL,
    HOST,
    LOCAL,
    REGION,
    ZONE,
    ep,
    keys,
    svc,
    view,
    yurt,
)

NO_POOL = view({"n1": {ZONE: "z1"}, "n2": {"apps.openyurt.io/nodepool": "p1"}})
POOL_UNKNOWN = view({"n1": {"apps.openyurt.io/nodepool": "p1"}, "n2": {}})
TERMINATING = ep("a", ready=False, serving=True, terminating=True)

# (service, endpoints, node, mode, {endpoint: (in internal, in external, words in why)})
MODES = [
    pytest.param(
        svc(),
        [ep("a"), ep("b", ready=False)],
        view(),
        "none",
        {"a": (True, True, "ready"), "b": (False, False, "not ready")},
        id="none",
    ),
    pytest.param(
        yurt(HOST),
        ALL,
        view(),
        "openyurt:hostname",
        {"a": (True, True, "on node n1"), "b": (False, False, "on node n2")},
        id="openyurt-hostname",
    ),
    pytest.param(
        yurt("openyurt.io/nodepool"),
        ALL,
        view(),
        "openyurt:nodepool",
        {"b": (True, True, "is in node pool p1"), "c": (False, False, "not in node pool p1")},
        id="openyurt-nodepool",
    ),
    pytest.param(
        yurt("kubernetes.io/zone"),
        ALL,
        view(),
        "openyurt:zone",
        {"d": (False, False, "not in node pool p1")},
        id="openyurt-zone",
    ),
    pytest.param(
        yurt("kubernetes.io/hostname,*"),
        [ep("c")],
        view(),
        "openyurt:*",
        {"c": (True, True, "any endpoint")},
        id="openyurt-chain-star",
    ),
    pytest.param(
        yurt("openyurt.io/nodepool"),
        ALL,
        NO_POOL,
        "openyurt:hostname",
        {"a": (True, True, "on node n1"), "b": (False, False, "in no node pool")},
        id="openyurt-node-in-no-pool",
    ),
    pytest.param(
        yurt("openyurt.io/nodepool"),
        ALL,
        POOL_UNKNOWN,
        "none",
        {"d": (True, True, "unknown")},
        id="openyurt-pool-unknown",
    ),
    pytest.param(
        yurt("bogus"), ALL, view(), "none", {"d": (True, True, "ready")}, id="openyurt-invalid"
    ),
    pytest.param(
        keys(HOST, ZONE),
        [ep("b"), ep("c")],
        view(),
        f"topologyKeys:{ZONE}",
        {"c": (True, True, f"{ZONE}=z1"), "b": (False, False, f"has {ZONE}=z2")},
        id="topology-keys",
    ),
    pytest.param(
        keys(HOST, "*"),
        [ep("b")],
        view(),
        "topologyKeys:*",
        {"b": (True, True, "any endpoint")},
        id="topology-keys-star",
    ),
    pytest.param(
        keys(REGION),
        [ep("a")],
        view(),
        "topologyKeys",
        {"a": (False, False, "none of the topologyKeys labels")},
        id="topology-keys-none-applicable",
    ),
    pytest.param(
        keys("*", HOST),
        [ep("b")],
        view(),
        "none",
        {"b": (True, True, "ready")},
        id="topology-keys-invalid",
    ),
    pytest.param(
        keys(HOST, external_traffic_policy=LOCAL),
        [ep("a"), ep("b")],
        view(),
        "externalTrafficPolicy:Local",
        {"b": (True, False, "on node n2")},
        id="topology-keys-with-etp-local",
    ),
    pytest.param(
        svc(),
        [ep("a", nodes={"n1"}), ep("b", nodes={"n2"})],
        view(),
        "PreferSameNode",
        {"a": (True, True, "hinted for nodes n1"), "b": (False, False, "hinted for nodes n2")},
        id="prefer-same-node",
    ),
    pytest.param(
        svc(),
        [ep("a", zones={"z1"}), ep("b", zones={"z2"})],
        view(),
        "PreferSameZone",
        {"a": (True, True, "hinted for zones z1"), "b": (False, False, "hinted for zones z2")},
        id="prefer-same-zone",
    ),
    pytest.param(
        svc(internal_traffic_policy=LOCAL),
        [ep("a"), ep("b")],
        view(),
        "internalTrafficPolicy:Local",
        {"a": (True, True, "on node n1"), "b": (False, True, "on node n2")},
        id="itp-local",
    ),
    pytest.param(
        svc(external_traffic_policy=LOCAL),
        [ep("a"), ep("b")],
        view(),
        "externalTrafficPolicy:Local",
        {"a": (True, True, "on node n1"), "b": (True, False, "on node n2")},
        id="etp-local",
    ),
    pytest.param(
        svc(),
        [TERMINATING, ep("b", ready=False)],
        view(),
        "none",
        {"a": (True, True, "serving and terminating"), "b": (False, False, "not ready")},
        id="serving-terminating-fallback",
    ),
]


@pytest.mark.parametrize(("service", "eps", "node", "mode", "want"), MODES)
def test_explain_every_mode(
    service: Service,
    eps: list[Endpoint],
    node: NodeView,
    mode: str,
    want: dict[str, tuple[bool, bool, str]],
) -> None:
    result = explain(service, eps, node)
    assert result.selection == select(service, eps, node)
    assert result.selection.mode == mode
    verdicts = {v.endpoint.ip: v for v in result.verdicts}
    assert set(verdicts) == {e.ip for e in eps}
    for v in result.verdicts:  # the words never contradict the sets
        assert v.internal == (v.endpoint in result.selection.internal)
        assert v.external == (v.endpoint in result.selection.external)
        assert v.internal_why.startswith("yes" if v.internal else "no")
        assert v.external_why.startswith("yes" if v.external else "no")
    for name, (internal, external, words) in want.items():
        v = verdicts[name]
        assert (v.internal, v.external) == (internal, external)
        assert words in f"{v.internal_why} | {v.external_why}"


# --- the command ------------------------------------------------------------------

REF = ServiceRef("default", "web")


def _snapshot(service: Service) -> ClusterSnapshot:
    ports = (EndpointPort("http", Protocol.TCP, 8080), EndpointPort("dns", Protocol.UDP, 53))
    endpoints = [builders.sep("10.244.1.2", node_name="n1"), builders.sep("10.244.2.2")]
    return builders.snapshot(service, builders.eps("web", endpoints, name="web-1", ports=ports))


WEB = Service(
    ref=REF,
    cluster_ips=("10.96.0.10",),
    ports=(PortSpec("http", Protocol.TCP, 80), PortSpec("dns", Protocol.UDP, 53)),
    internal_traffic_policy=LOCAL,
)


def test_explain_service_covers_every_port() -> None:
    text = explain_service(_snapshot(WEB), REF, "n1")
    assert "port http/TCP 80: mode internalTrafficPolicy:Local" in text
    assert "port dns/UDP 53: mode internalTrafficPolicy:Local" in text
    assert "10.244.2.2:8080 (no node)" in text
    assert "internal: no: has no nodeName" in text


def test_explain_service_shows_the_short_circuit_set_of_a_both_local_port() -> None:
    """Both policies Local on a NodePort: pods and the node still reach the remote endpoint
    through the port's external addresses; a ClusterIP-only port has no such line."""
    nodeport = PortSpec("http", Protocol.TCP, 80, node_port=30080)
    both = replace(WEB, ports=(nodeport, WEB.ports[1]), external_traffic_policy=LOCAL)
    text = explain_service(_snapshot(both), REF, "n1")
    dns, http = text.split("\nport http/TCP")  # ports in name order
    assert "10.244.2.2:8080 (no node)\n    internal: no: has no nodeName" in http
    assert "    short-circuit: yes: ready" in http
    assert "to external addresses: ready endpoints" in http
    assert "short-circuit" not in dns


def test_explain_service_one_port() -> None:
    text = explain_service(_snapshot(WEB), REF, "n1", port="dns")
    assert "dns/UDP" in text
    assert "http/TCP" not in text


@pytest.mark.parametrize(
    ("service", "words"),
    [
        pytest.param(Service(ref=REF, headless=True, ports=WEB.ports), "headless", id="headless"),
        pytest.param(
            Service(ref=REF, type=ServiceType.EXTERNAL_NAME), "ExternalName", id="external-name"
        ),
        pytest.param(
            Service(ref=REF, cluster_ips=("10.96.0.1",), proxy_name="kube-proxy"),
            "another proxy",
            id="other-proxy",
        ),
    ],
)
def test_explain_says_why_a_service_gets_nothing(service: Service, words: str) -> None:
    assert words in explain_service(_snapshot(service), REF, "n1")


@pytest.mark.parametrize(
    ("ref", "port", "words"),
    [
        pytest.param(ServiceRef("default", "nope"), None, "not found", id="unknown-service"),
        pytest.param(REF, "grpc", "no port named 'grpc'", id="unknown-port"),
    ],
)
def test_explain_service_errors(ref: ServiceRef, port: str | None, words: str) -> None:
    with pytest.raises(SourceError, match=words):
        explain_service(_snapshot(WEB), ref, "n1", port=port)


MANIFESTS = textwrap.dedent(
    """
    apiVersion: v1
    kind: Node
    metadata:
      name: edge-1
      labels: {apps.openyurt.io/nodepool: hangzhou}
    ---
    apiVersion: v1
    kind: Node
    metadata:
      name: cloud-1
      labels: {apps.openyurt.io/nodepool: beijing}
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: web
      namespace: default
      annotations: {openyurt.io/topologyKeys: openyurt.io/nodepool}
    spec:
      clusterIP: 10.96.0.10
      ports: [{name: http, port: 80, protocol: TCP}]
    ---
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata:
      name: web-abc
      namespace: default
      labels: {kubernetes.io/service-name: web}
    addressType: IPv4
    ports: [{name: http, port: 8080, protocol: TCP}]
    endpoints:
      - {addresses: [10.244.1.2], nodeName: edge-1}
      - {addresses: [10.244.9.2], nodeName: cloud-1}
    """
)


def test_explain_command_on_manifests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(MANIFESTS)
    code = main(["explain", "default/web", "--node", "edge-1", "--manifests", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "mode openyurt:nodepool" in out
    assert "node cloud-1 is not in node pool hangzhou" in out
    assert "10.244.1.2:8080 (node edge-1)\n    internal: yes" in out


def test_explain_command_rejects_bad_service_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["explain", "default-web", "--node", "n1", "--manifests", "x.yaml"])
    assert exc.value.code == 2
    assert "NAMESPACE/NAME" in capsys.readouterr().err


def test_explain_command_missing_service_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(MANIFESTS)
    code = main(["explain", "default/nope", "--node", "edge-1", "--manifests", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == ["proxyd explain: Service default/nope not found"]
