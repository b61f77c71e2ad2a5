"""Which endpoints this node may send a service port's traffic to, and why (DESIGN §2).

Pure: no I/O, no clock, no logging. The decision happens in two steps, as kube-proxy's
``CategorizeEndpoints`` does: first :func:`_decide` picks the rules that apply (OpenYurt
scope, then ``spec.topologyKeys`` or hints, then the traffic policies) as a list of
:class:`_Stage` per category; then :func:`_apply` filters by those stages and applies the
ready → serving+terminating fallback once per category. :func:`select` returns the sets;
:func:`explain` walks the *same* stages for each endpoint to say why it is in or out.
How the rules combine is written down in ``docs/topology.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from proxyd.model import ClusterSnapshot, Endpoint, NodeInfo, NodePool, Service, TrafficPolicy

__all__ = [
    "HOSTNAME",
    "MAX_TOPOLOGY_KEYS",
    "NODEPOOL_LABEL",
    "NODEPOOL_LABEL_DESIRED",
    "OPENYURT_SCOPES",
    "REGION",
    "ZONE",
    "Explanation",
    "NodeView",
    "Selection",
    "Verdict",
    "explain",
    "node_view",
    "select",
]

HOSTNAME = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"
REGION = "topology.kubernetes.io/region"
_ALIASES: Mapping[str, tuple[str, ...]] = {
    ZONE: (ZONE, "failure-domain.beta.kubernetes.io/zone"),
    "failure-domain.beta.kubernetes.io/zone": (ZONE, "failure-domain.beta.kubernetes.io/zone"),
    REGION: (REGION, "failure-domain.beta.kubernetes.io/region"),
    "failure-domain.beta.kubernetes.io/region": (
        REGION,
        "failure-domain.beta.kubernetes.io/region",
    ),
}
MAX_TOPOLOGY_KEYS = 16
NODEPOOL_LABEL = "apps.openyurt.io/nodepool"
NODEPOOL_LABEL_DESIRED = "apps.openyurt.io/desired-nodepool"

_YURT_HOSTNAME = "kubernetes.io/hostname"
_YURT_POOL = "openyurt.io/nodepool"
_YURT_ZONE = "kubernetes.io/zone"
_ANY = "*"
#: Accepted ``openyurt.io/topologyKeys`` values and the short name used in modes.
OPENYURT_SCOPES: Mapping[str, str] = {
    _YURT_HOSTNAME: "hostname",
    _YURT_POOL: "nodepool",
    _YURT_ZONE: "zone",
    _ANY: "*",
}


@dataclass(frozen=True, slots=True)
class NodeView:
    """What topology needs to know about this node, computed once per plan.

    ``pool`` is this node's OpenYurt pool (``None``: in no pool). ``pool_members`` are the
    nodes known to share it, this node included; ``None`` when membership cannot be known.
    ``nodes`` gives other nodes' labels (an endpoint's topology values fall back to them).
    """

    name: str
    labels: Mapping[str, str]
    pool: str | None = None
    pool_members: frozenset[str] | None = None
    nodes: Mapping[str, NodeInfo] = field(default_factory=dict)

    def label(self, *spellings: str) -> str | None:
        for key in spellings:
            value = self.labels.get(key)
            if value is not None:
                return value
        return None


def _pool_of(labels: Mapping[str, str]) -> str | None:
    return labels.get(NODEPOOL_LABEL) or labels.get(NODEPOOL_LABEL_DESIRED)


def node_view(snapshot: ClusterSnapshot, node_name: str) -> NodeView:
    """Resolve this node's labels, pool and pool members from a snapshot.

    Members come from the pool's NodePool object when there is one, else from the pool
    labels of the other nodes. Membership is unknown when there is neither a NodePool
    object nor any other node carrying a pool label (we cannot see the pool at all).
    """
    info = snapshot.nodes.get(node_name)
    labels = dict(info.labels) if info is not None else {}
    pool = _pool_of(labels)
    return NodeView(
        name=node_name,
        labels=labels,
        pool=pool,
        pool_members=_pool_members(pool, node_name, snapshot.nodes, snapshot.pools),
        nodes=snapshot.nodes,
    )


def _pool_members(
    pool: str | None,
    node_name: str,
    nodes: Mapping[str, NodeInfo],
    pools: Mapping[str, NodePool],
) -> frozenset[str] | None:
    if pool is None:
        return None
    if pool in pools:
        return pools[pool].nodes | {node_name}
    labelled = {
        name: _pool_of(dict(info.labels)) for name, info in nodes.items() if name != node_name
    }
    if not any(labelled.values()):
        return None
    return frozenset(name for name, p in labelled.items() if p == pool) | {node_name}


@dataclass(frozen=True, slots=True)
class Selection:
    """The endpoints this node uses for one service port.

    ``internal`` serves ClusterIP traffic from this node, ``external`` traffic arriving at
    its NodePort / externalIPs / LB IPs; empty means reject (internal) or drop (external).
    ``mode`` names the rules that filtered, joined by ``+`` (``none`` if nothing did);
    ``reason`` says the same in words; ``warnings`` are for events and metrics.
    ``local_endpoints`` counts ready endpoints on this node (healthCheckNodePort answer).
    ``cluster`` is the cluster-wide set for this node's pods and the node itself going to
    the port's external addresses (kube-proxy's short circuit); only given when neither
    ``internal`` nor ``external`` is that set: both policies Local and the port reachable
    from outside (see :class:`~proxyd.model.ServicePlan`).
    """

    internal: tuple[Endpoint, ...]
    external: tuple[Endpoint, ...]
    mode: str
    reason: str = ""
    warnings: tuple[str, ...] = ()
    local_endpoints: int = 0
    cluster: tuple[Endpoint, ...] | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """One endpoint's fate for this node, in words (what ``proxyd explain`` prints).
    ``cluster_why`` is ``None`` when the port has no separate cluster-wide set."""

    endpoint: Endpoint
    internal: bool
    external: bool
    internal_why: str
    external_why: str
    cluster: bool = False
    cluster_why: str | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    """A selection with one verdict per endpoint, in the endpoints' order."""

    selection: Selection
    verdicts: tuple[Verdict, ...]


# --- decision ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class _Stage:
    """One filtering rule. ``keep`` decides; ``fact`` gives the endpoint's relevant
    property in words; ``summary`` says what the rule keeps. An empty ``mode`` marks a
    rule that filters nothing but still explains itself (a scope that could not be
    applied). ``warning`` is reported only when the stage is actually chosen."""

    mode: str
    summary: str
    keep: Callable[[Endpoint], bool]
    fact: Callable[[Endpoint], str]
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class _Decision:
    internal: tuple[_Stage, ...]
    external: tuple[_Stage, ...]
    cluster: tuple[_Stage, ...] | None  # None: internal or external is the cluster set
    order: tuple[_Stage, ...]
    warnings: tuple[str, ...]


def _keep_all(_: Endpoint) -> bool:
    return True


def _keep_none(_: Endpoint) -> bool:
    return False


def _on_node(ep: Endpoint) -> str:
    return f"on node {ep.node_name}" if ep.node_name is not None else "has no nodeName"


def _node_stage(mode: str, node: NodeView, summary: str, warning: str | None = None) -> _Stage:
    name = node.name

    def keep(ep: Endpoint) -> bool:
        return ep.node_name == name

    return _Stage(mode, summary, keep, _on_node, warning)


def _pool_stage(mode: str, pool: str, members: frozenset[str]) -> _Stage:
    def keep(ep: Endpoint) -> bool:
        return ep.node_name in members

    def fact(ep: Endpoint) -> str:
        if ep.node_name is None:
            return "has no nodeName"
        return f"node {ep.node_name} is {'in' if keep(ep) else 'not in'} node pool {pool}"

    return _Stage(mode, f"on nodes of node pool {pool}", keep, fact)


def _first_with_endpoints(eps: Sequence[Endpoint], stages: Sequence[_Stage]) -> _Stage:
    """The first stage keeping a ready endpoint, else the first keeping a serving and
    terminating one, else the last (whose set is then empty: traffic is rejected)."""
    for usable in (_ready, _fallback):
        for stage in stages:
            if any(usable(ep) and stage.keep(ep) for ep in eps):
                return stage
    return stages[-1]


def _ready(ep: Endpoint) -> bool:
    return ep.ready


def _fallback(ep: Endpoint) -> bool:
    return ep.serving and ep.terminating


def _openyurt(
    svc: Service, eps: Sequence[Endpoint], node: NodeView, warnings: list[str]
) -> _Stage | None:
    scopes = svc.openyurt_scopes
    if not scopes:
        return None
    unknown = [s for s in scopes if s not in OPENYURT_SCOPES]
    if unknown:
        warnings.append(
            f"openyurt.io/topologyKeys value {','.join(unknown)!r} is not one of "
            f"{', '.join(OPENYURT_SCOPES)}: not filtering by OpenYurt scope"
        )
        return None
    return _first_with_endpoints(eps, [_openyurt_scope(scope, node) for scope in scopes])


def _openyurt_scope(scope: str, node: NodeView) -> _Stage:
    if scope == _ANY:
        return _Stage("openyurt:*", "anywhere", _keep_all, lambda _: "any endpoint qualifies")
    if scope == _YURT_HOSTNAME:
        return _node_stage("openyurt:hostname", node, f"on this node ({node.name})")
    if node.pool is None:
        return _node_stage(
            "openyurt:hostname",
            node,
            f"on this node ({node.name}, which is in no node pool)",
            f"node {node.name} is in no node pool (no {NODEPOOL_LABEL} or "
            f"{NODEPOOL_LABEL_DESIRED} label): {scope} scope narrowed to this node",
        )
    if node.pool_members is None:
        return _Stage(
            "",
            f"anywhere (members of node pool {node.pool} unknown)",
            _keep_all,
            lambda _: f"membership of node pool {node.pool} is unknown",
            f"members of node pool {node.pool} are unknown (no NodePool object and no other "
            f"node with a pool label): not filtering by {scope}",
        )
    return _pool_stage(f"openyurt:{OPENYURT_SCOPES[scope]}", node.pool, node.pool_members)


def _spellings(key: str) -> tuple[str, ...]:
    return _ALIASES.get(key, (key,))


def _endpoint_value(ep: Endpoint, key: str, nodes: Mapping[str, NodeInfo]) -> str | None:
    """An endpoint's value for a topology key: its own fields (nodeName, zone) first,
    then ``deprecatedTopology``, then the labels of its node when that node is known."""
    info = nodes.get(ep.node_name) if ep.node_name is not None else None
    if key == HOSTNAME and ep.node_name is not None:
        return (info.label(HOSTNAME) if info is not None else None) or ep.node_name
    spellings = _spellings(key)
    if spellings[0] == ZONE and ep.zone is not None:
        return ep.zone
    for k, v in ep.topology:
        if k in spellings:
            return v
    if info is not None:
        for spelling in spellings:
            value = info.label(spelling)
            if value is not None:
                return value
    return None


def _node_value(node: NodeView, key: str) -> str | None:
    if key == HOSTNAME:
        return node.label(HOSTNAME) or node.name
    return node.label(*_spellings(key))


def _topology_keys_problem(keys: Sequence[str]) -> str | None:
    if len(keys) > MAX_TOPOLOGY_KEYS:
        return f"more than {MAX_TOPOLOGY_KEYS} keys"
    if _ANY in keys[:-1]:
        return '"*" is allowed only as the last key'
    if any(not k for k in keys):
        return "empty key"
    if len(set(keys)) != len(keys):
        return "duplicate keys"
    return None


def _key_stage(key: str, node: NodeView) -> _Stage | None:
    """The stage for one topology key; ``None`` when this node lacks the label."""
    if key == _ANY:
        return _Stage(
            "topologyKeys:*",
            'anywhere (topologyKeys "*")',
            _keep_all,
            lambda _: "any endpoint qualifies",
        )
    want = _node_value(node, key)
    if want is None:
        return None
    nodes = node.nodes

    def keep(ep: Endpoint) -> bool:
        return _endpoint_value(ep, key, nodes) == want

    def fact(ep: Endpoint) -> str:
        have = _endpoint_value(ep, key, nodes)
        return f"has {key}={have}" if have is not None else f"has no {key}"

    return _Stage(f"topologyKeys:{key}", f"with {key}={want}", keep, fact)


def _topology_keys(
    svc: Service, eps: Sequence[Endpoint], node: NodeView, warnings: list[str]
) -> _Stage | None:
    """The winning key's stage; ``None`` only when topologyKeys must be ignored."""
    keys = svc.topology_keys
    problem = _topology_keys_problem(keys)
    if problem is not None:
        warnings.append(f"spec.topologyKeys is invalid ({problem}): ignored")
        return None
    if svc.external_traffic_policy is TrafficPolicy.LOCAL:
        warnings.append(
            "spec.topologyKeys cannot be combined with externalTrafficPolicy=Local: "
            "topologyKeys ignored"
        )
        return None
    stages = [s for s in (_key_stage(k, node) for k in keys) if s is not None]
    if stages:
        return _first_with_endpoints(eps, stages)
    return _Stage(
        "topologyKeys",
        f"sharing a key's label with node {node.name} (it has none of {', '.join(keys)})",
        _keep_none,
        lambda _: f"node {node.name} has none of the topologyKeys labels",
    )


def _hints(eps: Sequence[Endpoint], node: NodeView, warnings: list[str]) -> _Stage | None:
    """kube-proxy's rule: a kind of hint counts only if every ready endpoint carries it
    and one of them names this node (forNodes) or this node's zone (forZones)."""
    ready = [ep for ep in eps if ep.ready]
    if not ready:
        return None
    name = node.name
    with_node_hints = [bool(ep.hints_nodes) for ep in ready]
    if all(with_node_hints):
        if any(name in (ep.hints_nodes or ()) for ep in ready):
            return _Stage(
                "PreferSameNode",
                f"hinted for this node ({name})",
                lambda ep: name in (ep.hints_nodes or ()),
                lambda ep: f"hinted for nodes {', '.join(sorted(ep.hints_nodes or ())) or '-'}",
            )
        warnings.append(f"no ready endpoint is hinted for node {name}: node hints ignored")
    elif any(with_node_hints):
        warnings.append("hints.forNodes missing on some ready endpoints: node hints ignored")
    zone = node.label(ZONE)
    with_zone_hints = [bool(ep.hints_zones) for ep in ready]
    if all(with_zone_hints):
        if zone is None:
            warnings.append(f"node {name} has no {ZONE} label: zone hints ignored")
        elif any(zone in (ep.hints_zones or ()) for ep in ready):
            return _Stage(
                "PreferSameZone",
                f"hinted for this node's zone ({zone})",
                lambda ep: zone in (ep.hints_zones or ()),
                lambda ep: f"hinted for zones {', '.join(sorted(ep.hints_zones or ())) or '-'}",
            )
        else:
            warnings.append(f"no ready endpoint is hinted for zone {zone}: zone hints ignored")
    elif any(with_zone_hints):
        warnings.append("hints.forZones missing on some ready endpoints: zone hints ignored")
    return None


def _decide(svc: Service, eps: Sequence[Endpoint], node: NodeView, exposed: bool) -> _Decision:
    """Pick the stages of each category before filtering anything (STYLE §2.4).

    The cluster stages are what ``internal`` would use with internalTrafficPolicy=Cluster.
    An ``exposed`` port keeps them even with both policies Local: this node's pods and the
    node itself reach its external addresses through them, as kube-proxy does."""
    warnings: list[str] = []
    scope = _openyurt(svc, eps, node, warnings)
    scoped = [ep for ep in eps if scope.keep(ep)] if scope is not None else eps
    narrow = _topology_keys(svc, scoped, node, warnings) if svc.topology_keys else None
    if narrow is None:
        narrow = _hints(scoped, node, warnings)
    first: tuple[_Stage, ...] = (scope,) if scope is not None else ()
    cluster = (*first, narrow) if narrow is not None else first
    itp = etp = None
    if svc.internal_traffic_policy is TrafficPolicy.LOCAL:
        itp = _node_stage("internalTrafficPolicy:Local", node, f"on this node ({node.name})")
    if svc.external_traffic_policy is TrafficPolicy.LOCAL:
        etp = _node_stage("externalTrafficPolicy:Local", node, f"on this node ({node.name})")
    internal = (*first, itp) if itp is not None else cluster
    external = (*first, etp) if etp is not None else cluster
    short = cluster if exposed and itp is not None and etp is not None else None
    used = {*internal, *external, *(short or ())}
    order = tuple(s for s in (*cluster, itp, etp) if s is not None and s in used)
    warnings.extend(s.warning for s in order if s.warning is not None)
    return _Decision(internal, external, short, order, tuple(warnings))


# --- filtering ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Category:
    """One traffic category after filtering: the stages, the chosen endpoints and the
    readiness rule that chose them (``ready`` or ``serving+terminating``)."""

    stages: tuple[_Stage, ...]
    chosen: tuple[Endpoint, ...]
    rule: str

    def describe(self, empty: str) -> str:
        where = " and ".join(s.summary for s in self.stages)
        where = f" {where}" if where else ""
        if not self.chosen:
            return f"no usable endpoint{where}: {empty}"
        return f"{self.rule} endpoints{where}"


def _apply(stages: tuple[_Stage, ...], eps: Sequence[Endpoint]) -> _Category:
    """Filter by every stage, then keep the ready endpoints, else the serving and
    terminating ones (the fallback is per category, as in kube-proxy)."""
    kept = [ep for ep in eps if all(s.keep(ep) for s in stages)] if stages else eps
    ready = tuple(ep for ep in kept if ep.ready)
    if ready:
        return _Category(stages, ready, "ready")
    return _Category(stages, tuple(ep for ep in kept if _fallback(ep)), "serving+terminating")


@dataclass(frozen=True, slots=True)
class _Categories:
    """Every category of one port (``cluster`` only when it is a set of its own) and the
    selection built from them: what :func:`select` and :func:`explain` share."""

    internal: _Category
    external: _Category
    cluster: _Category | None
    selection: Selection


def _exposed(svc: Service, node_port: int | None) -> bool:
    """Whether the port is reachable from outside (kube-proxy's "externally accessible")."""
    return bool(node_port or svc.external_ips or svc.load_balancer_ips)


def _categorize(
    svc: Service, eps: Sequence[Endpoint], node: NodeView, node_port: int | None
) -> _Categories:
    decision = _decide(svc, eps, node, _exposed(svc, node_port))
    internal = _apply(decision.internal, eps)
    external = (
        internal if decision.external == decision.internal else _apply(decision.external, eps)
    )
    if external is internal:
        reason = f"internal and external: {internal.describe('traffic is rejected')}"
    else:
        reason = (
            f"internal: {internal.describe('traffic is rejected')}; "
            f"external: {external.describe('traffic is dropped')}"
        )
    cluster = None if decision.cluster is None else _apply(decision.cluster, eps)
    if cluster is not None:
        reason += (
            "; from this node's pods and the node itself to external addresses: "
            f"{cluster.describe('traffic is rejected')}"
        )
    selection = Selection(
        internal=internal.chosen,
        external=external.chosen,
        mode="+".join(s.mode for s in decision.order if s.mode) or "none",
        reason=reason,
        warnings=decision.warnings,
        local_endpoints=sum(1 for ep in eps if ep.ready and ep.node_name == node.name),
        cluster=None if cluster is None else cluster.chosen,
    )
    return _Categories(internal, external, cluster, selection)


def select(
    svc: Service, eps: Sequence[Endpoint], node: NodeView, *, node_port: int | None = None
) -> Selection:
    """The endpoint sets of one service port on ``node``.

    ``eps`` are the port's endpoints (deduplicated); the result keeps their order.
    ``node_port`` is the port's NodePort: with the service's external and LB IPs it says
    whether the port is reachable from outside (which may add the cluster-wide set)."""
    return _categorize(svc, eps, node, node_port).selection


# --- explanation -------------------------------------------------------------------


def _why(ep: Endpoint, category: _Category, chosen: frozenset[Endpoint]) -> str:
    for stage in category.stages:
        if not stage.keep(ep):
            return f"no: {stage.fact(ep)} ({stage.mode} keeps only endpoints {stage.summary})"
    facts = [stage.fact(ep) for stage in category.stages]
    if ep in chosen:
        if category.rule == "ready":
            return "yes: " + "; ".join([*facts, "ready"])
        return "yes: " + "; ".join([*facts, "serving and terminating (no endpoint is ready)"])
    if category.rule == "ready":
        return "no: not ready (ready endpoints are available)"
    return "no: not ready, and not both serving and terminating"


def explain(
    svc: Service, eps: Sequence[Endpoint], node: NodeView, *, node_port: int | None = None
) -> Explanation:
    """Why each endpoint of one service port is in or out of each set on ``node``:
    the same decision as :func:`select`, walked endpoint by endpoint."""
    cats = _categorize(svc, eps, node, node_port)
    internal, external, cluster = cats.internal, cats.external, cats.cluster
    in_internal, in_external = frozenset(internal.chosen), frozenset(external.chosen)
    in_cluster = frozenset(cluster.chosen) if cluster is not None else frozenset()
    verdicts = tuple(
        Verdict(
            endpoint=ep,
            internal=ep in in_internal,
            external=ep in in_external,
            internal_why=_why(ep, internal, in_internal),
            external_why=_why(ep, external, in_external),
            cluster=ep in in_cluster,
            cluster_why=None if cluster is None else _why(ep, cluster, in_cluster),
        )
        for ep in eps
    )
    return Explanation(cats.selection, verdicts)
