"""Small builders for tests and benchmarks: raw API objects (``*_obj``), :mod:`proxyd.model`
values, and the plans backends receive (``sp``, ``node_plan``).

Every builder returns a minimal valid object; keyword arguments change one thing, so a
test case differs from its neighbours in exactly what it is about. Raw builders return
fresh dicts (mutate them freely in a test to break one field) and pass malformed values
through untouched, so rejection tests can use them too. Extra keyword arguments of
``svc_obj`` go into ``spec`` under their API spelling (``externalTrafficPolicy="Local"``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from proxyd.model import (
    AddressType,
    ClusterSnapshot,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    NodeInfo,
    NodePlan,
    NodePool,
    PortSpec,
    Protocol,
    Service,
    ServicePlan,
    ServicePort,
    ServicePortKey,
    ServiceRef,
    SliceEndpoint,
)

if TYPE_CHECKING:  # the daemon's types, imported only where a Syncer is built
    from prometheus_client import CollectorRegistry

    from proxyd.backends import Backend
    from proxyd.commands.run import Syncer
    from proxyd.runner import Clock
    from proxyd.store import ClusterState

__all__ = [
    "POOL_LABEL",
    "ZONE_LABEL",
    "ep",
    "ep_obj",
    "eps",
    "list_obj",
    "new_syncer",
    "node",
    "node_obj",
    "node_plan",
    "pool",
    "pool_obj",
    "port_obj",
    "port_spec",
    "sep",
    "slice_obj",
    "snapshot",
    "sp",
    "svc",
    "svc_obj",
]

Obj = dict[str, Any]

POOL_LABEL = "apps.openyurt.io/nodepool"
ZONE_LABEL = "topology.kubernetes.io/zone"
_HOSTNAME_LABEL = "kubernetes.io/hostname"


def _metadata(
    name: Any,
    namespace: str | None,
    labels: Mapping[str, Any] | None,
    annotations: Mapping[str, Any] | None,
) -> Obj:
    md: Obj = {"name": name}
    if namespace is not None:
        md["namespace"] = namespace
    if labels:
        md["labels"] = dict(labels)
    if annotations:
        md["annotations"] = dict(annotations)
    return md


def _node_labels(
    name: str, pool: str | None, zone: str | None, labels: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A node's labels: hostname, ``labels``, then pool and zone when given."""
    all_labels = {_HOSTNAME_LABEL: name, **(labels or {})}
    if pool is not None:
        all_labels[POOL_LABEL] = pool
    if zone is not None:
        all_labels[ZONE_LABEL] = zone
    return all_labels


# --- raw API objects ---------------------------------------------------------------------


def port_obj(port: Any = 80, name: Any = "http", protocol: Any = "TCP", **extra: Any) -> Obj:
    """One entry of a Service's ``spec.ports`` (also fits an EndpointSlice's ``ports``)."""
    return {"name": name, "port": port, "protocol": protocol, **extra}


def svc_obj(
    name: Any = "web",
    namespace: str = "default",
    *,
    cluster_ip: str | None = "10.96.0.10",
    ports: Any = None,
    svc_type: str | None = None,
    labels: Mapping[str, Any] | None = None,
    annotations: Mapping[str, Any] | None = None,
    status: Obj | None = None,
    **spec: Any,
) -> Obj:
    """A v1 Service with one TCP port ``http`` 80 and cluster IP 10.96.0.10."""
    body: Obj = {"ports": [port_obj()] if ports is None else copy.deepcopy(ports)}
    if cluster_ip is not None:
        body["clusterIP"] = cluster_ip
    if svc_type is not None:
        body["type"] = svc_type
    body.update(spec)
    obj: Obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, labels, annotations),
        "spec": body,
    }
    if status is not None:
        obj["status"] = status
    return obj


def ep_obj(
    ip: str,
    *,
    node: str | None = None,
    zone: str | None = None,
    ready: Any = None,
    serving: Any = None,
    terminating: Any = None,
    for_zones: Iterable[str] | None = None,
    for_nodes: Iterable[str] | None = None,
    **extra: Any,
) -> Obj:
    """One entry of an EndpointSlice's ``endpoints``; conditions left out unless given."""
    obj: Obj = {"addresses": [ip], **extra}
    conditions = {
        key: value
        for key, value in (("ready", ready), ("serving", serving), ("terminating", terminating))
        if value is not None
    }
    if conditions:
        obj["conditions"] = conditions
    if node is not None:
        obj["nodeName"] = node
    if zone is not None:
        obj["zone"] = zone
    hints: Obj = {}
    if for_zones is not None:
        hints["forZones"] = [{"name": z} for z in for_zones]
    if for_nodes is not None:
        hints["forNodes"] = [{"name": n} for n in for_nodes]
    if hints:
        obj["hints"] = hints
    return obj


def slice_obj(
    service: str = "web",
    endpoints: Iterable[Obj | str] = (),
    *,
    name: str | None = None,
    namespace: str = "default",
    address_type: str = "IPv4",
    ports: Any = None,
    labels: Mapping[str, Any] | None = None,
    annotations: Mapping[str, Any] | None = None,
) -> Obj:
    """A discovery.k8s.io/v1 EndpointSlice of ``service`` with port ``http`` 8080/TCP;
    endpoints given as plain IPs become ready endpoints without a node."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": _metadata(
            name or f"{service}-abcde",
            namespace,
            {"kubernetes.io/service-name": service, **(labels or {})},
            annotations,
        ),
        "addressType": address_type,
        "ports": [port_obj(8080)] if ports is None else copy.deepcopy(ports),
        "endpoints": [ep_obj(e) if isinstance(e, str) else copy.deepcopy(e) for e in endpoints],
    }


def node_obj(
    name: str = "node-a",
    *,
    pool: str | None = None,
    zone: str | None = None,
    labels: Mapping[str, Any] | None = None,
    internal_ips: Sequence[str] = (),
    external_ips: Sequence[str] = (),
) -> Obj:
    """A v1 Node with its hostname label, optionally a pool and zone label."""
    addresses = [{"type": "InternalIP", "address": ip} for ip in internal_ips]
    addresses += [{"type": "ExternalIP", "address": ip} for ip in external_ips]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": _metadata(name, None, _node_labels(name, pool, zone, labels), None),
        "status": {"addresses": addresses},
    }


def pool_obj(name: str, nodes: Iterable[Any] = (), *, version: str = "v1beta1") -> Obj:
    """An OpenYurt NodePool whose ``status.nodes`` lists ``nodes``."""
    return {
        "apiVersion": f"apps.openyurt.io/{version}",
        "kind": "NodePool",
        "metadata": {"name": name},
        "spec": {"type": "Edge"},
        "status": {"nodes": list(nodes)},
    }


def list_obj(*items: Obj, kind: str = "List", api_version: str = "v1") -> Obj:
    """``kind: List`` (as ``kubectl get -o yaml`` prints) or a typed list (``ServiceList``)."""
    return {"apiVersion": api_version, "kind": kind, "items": list(items)}


# --- model values ------------------------------------------------------------------------


def port_spec(
    port: int = 80,
    name: str = "http",
    protocol: Protocol = Protocol.TCP,
    node_port: int | None = None,
) -> PortSpec:
    return PortSpec(name=name, protocol=protocol, port=port, node_port=node_port)


def svc(
    name: str = "web",
    namespace: str = "default",
    *,
    ports: Sequence[PortSpec] | None = None,
    cluster_ips: Sequence[str] = ("10.96.0.10",),
    **fields: Any,
) -> Service:
    """A Service with one port ``http`` 80/TCP; other Service fields by keyword."""
    return Service(
        ref=ServiceRef(namespace, name),
        cluster_ips=tuple(cluster_ips),
        ports=(port_spec(),) if ports is None else tuple(ports),
        **fields,
    )


def sep(ip: str, **fields: Any) -> SliceEndpoint:
    """A SliceEndpoint (ready unless told otherwise); fields by model name (node_name=…)."""
    return SliceEndpoint(ip=ip, **fields)


def eps(
    service: str = "web",
    endpoints: Iterable[SliceEndpoint | str] = (),
    *,
    name: str | None = None,
    namespace: str = "default",
    address_type: AddressType = AddressType.IPV4,
    ports: Sequence[EndpointPort] | None = None,
    trigger_time: float | None = None,
) -> EndpointSlice:
    """An EndpointSlice of ``service`` with port ``http`` 8080/TCP."""
    return EndpointSlice(
        namespace=namespace,
        name=name or f"{service}-abcde",
        service=ServiceRef(namespace, service),
        address_type=address_type,
        ports=(EndpointPort("http", Protocol.TCP, 8080),) if ports is None else tuple(ports),
        endpoints=tuple(sep(e) if isinstance(e, str) else e for e in endpoints),
        trigger_time=trigger_time,
    )


def ep(ip: str, port: int = 8080, **fields: Any) -> Endpoint:
    """An Endpoint as topology and backends see it."""
    return Endpoint(ip=ip, port=port, **fields)


def node(
    name: str = "node-a",
    *,
    pool: str | None = None,
    zone: str | None = None,
    labels: Mapping[str, str] | None = None,
    addresses: Sequence[str] = (),
) -> NodeInfo:
    """A NodeInfo with its hostname label, optionally a pool and zone label."""
    all_labels = _node_labels(name, pool, zone, labels)
    return NodeInfo(name=name, labels=tuple(sorted(all_labels.items())), addresses=tuple(addresses))


def pool(name: str, *nodes: str) -> NodePool:
    return NodePool(name=name, nodes=frozenset(nodes))


def snapshot(*objects: Service | EndpointSlice | NodeInfo | NodePool) -> ClusterSnapshot:
    """A ClusterSnapshot holding ``objects`` (any mix, keyed as ClusterState keys them)."""
    services: dict[ServiceRef, Service] = {}
    slices: dict[tuple[str, str], EndpointSlice] = {}
    nodes: dict[str, NodeInfo] = {}
    pools: dict[str, NodePool] = {}
    for obj in objects:
        match obj:
            case Service():
                services[obj.ref] = obj
            case EndpointSlice():
                slices[(obj.namespace, obj.name)] = obj
            case NodeInfo():
                nodes[obj.name] = obj
            case NodePool():
                pools[obj.name] = obj
    return ClusterSnapshot(services=services, slices=slices, nodes=nodes, pools=pools)


# --- plans -------------------------------------------------------------------------------


def sp(
    name: str = "web",
    *,
    internal: Iterable[Endpoint] = (),
    external: Iterable[Endpoint] | None = None,
    namespace: str = "default",
    port_name: str = "http",
    protocol: Protocol = Protocol.TCP,
    port: int = 80,
    cluster_ips: Sequence[str] = ("10.96.0.10",),
    mode: str = "none",
    warnings: Sequence[str] = (),
    local_endpoints: int = 0,
    candidates: int = 0,
    **fields: Any,
) -> ServicePlan:
    """A ServicePlan of port ``http`` 80/TCP of ``default/web`` at 10.96.0.10, as backends
    receive it; ``external`` defaults to ``internal``; other ServicePort fields by keyword
    (``node_port=…``)."""
    key = ServicePortKey(ServiceRef(namespace, name), port_name, protocol)
    internal = tuple(internal)
    return ServicePlan(
        port=ServicePort(key=key, port=port, cluster_ips=tuple(cluster_ips), **fields),
        internal=internal,
        external=internal if external is None else tuple(external),
        mode=mode,
        warnings=tuple(warnings),
        local_endpoints=local_endpoints,
        candidates=candidates,
    )


def node_plan(
    *services: ServicePlan, node: str = "node-a", addresses: Sequence[str] = ()
) -> NodePlan:
    """A NodePlan of ``services`` sorted by key, as :func:`proxyd.plan.build_plan` returns it."""
    return NodePlan(node, tuple(sorted(services, key=lambda s: s.key)), tuple(addresses))


def new_syncer(
    state: ClusterState,
    backend: Backend,
    clock: Clock,
    *,
    node_name: str = "n1",
    retry_after: Callable[[float], None] | None = None,
    registry: CollectorRegistry | None = None,
    standing_warnings: Sequence[str] = (),
) -> Syncer:
    """The daemon's Syncer with kube-proxy's default periods (30 s sync, 1 s first retry)
    on ``clock``; ``retry_after`` receives the retry delays (default: dropped)."""
    from prometheus_client import CollectorRegistry

    from proxyd.commands.run import Syncer
    from proxyd.health import ProxyHealth
    from proxyd.metrics import Metrics
    from proxyd.runner import Backoff

    return Syncer(
        state=state,
        backend=backend,
        node_name=node_name,
        proxy_name="proxyd",
        clock=clock,
        sync_period=30.0,
        metrics=Metrics(registry if registry is not None else CollectorRegistry()),
        health=ProxyHealth(clock, 60.0),
        backoff=Backoff(1.0, 30.0),
        retry_after=retry_after if retry_after is not None else (lambda _: None),
        standing_warnings=standing_warnings,
    )
