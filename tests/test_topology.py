"""Table tests for proxyd.topology: one table per rule of DESIGN §2, cases named after
the behaviour they pin. Endpoints are named by letter; sets are compared, not lists.

The standard cluster: this node n1 (pool p1, zone z1), n2 (p1, z2), n3 (p2, z1),
n4 (p2, z2); endpoint a runs on n1, b on n2, c on n3, d on n4.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from proxyd.model import (
    ClusterSnapshot,
    Endpoint,
    NodeInfo,
    NodePool,
    PortSpec,
    Protocol,
    Service,
    ServiceRef,
    TrafficPolicy,
)
from proxyd.topology import NodeView, Selection, node_view, select

POOL = "apps.openyurt.io/nodepool"
DESIRED = "apps.openyurt.io/desired-nodepool"
ZONE = "topology.kubernetes.io/zone"
BETA_ZONE = "failure-domain.beta.kubernetes.io/zone"
REGION = "topology.kubernetes.io/region"
HOST = "kubernetes.io/hostname"
LOCAL = TrafficPolicy.LOCAL

STD_NODES: dict[str, dict[str, str]] = {
    "n1": {POOL: "p1", ZONE: "z1"},
    "n2": {POOL: "p1", ZONE: "z2"},
    "n3": {POOL: "p2", ZONE: "z1"},
    "n4": {POOL: "p2", ZONE: "z2"},
}
_HOME = {"a": "n1", "b": "n2", "c": "n3", "d": "n4"}
_AUTO = "auto"


def ep(
    name: str,
    node: str | None = _AUTO,
    *,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
    zone: str | None = _AUTO,
    zones: Iterable[str] | None = None,
    nodes: Iterable[str] | None = None,
    topo: Mapping[str, str] | None = None,
) -> Endpoint:
    """An endpoint named by letter; its node and zone default to the standard cluster."""
    node_name = _HOME.get(name) if node == _AUTO else node
    if zone == _AUTO:
        zone = STD_NODES.get(node_name or "", {}).get(ZONE)
    return Endpoint(
        ip=name,
        port=8080,
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=terminating,
        node_name=node_name,
        zone=zone,
        hints_zones=frozenset(zones) if zones is not None else None,
        hints_nodes=frozenset(nodes) if nodes is not None else None,
        topology=tuple(sorted((topo or {}).items())),
    )


def svc(**fields: Any) -> Service:
    return Service(
        ref=ServiceRef("default", "web"),
        cluster_ips=("10.96.0.10",),
        ports=(PortSpec("http", Protocol.TCP, 80),),
        **fields,
    )


def view(
    nodes: Mapping[str, Mapping[str, str]] = STD_NODES,
    pools: Mapping[str, Iterable[str]] | None = None,
    name: str = "n1",
) -> NodeView:
    snapshot = ClusterSnapshot(
        services={},
        slices={},
        nodes={n: NodeInfo(n, tuple(sorted(labels.items()))) for n, labels in nodes.items()},
        pools={p: NodePool(p, frozenset(m)) for p, m in (pools or {}).items()},
    )
    return node_view(snapshot, name)


def names(eps: Iterable[Endpoint]) -> set[str]:
    return {e.ip for e in eps}


ALL = (ep("a"), ep("b"), ep("c"), ep("d"))
ALL_NAMES = {"a", "b", "c", "d"}


@dataclass(frozen=True)
class Case:
    """One row: the service, its endpoints, the node; what must come out."""

    service: Service
    eps: Sequence[Endpoint]
    internal: set[str]
    external: set[str] | None = None  # None: same as internal
    mode: str = "none"
    warn: str | None = None  # a substring one warning must contain; None: no warnings
    node: NodeView = field(default_factory=view)
    cluster: set[str] | None = None  # the short-circuit set; None: the plan has none
    node_port: int | None = None


def check(case: Case) -> Selection:
    sel = select(case.service, case.eps, case.node, node_port=case.node_port)
    assert names(sel.internal) == case.internal
    assert names(sel.external) == (case.internal if case.external is None else case.external)
    assert (None if sel.cluster is None else names(sel.cluster)) == case.cluster
    assert sel.mode == case.mode
    if case.warn is None:
        assert sel.warnings == ()
    else:
        assert any(case.warn in w for w in sel.warnings), sel.warnings
    return sel


def yurt(value: str, **fields: Any) -> Service:
    return svc(openyurt_scopes=tuple(value.split(",")), **fields)


OPENYURT = [
    pytest.param(
        Case(yurt(HOST), ALL, {"a"}, mode="openyurt:hostname"), id="hostname-keeps-this-node"
    ),
    pytest.param(
        Case(yurt("openyurt.io/nodepool"), ALL, {"a", "b"}, mode="openyurt:nodepool"),
        id="nodepool-keeps-same-pool",
    ),
    pytest.param(
        Case(yurt("kubernetes.io/zone"), ALL, {"a", "b"}, mode="openyurt:zone"),
        id="zone-scope-means-pool",
    ),
    pytest.param(Case(yurt("*"), ALL, {"a", "b", "c", "d"}, mode="openyurt:*"), id="star-all"),
    pytest.param(
        Case(yurt("openyurt.io/nodepool"), [ep("c"), ep("d")], set(), mode="openyurt:nodepool"),
        id="nodepool-empty-rejects-never-leaves-pool",
    ),
    pytest.param(
        Case(
            yurt("openyurt.io/nodepool"),
            [ep("a"), ep("x", None), ep("c")],
            {"a"},
            mode="openyurt:nodepool",
        ),
        id="endpoint-without-nodename-dropped",
    ),
    pytest.param(
        Case(
            yurt("kubernetes.io/hostname,openyurt.io/nodepool"),
            ALL,
            {"a"},
            mode="openyurt:hostname",
        ),
        id="chain-first-scope-with-endpoints-wins",
    ),
    pytest.param(
        Case(
            yurt("kubernetes.io/hostname,openyurt.io/nodepool"),
            [ep("b"), ep("c")],
            {"b"},
            mode="openyurt:nodepool",
        ),
        id="chain-falls-to-pool",
    ),
    pytest.param(
        Case(
            yurt("kubernetes.io/hostname,openyurt.io/nodepool,*"),
            [ep("c"), ep("d")],
            {"c", "d"},
            mode="openyurt:*",
        ),
        id="chain-falls-to-star",
    ),
    pytest.param(
        Case(
            yurt("kubernetes.io/hostname,openyurt.io/nodepool"),
            [ep("c"), ep("d")],
            set(),
            mode="openyurt:nodepool",
        ),
        id="chain-exhausted-is-empty",
    ),
    pytest.param(
        Case(
            yurt("kubernetes.io/hostname,openyurt.io/nodepool"),
            [ep("a", ready=False, serving=True, terminating=True), ep("b")],
            {"b"},
            mode="openyurt:nodepool",
        ),
        id="chain-ready-in-pool-beats-terminating-on-node",
    ),
    pytest.param(
        Case(
            yurt("kubernetes.io/hostname,openyurt.io/nodepool"),
            [ep("a", ready=False, serving=True, terminating=True), ep("b", ready=False)],
            {"a"},
            mode="openyurt:hostname",
        ),
        id="chain-terminating-fallback-when-nothing-ready",
    ),
    pytest.param(
        Case(yurt("openyurt.io/bogus"), ALL, {"a", "b", "c", "d"}, warn="not one of"),
        id="unknown-value-no-filtering-warns",
    ),
    pytest.param(
        Case(yurt("kubernetes.io/hostname,bogus"), ALL, {"a", "b", "c", "d"}, warn="'bogus'"),
        id="unknown-value-in-chain-no-filtering-warns",
    ),
]


@pytest.mark.parametrize("case", OPENYURT)
def test_openyurt_scope(case: Case) -> None:
    check(case)


def pooled(
    internal: set[str],
    node: NodeView | None = None,
    *,
    eps: Sequence[Endpoint] = ALL,
    mode: str = "openyurt:nodepool",
    warn: str | None = None,
) -> Case:
    """The nodepool scope over ``eps`` seen from ``node`` (default: the standard cluster):
    only pool membership differs from row to row."""
    node = view() if node is None else node
    return Case(yurt("openyurt.io/nodepool"), eps, internal, mode=mode, warn=warn, node=node)


POOLS = [
    pytest.param(
        pooled({"a", "b"}, view({"n1": {DESIRED: "p1"}, "n2": {POOL: "p1"}, "n3": {POOL: "p2"}})),
        id="this-node-pool-from-desired-label",
    ),
    pytest.param(
        pooled(
            {"a", "c"},
            view({"n1": {POOL: "p2", DESIRED: "p1"}, "n2": {POOL: "p1"}, "n3": {POOL: "p2"}}),
        ),
        id="nodepool-label-beats-desired",
    ),
    pytest.param(
        pooled(
            {"a", "b", "d"},
            view({"n1": {DESIRED: "p1"}, "n2": {DESIRED: "p1"}, "n4": {DESIRED: "p1"}}),
        ),
        id="other-nodes-pool-from-desired-label",
    ),
    pytest.param(
        pooled({"a", "c"}, view(pools={"p1": {"n1", "n3"}, "p2": {"n2", "n4"}})),
        id="nodepool-object-beats-labels",
    ),
    pytest.param(
        pooled({"a", "d"}, view(pools={"p1": {"n4"}})),
        id="this-node-member-of-own-pool-even-if-status-lags",
    ),
    pytest.param(
        pooled({"a", "b"}, view(pools={"p9": {"n3"}})),
        id="no-object-for-this-pool-uses-labels",
    ),
    pytest.param(
        pooled(
            {"a"},
            view({"n1": {}, "n2": {POOL: "p1"}}),
            mode="openyurt:hostname",
            warn="in no node pool",
        ),
        id="node-in-no-pool-narrows-to-node",
    ),
    pytest.param(
        Case(
            yurt("kubernetes.io/hostname,openyurt.io/nodepool"),
            [ep("b")],
            set(),
            mode="openyurt:hostname",
            warn="in no node pool",
            node=view({"n1": {}, "n2": {POOL: "p1"}}),
        ),
        id="node-in-no-pool-chain-never-widens",
    ),
    pytest.param(
        pooled(
            {"a", "b", "c", "d"},
            view({"n1": {POOL: "p1"}, "n2": {}, "n3": {}}),
            mode="none",
            warn="unknown",
        ),
        id="pool-membership-unknown-passes-through",
    ),
    pytest.param(
        pooled({"a"}, view({"n1": {POOL: "p9"}, "n2": {POOL: "p1"}})),
        id="single-node-pool-is-known-not-unknown",
    ),
    pytest.param(
        pooled({"a"}, eps=[ep("a"), ep("x", "n9")]),
        id="endpoint-on-unknown-node-is-outside-pool",
    ),
]


@pytest.mark.parametrize("case", POOLS)
def test_pool_membership(case: Case) -> None:
    check(case)


def keys(*k: str, **fields: Any) -> Service:
    return svc(topology_keys=k, **fields)


NODES_WITH_REGION = {n: {**labels, REGION: "r1"} for n, labels in STD_NODES.items()}

TOPOLOGY_KEYS = [
    pytest.param(Case(keys(HOST), ALL, {"a"}, mode=f"topologyKeys:{HOST}"), id="hostname-key"),
    pytest.param(Case(keys(ZONE), ALL, {"a", "c"}, mode=f"topologyKeys:{ZONE}"), id="zone-key"),
    pytest.param(
        Case(keys(HOST, ZONE), ALL, {"a"}, mode=f"topologyKeys:{HOST}"),
        id="first-non-empty-key-wins",
    ),
    pytest.param(
        Case(keys(HOST, ZONE), [ep("b"), ep("c")], {"c"}, mode=f"topologyKeys:{ZONE}"),
        id="falls-to-next-key",
    ),
    pytest.param(
        Case(keys(HOST, "*"), [ep("b"), ep("d")], {"b", "d"}, mode="topologyKeys:*"),
        id="star-last-falls-back-to-all",
    ),
    pytest.param(
        Case(keys(HOST, ZONE), [ep("b"), ep("d")], set(), mode=f"topologyKeys:{ZONE}"),
        id="no-key-matches-rejects",
    ),
    pytest.param(
        Case(keys(REGION, ZONE), ALL, {"a", "c"}, mode=f"topologyKeys:{ZONE}"),
        id="key-skipped-when-node-lacks-label",
    ),
    pytest.param(
        Case(keys(REGION), ALL, set(), mode="topologyKeys"),
        id="all-keys-skipped-rejects",
    ),
    pytest.param(
        Case(keys(BETA_ZONE), ALL, {"a", "c"}, mode=f"topologyKeys:{BETA_ZONE}"),
        id="beta-zone-key-aliases-ga-labels",
    ),
    pytest.param(
        Case(
            keys(ZONE),
            [ep("a", zone=None), ep("b", zone=None), ep("c", zone=None)],
            {"a"},
            mode=f"topologyKeys:{ZONE}",
            node=view({"n1": {BETA_ZONE: "z1"}, "n2": {BETA_ZONE: "z2"}, "n3": {ZONE: "z3"}}),
        ),
        id="ga-zone-key-reads-beta-node-labels",
    ),
    pytest.param(
        Case(
            keys(REGION),
            [ep("x", None, topo={REGION: "r1"}), ep("y", None, topo={REGION: "r2"})],
            {"x"},
            mode=f"topologyKeys:{REGION}",
            node=view(NODES_WITH_REGION),
        ),
        id="value-from-deprecated-topology",
    ),
    pytest.param(
        Case(
            keys(REGION),
            ALL,
            {"a", "b"},
            mode=f"topologyKeys:{REGION}",
            node=view({**NODES_WITH_REGION, "n3": {REGION: "r2"}, "n4": {REGION: "r2"}}),
        ),
        id="value-from-endpoint-node-labels",
    ),
    pytest.param(
        Case(
            keys(ZONE),
            [ep("a", zone="z9"), ep("c")],
            {"c"},
            mode=f"topologyKeys:{ZONE}",
        ),
        id="endpoint-zone-field-beats-node-labels",
    ),
    pytest.param(
        Case(
            keys(HOST),
            [ep("x", None, topo={HOST: "n1"}), ep("y", None, topo={HOST: "n2"})],
            {"x"},
            mode=f"topologyKeys:{HOST}",
        ),
        id="hostname-from-deprecated-topology-without-nodename",
    ),
    pytest.param(
        Case(
            keys(*(f"example.com/k{i}" for i in range(16)), "*"),
            ALL,
            {"a", "b", "c", "d"},
            warn="more than 16",
        ),
        id="more-than-16-keys-ignored",
    ),
    pytest.param(
        Case(keys("*", HOST), ALL, {"a", "b", "c", "d"}, warn='"*"'),
        id="star-not-last-ignored",
    ),
    pytest.param(
        Case(keys(HOST, HOST), ALL, {"a", "b", "c", "d"}, warn="duplicate"),
        id="duplicate-keys-ignored",
    ),
    pytest.param(
        Case(
            keys(HOST, external_traffic_policy=LOCAL),
            ALL,
            {"a", "b", "c", "d"},
            external={"a"},
            mode="externalTrafficPolicy:Local",
            warn="externalTrafficPolicy=Local",
        ),
        id="with-etp-local-ignored",
    ),
    pytest.param(
        Case(
            keys(HOST),
            [ep("a", zones={"z2"}), ep("b", zones={"z1"})],
            {"a"},
            mode=f"topologyKeys:{HOST}",
        ),
        id="topology-keys-switch-hints-off",
    ),
    pytest.param(
        Case(
            keys("*", HOST),
            [ep("a", zones={"z2"}), ep("b", zones={"z1"})],
            {"b"},
            mode="PreferSameZone",
            warn='"*"',
        ),
        id="ignored-topology-keys-let-hints-apply",
    ),
]


@pytest.mark.parametrize("case", TOPOLOGY_KEYS)
def test_topology_keys(case: Case) -> None:
    check(case)


HINTS = [
    pytest.param(
        Case(
            svc(),
            [ep("a", zones={"z1"}), ep("b", zones={"z2"}), ep("c", zones={"z1"})],
            {"a", "c"},
            mode="PreferSameZone",
        ),
        id="zone-hints-keep-this-zone",
    ),
    pytest.param(
        Case(
            svc(),
            [ep("a", zones={"z1"}), ep("b", zones={"z2"}), ep("c")],
            {"a", "b", "c"},
            warn="forZones missing",
        ),
        id="zone-hints-all-or-nothing",
    ),
    pytest.param(
        Case(
            svc(),
            [ep("a", zones=set()), ep("b", zones={"z1"})],
            {"a", "b"},
            warn="forZones missing",
        ),
        id="empty-hint-list-counts-as-missing",
    ),
    pytest.param(
        Case(
            svc(),
            [ep("b", zones={"z2"}), ep("d", zones={"z2"})],
            {"b", "d"},
            warn="zone z1",
        ),
        id="no-hint-for-this-zone-no-filtering",
    ),
    pytest.param(
        Case(
            svc(),
            [ep("a", zones={"z1"}), ep("b", zones={"z2"})],
            {"a", "b"},
            warn="no topology.kubernetes.io/zone label",
            node=view({"n1": {}}),
        ),
        id="node-without-zone-ignores-zone-hints",
    ),
    pytest.param(
        Case(
            svc(),
            [ep("a", zones={"z1"}), ep("b", zones={"z2"}), ep("c", ready=False)],
            {"a"},
            mode="PreferSameZone",
        ),
        id="unready-endpoints-do-not-break-all-or-nothing",
    ),
    pytest.param(
        Case(
            svc(),
            [ep("a", nodes={"n1"}), ep("b", nodes={"n2"}), ep("c", nodes={"n1"})],
            {"a", "c"},
            mode="PreferSameNode",
        ),
        id="node-hints-keep-this-node",
    ),
    pytest.param(
        Case(
            svc(),
            [ep("a", nodes={"n1"}, zones={"z2"}), ep("b", nodes={"n2"}, zones={"z1"})],
            {"a"},
            mode="PreferSameNode",
        ),
        id="node-hints-beat-zone-hints",
    ),
    pytest.param(
        Case(
            svc(),
            [ep("b", nodes={"n2"}, zones={"z1"}), ep("d", nodes={"n4"}, zones={"z2"})],
            {"b"},
            mode="PreferSameZone",
            warn="node n1",
        ),
        id="no-hint-for-this-node-falls-to-zone-hints",
    ),
    pytest.param(
        Case(
            svc(),
            [ep("a", nodes={"n1"}, zones={"z1"}), ep("b", zones={"z2"})],
            {"a"},
            mode="PreferSameZone",
            warn="forNodes missing",
        ),
        id="node-hints-all-or-nothing",
    ),
    pytest.param(
        Case(
            yurt("openyurt.io/nodepool"),
            [ep("a", zones={"z1"}), ep("b", zones={"z2"}), ep("c", zones={"z1"})],
            {"a"},
            mode="openyurt:nodepool+PreferSameZone",
        ),
        id="hints-apply-inside-openyurt-scope",
    ),
    pytest.param(
        Case(
            yurt("openyurt.io/nodepool"),
            [ep("a", zones={"z1"}), ep("b", zones={"z2"}), ep("c")],
            {"a"},
            mode="openyurt:nodepool+PreferSameZone",
        ),
        id="hints-outside-openyurt-scope-do-not-count",
    ),
]


@pytest.mark.parametrize("case", HINTS)
def test_hints(case: Case) -> None:
    check(case)


POLICIES = [
    pytest.param(
        Case(
            svc(internal_traffic_policy=LOCAL),
            ALL,
            {"a"},
            external={"a", "b", "c", "d"},
            mode="internalTrafficPolicy:Local",
        ),
        id="itp-local-internal-only-local",
    ),
    pytest.param(
        Case(
            svc(internal_traffic_policy=LOCAL),
            [ep("b"), ep("c")],
            set(),
            external={"b", "c"},
            mode="internalTrafficPolicy:Local",
        ),
        id="itp-local-without-local-endpoints-rejects",
    ),
    pytest.param(
        Case(
            svc(internal_traffic_policy=LOCAL),
            [ep("a", zones={"z2"}), ep("b", zones={"z1"})],
            {"a"},
            external={"b"},
            mode="PreferSameZone+internalTrafficPolicy:Local",
        ),
        id="itp-local-ignores-hints-external-keeps-them",
    ),
    pytest.param(
        Case(
            svc(external_traffic_policy=LOCAL),
            ALL,
            {"a", "b", "c", "d"},
            external={"a"},
            mode="externalTrafficPolicy:Local",
        ),
        id="etp-local-external-only-local",
    ),
    pytest.param(
        Case(
            svc(internal_traffic_policy=LOCAL, external_traffic_policy=LOCAL),
            ALL,
            {"a"},
            external={"a"},
            mode="internalTrafficPolicy:Local+externalTrafficPolicy:Local",
        ),
        id="both-local",
    ),
    pytest.param(
        Case(
            yurt("openyurt.io/nodepool", external_traffic_policy=LOCAL),
            ALL,
            {"a", "b"},
            external={"a"},
            mode="openyurt:nodepool+externalTrafficPolicy:Local",
        ),
        id="openyurt-scope-then-etp-local",
    ),
]


@pytest.mark.parametrize("case", POLICIES)
def test_traffic_policy(case: Case) -> None:
    check(case)


def terminating(name: str, *, serving: bool = True) -> Endpoint:
    return ep(name, ready=False, serving=serving, terminating=True)


READINESS = [
    pytest.param(Case(svc(), [ep("a"), ep("b", ready=False)], {"a"}), id="unready-dropped"),
    pytest.param(
        Case(
            svc(), [terminating("a"), terminating("b", serving=False), ep("c", ready=False)], {"a"}
        ),
        id="no-ready-falls-back-to-serving-terminating",
    ),
    pytest.param(
        Case(svc(), [terminating("a"), ep("b")], {"b"}), id="ready-beats-serving-terminating"
    ),
    pytest.param(
        Case(svc(), [ep("a", ready=False), ep("b", ready=False, serving=True)], set()),
        id="serving-but-not-terminating-is-not-fallback",
    ),
    pytest.param(
        Case(
            svc(external_traffic_policy=LOCAL),
            [terminating("a"), ep("b")],
            {"b"},
            external={"a"},
            mode="externalTrafficPolicy:Local",
        ),
        id="fallback-is-per-category",
    ),
    pytest.param(
        Case(
            svc(internal_traffic_policy=LOCAL),
            [terminating("a"), ep("b")],
            {"a"},
            external={"b"},
            mode="internalTrafficPolicy:Local",
        ),
        id="itp-local-falls-back-to-local-terminating",
    ),
    pytest.param(
        Case(
            svc(),
            [
                ep("a", zones={"z1"}, ready=False, serving=True, terminating=True),
                ep("b", zones={"z2"}),
            ],
            {"b"},
            warn="zone z1",
        ),
        id="hints-need-a-ready-endpoint-for-this-zone",
    ),
]


@pytest.mark.parametrize("case", READINESS)
def test_readiness(case: Case) -> None:
    check(case)


LB = ("192.0.2.20",)
BOTH_LOCAL = {"internal_traffic_policy": LOCAL, "external_traffic_policy": LOCAL}
BOTH_MODE = "internalTrafficPolicy:Local+externalTrafficPolicy:Local"

# kube-proxy's UsesClusterEndpoints: iTP=Cluster, or the port is reachable from outside.
# Only with both policies Local does that set differ from internal and external.
CLUSTER_SET = [
    pytest.param(
        Case(
            svc(load_balancer_ips=LB, **BOTH_LOCAL), ALL, {"a"}, cluster=ALL_NAMES, mode=BOTH_MODE
        ),
        id="both-local-lb-keeps-the-cluster-wide-set",
    ),
    pytest.param(
        Case(
            svc(**BOTH_LOCAL),
            [ep("b"), ep("c")],
            set(),
            node_port=30080,
            cluster={"b", "c"},
            mode=BOTH_MODE,
        ),
        id="both-local-nodeport-without-local-endpoint",
    ),
    pytest.param(
        Case(
            svc(external_ips=("192.0.2.30",), **BOTH_LOCAL),
            [ep("a", zones={"z2"}), ep("b", zones={"z1"})],
            {"a"},
            cluster={"b"},
            mode=f"PreferSameZone+{BOTH_MODE}",
        ),
        id="both-local-cluster-set-follows-hints",
    ),
    pytest.param(
        Case(
            yurt("openyurt.io/nodepool", load_balancer_ips=LB, **BOTH_LOCAL),
            ALL,
            {"a"},
            cluster={"a", "b"},
            mode=f"openyurt:nodepool+{BOTH_MODE}",
        ),
        id="both-local-cluster-set-stays-in-the-openyurt-scope",
    ),
    pytest.param(
        Case(
            svc(load_balancer_ips=LB, **BOTH_LOCAL),
            [terminating("b"), ep("c", ready=False), terminating("d", serving=False)],
            set(),
            cluster={"b"},
            mode=BOTH_MODE,
        ),
        id="both-local-cluster-set-falls-back-to-serving-terminating",
    ),
    pytest.param(
        Case(
            keys(HOST, load_balancer_ips=LB, **BOTH_LOCAL),
            ALL,
            {"a"},
            cluster=ALL_NAMES,
            mode=BOTH_MODE,
            warn="cannot be combined",
        ),
        id="both-local-topology-keys-ignored-for-the-cluster-set-too",
    ),
    pytest.param(
        Case(svc(**BOTH_LOCAL), ALL, {"a"}, mode=BOTH_MODE),
        id="both-local-cluster-ip-only-has-no-cluster-set",
    ),
    pytest.param(
        Case(
            svc(internal_traffic_policy=LOCAL),
            ALL,
            {"a"},
            external=ALL_NAMES,
            mode="internalTrafficPolicy:Local",
        ),
        id="itp-local-cluster-ip-only-has-no-cluster-set",
    ),
    pytest.param(
        Case(
            svc(internal_traffic_policy=LOCAL),
            ALL,
            {"a"},
            external=ALL_NAMES,
            node_port=30080,
            mode="internalTrafficPolicy:Local",
        ),
        id="itp-local-etp-cluster-nodeport-external-is-the-cluster-set",
    ),
    pytest.param(
        Case(
            svc(external_traffic_policy=LOCAL, load_balancer_ips=LB),
            ALL,
            ALL_NAMES,
            external={"a"},
            mode="externalTrafficPolicy:Local",
        ),
        id="etp-local-itp-cluster-internal-is-the-cluster-set",
    ),
]


@pytest.mark.parametrize("case", CLUSTER_SET)
def test_cluster_set_for_the_short_circuit(case: Case) -> None:
    check(case)


def test_cluster_set_reason_says_who_uses_it() -> None:
    sel = select(svc(**BOTH_LOCAL), [ep("b")], view(), node_port=30080)
    assert sel.reason.endswith(
        "from this node's pods and the node itself to external addresses: ready endpoints"
    )


def test_local_endpoints_counts_ready_local_only() -> None:
    eps = [ep("a"), ep("a2", "n1"), ep("a3", "n1", ready=False, terminating=True), ep("b")]
    sel = select(svc(external_traffic_policy=LOCAL), eps, view())
    assert sel.local_endpoints == 2


def test_reason_names_rule_and_rejection() -> None:
    sel = select(yurt("openyurt.io/nodepool"), [ep("c")], view())
    assert "node pool p1" in sel.reason
    assert "rejected" in sel.reason


def test_reason_splits_categories_when_they_differ() -> None:
    sel = select(svc(external_traffic_policy=LOCAL), [ep("b")], view())
    assert sel.reason.startswith("internal: ready endpoints; external: no usable endpoint")
    assert "dropped" in sel.reason


def test_node_unknown_to_snapshot_is_in_no_pool() -> None:
    sel = select(yurt("openyurt.io/nodepool"), ALL, view(name="ghost"))
    assert names(sel.internal) == set()
    assert sel.mode == "openyurt:hostname"


def test_inputs_are_not_reordered_or_mutated() -> None:
    eps = (ep("d"), ep("c"), ep("b"), ep("a"))
    sel = select(svc(), eps, view())
    assert sel.internal == eps
