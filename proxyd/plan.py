"""Whole-node desired state from a snapshot: one :class:`ServicePlan` per service port.

Pure and deterministic: services are visited in sorted order, ports sorted by (name,
protocol), endpoints sorted by (ip, port), so the same snapshot always gives an equal
plan. Topology decisions are delegated to :mod:`proxyd.topology`; this module only
joins Services to their EndpointSlices and flattens what backends need.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence

from proxyd import topology
from proxyd.model import (
    AddressType,
    ClusterSnapshot,
    Endpoint,
    EndpointSlice,
    NodePlan,
    PortSpec,
    Service,
    ServicePlan,
    ServicePort,
    ServicePortKey,
    ServiceRef,
    ServiceType,
)

__all__ = ["build_plan", "port_endpoints", "skip_reason", "slices_by_service"]


def skip_reason(svc: Service, proxy_name: str) -> str | None:
    """Why proxyd programs nothing for ``svc`` on any node, or ``None`` if it does."""
    if svc.type is ServiceType.EXTERNAL_NAME:
        return "it is of type ExternalName (DNS only, nothing to proxy)"
    if svc.headless or not svc.cluster_ips:
        return "it is headless (no cluster IP, DNS only)"
    if svc.proxy_name is not None and svc.proxy_name != proxy_name:
        return (
            f"its label service.kubernetes.io/service-proxy-name={svc.proxy_name} "
            f"hands it to another proxy (this one is {proxy_name!r})"
        )
    return None


def slices_by_service(
    slices: Mapping[tuple[str, str], EndpointSlice],
    only: Container[ServiceRef] | None = None,
) -> dict[ServiceRef, list[EndpointSlice]]:
    """Group slices by their Service (only those in ``only`` when given), each group in
    slice-name order; FQDN slices are ignored."""
    grouped: dict[ServiceRef, list[EndpointSlice]] = {}
    for eps in slices.values():
        if eps.address_type is not AddressType.FQDN and (only is None or eps.service in only):
            grouped.setdefault(eps.service, []).append(eps)
    for group in grouped.values():
        group.sort(key=lambda eps: eps.name)
    return grouped


def _ref_order(ref: ServiceRef) -> tuple[str, str]:
    return ref.namespace, ref.name


def _plan_order(plan: ServicePlan) -> tuple[str, str, str, str]:
    key = plan.key
    return key.service.namespace, key.service.name, key.port_name, key.protocol


def _service_port(svc: Service, spec: PortSpec) -> ServicePort:
    return ServicePort(
        key=ServicePortKey(svc.ref, spec.name, spec.protocol),
        port=spec.port,
        cluster_ips=svc.cluster_ips,
        node_port=spec.node_port,
        external_ips=svc.external_ips,
        load_balancer_ips=svc.load_balancer_ips,
        load_balancer_source_ranges=svc.load_balancer_source_ranges,
        session_affinity_timeout=svc.session_affinity_timeout,
        internal_traffic_policy=svc.internal_traffic_policy,
        external_traffic_policy=svc.external_traffic_policy,
        health_check_node_port=svc.health_check_node_port,
        ipvs_scheduler=svc.ipvs_scheduler,
    )


def _rank(ep: Endpoint) -> tuple[bool, bool, bool]:
    """Which copy of a duplicated ip:port wins: the most usable one."""
    return ep.ready, ep.serving, not ep.terminating


def _endpoints(spec: PortSpec, slices: Iterable[EndpointSlice]) -> tuple[Endpoint, ...]:
    """The endpoints of one port: slice endpoints whose slice port matches by name and
    protocol, each ip:port once (the most usable copy; first slice on ties)."""
    found: dict[tuple[str, int], Endpoint] = {}
    for eps in slices:
        for sp in eps.ports:
            if sp.name != spec.name or sp.protocol != spec.protocol:
                continue
            for se in eps.endpoints:
                ep = Endpoint(
                    se.ip,
                    sp.port,
                    se.ready,
                    se.serving,
                    se.terminating,
                    se.node_name,
                    se.zone,
                    se.hints_zones,
                    se.hints_nodes,
                    se.topology,
                )
                key = (se.ip, sp.port)
                seen = found.get(key)
                if seen is None or _rank(ep) > _rank(seen):
                    found[key] = ep
    return tuple(found[key] for key in sorted(found))


def port_endpoints(
    svc: Service, slices: Sequence[EndpointSlice]
) -> tuple[tuple[ServicePort, tuple[Endpoint, ...]], ...]:
    """Each port of ``svc`` (sorted by name, protocol) with its endpoints."""
    specs = sorted(svc.ports, key=lambda p: (p.name, p.protocol))
    return tuple((_service_port(svc, spec), _endpoints(spec, slices)) for spec in specs)


def _plan_service(
    svc: Service, slices: Sequence[EndpointSlice], node: topology.NodeView
) -> list[ServicePlan]:
    times = [eps.trigger_time for eps in slices if eps.trigger_time is not None]
    trigger_time = max(times) if times else None
    plans = []
    for port, eps in port_endpoints(svc, slices):
        sel = topology.select(svc, eps, node, node_port=port.node_port)
        plans.append(
            ServicePlan(
                port=port,
                internal=sel.internal,
                external=sel.external,
                mode=sel.mode,
                reason=sel.reason,
                warnings=sel.warnings,
                local_endpoints=sel.local_endpoints,
                cluster=sel.cluster,
                trigger_time=trigger_time,
                candidates=len(eps),
            )
        )
    return plans


def _plan_services(
    snapshot: ClusterSnapshot,
    refs: Sequence[ServiceRef],
    node: topology.NodeView,
    proxy_name: str,
) -> list[ServicePlan]:
    """Plans of ``refs`` (already sorted), skipping services proxyd does not program."""
    slices = slices_by_service(snapshot.slices, set(refs))
    plans: list[ServicePlan] = []
    for ref in refs:
        svc = snapshot.services[ref]
        if skip_reason(svc, proxy_name) is None:
            plans.extend(_plan_service(svc, slices.get(ref, ()), node))
    return plans


def build_plan(
    snapshot: ClusterSnapshot,
    node_name: str,
    *,
    proxy_name: str = "proxyd",
    previous: NodePlan | None = None,
    changed: frozenset[ServiceRef] | None = None,
) -> NodePlan:
    """The desired state of ``node_name``.

    With ``previous`` and ``changed``, services outside ``changed`` keep their previous
    ServicePlans. That is only correct when nothing else changed: after a Node or
    NodePool change (``Changes.topology``) or a new ``proxy_name``, plan in full.
    """
    node = topology.node_view(snapshot, node_name)
    services = snapshot.services
    if previous is None or changed is None or previous.node != node_name:
        plans = _plan_services(snapshot, sorted(services, key=_ref_order), node, proxy_name)
    else:
        kept = [
            plan
            for plan in previous.services
            if plan.key.service not in changed and plan.key.service in services
        ]
        planned = {plan.key.service for plan in kept}
        todo = sorted((ref for ref in services if ref not in planned), key=_ref_order)
        plans = sorted([*kept, *_plan_services(snapshot, todo, node, proxy_name)], key=_plan_order)
    info = snapshot.nodes.get(node_name)
    return NodePlan(
        node=node_name,
        services=tuple(plans),
        node_addresses=info.addresses if info is not None else (),
    )
