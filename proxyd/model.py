"""Immutable model types shared by every part of proxyd.

Sources translate API objects into these types once (``sources/translate.py``); topology,
planning and backends only ever see these. They are frozen and hashable so they can be
compared cheaply (a change that does not alter the plan writes nothing) and used as keys.
Optional API fields are defaulted during translation, never here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "AddressType",
    "ClusterSnapshot",
    "Endpoint",
    "EndpointPort",
    "EndpointSlice",
    "IPFamily",
    "NodeInfo",
    "NodePlan",
    "NodePool",
    "PortSpec",
    "Protocol",
    "Service",
    "ServicePlan",
    "ServicePort",
    "ServicePortKey",
    "ServiceRef",
    "ServiceType",
    "SliceEndpoint",
    "TrafficPolicy",
    "format_addr",
    "ip_family",
]


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class AddressType(StrEnum):
    IPV4 = "IPv4"
    IPV6 = "IPv6"
    FQDN = "FQDN"


class IPFamily(StrEnum):
    IPV4 = "IPv4"
    IPV6 = "IPv6"


class TrafficPolicy(StrEnum):
    CLUSTER = "Cluster"
    LOCAL = "Local"


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_NAME = "ExternalName"


def ip_family(ip: str) -> IPFamily:
    """Family of an already validated IP literal."""
    return IPFamily.IPV6 if ipaddress.ip_address(ip).version == 6 else IPFamily.IPV4


def format_addr(ip: str, port: int) -> str:
    """``ip:port`` with IPv6 in brackets, the spelling used in plans and metrics."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, slots=True, order=True)
class ServiceRef:
    """A Service's identity: the join key between Services and EndpointSlices."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class ServicePortKey:
    """One service port: the unit that gets its own chains / virtual servers."""

    service: ServiceRef
    port_name: str
    protocol: Protocol

    def __str__(self) -> str:
        return f"{self.service}:{self.port_name}/{self.protocol}"


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One entry of ``spec.ports`` (target ports are resolved by the EndpointSlice)."""

    name: str
    protocol: Protocol
    port: int
    node_port: int | None = None


@dataclass(frozen=True, slots=True)
class Service:
    """A v1 Service, reduced to what a proxy needs.

    ``topology_keys`` is the alpha ``spec.topologyKeys``; ``openyurt_scopes`` is the
    ``openyurt.io/topologyKeys`` annotation split on commas (unvalidated: topology.py
    decides what an unknown value means). ``session_affinity_timeout`` is ``None`` when
    sessionAffinity is not ClientIP. ``cluster_ips`` is empty for headless services.
    """

    ref: ServiceRef
    type: ServiceType = ServiceType.CLUSTER_IP
    headless: bool = False
    cluster_ips: tuple[str, ...] = ()
    ports: tuple[PortSpec, ...] = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity_timeout: int | None = None
    internal_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    external_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    health_check_node_port: int | None = None
    topology_keys: tuple[str, ...] = ()
    openyurt_scopes: tuple[str, ...] = ()
    ipvs_scheduler: str | None = None
    proxy_name: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointPort:
    """One entry of an EndpointSlice's ``ports``; matched to a PortSpec by name+protocol."""

    name: str
    protocol: Protocol
    port: int


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One entry of an EndpointSlice's ``endpoints`` (first address only, as kube-proxy).

    ``hints_zones``/``hints_nodes`` are ``None`` when the endpoint carries no such hint,
    which is different from an empty hint set. ``topology`` holds ``deprecatedTopology``
    as sorted (key, value) pairs.
    """

    ip: str
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    hints_zones: frozenset[str] | None = None
    hints_nodes: frozenset[str] | None = None
    topology: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    """A discovery.k8s.io/v1 EndpointSlice. ``trigger_time`` is epoch seconds from
    ``endpoints.kubernetes.io/last-change-trigger-time`` (network programming latency)."""

    namespace: str
    name: str
    service: ServiceRef
    address_type: AddressType
    ports: tuple[EndpointPort, ...] = ()
    endpoints: tuple[SliceEndpoint, ...] = ()
    trigger_time: float | None = None


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """One backend of one service port, as topology and backends see it."""

    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    hints_zones: frozenset[str] | None = field(default=None, compare=False)
    hints_nodes: frozenset[str] | None = field(default=None, compare=False)
    topology: tuple[tuple[str, str], ...] = ()

    @property
    def addr(self) -> str:
        return format_addr(self.ip, self.port)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A v1 Node. ``labels`` are sorted (key, value) pairs; ``addresses`` are its
    InternalIP/ExternalIP addresses (used for NodePort in IPVS mode). ``being_deleted``:
    it has a deletionTimestamp or the cluster autoscaler's ToBeDeleted taint (health
    then reports ``nodeEligible: false``, as kube-proxy does)."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    addresses: tuple[str, ...] = ()
    being_deleted: bool = False

    def label(self, key: str) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return None


@dataclass(frozen=True, slots=True)
class NodePool:
    """An OpenYurt NodePool (any apps.openyurt.io version); members from ``status.nodes``."""

    name: str
    nodes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Everything the planner reads, at one instant. Mappings must not be mutated."""

    services: Mapping[ServiceRef, Service]
    slices: Mapping[tuple[str, str], EndpointSlice]
    nodes: Mapping[str, NodeInfo]
    pools: Mapping[str, NodePool]


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One service port with the service-level fields every backend needs, flattened."""

    key: ServicePortKey
    port: int
    cluster_ips: tuple[str, ...] = ()
    node_port: int | None = None
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity_timeout: int | None = None
    internal_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    external_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    health_check_node_port: int | None = None
    ipvs_scheduler: str | None = None


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """What this node programs for one service port, and why.

    ``internal`` serves ClusterIP traffic from this node; ``external`` serves traffic that
    arrives at this node's NodePort / externalIPs / LB IPs. An empty tuple means traffic
    must be rejected (internal) or dropped (external, eTP=Local). ``mode`` names the rule
    that decided (``openyurt:nodepool``, ``topologyKeys:<key>``, ``PreferSameZone``,
    ``PreferSameNode``, ``internalTrafficPolicy:Local``, ``none`` …); ``reason`` says it
    in words; ``warnings`` are things an operator must be told (events/metrics).
    ``local_endpoints`` is the count answered by the healthCheckNodePort server;
    ``candidates`` the distinct endpoints the port had before any filtering (for the
    kept/dropped metrics; not compared, so it never makes a backend rewrite rules).
    ``cluster`` is the cluster-wide set that traffic from this node's pods and from the
    node itself to the port's external addresses is short-circuited to (kube-proxy's
    "Cluster endpoints" of an externally reachable port); it is given only when neither
    ``internal`` nor ``external`` is that set (both traffic policies Local, port reachable
    from outside), ``None`` otherwise.
    """

    port: ServicePort
    internal: tuple[Endpoint, ...]
    external: tuple[Endpoint, ...]
    mode: str
    reason: str = ""
    warnings: tuple[str, ...] = ()
    local_endpoints: int = 0
    cluster: tuple[Endpoint, ...] | None = None
    trigger_time: float | None = field(default=None, compare=False)
    candidates: int = field(default=0, compare=False)

    @property
    def key(self) -> ServicePortKey:
        return self.port.key


@dataclass(frozen=True, slots=True)
class NodePlan:
    """The whole desired state of one node, sorted by service port key."""

    node: str
    services: tuple[ServicePlan, ...]
    node_addresses: tuple[str, ...] = ()
