"""Raw Kubernetes API objects (JSON dicts) → :mod:`proxyd.model` types.

This is the only module that knows API field names, and the one place where optional
fields get their defaults:

- endpoint conditions: ``ready`` nil → true, ``serving`` nil → ``ready``, ``terminating``
  nil → false; ``nodeName``, ``zone`` and hints nil → ``None`` (an empty hint list stays
  an empty set, which is not the same as no hint);
- ``internalTrafficPolicy`` / ``externalTrafficPolicy`` nil or "" → Cluster;
  sessionAffinity ClientIP without a timeout → 10800 s; ``clusterIP: None`` → headless;
- EndpointSlice ports without a port number are skipped (the API says "not restricted",
  which a proxy cannot program; kube-proxy skips them too);
- load-balancer ingress entries without ``ip`` (hostname only) or with ``ipMode: Proxy``
  are not programmed, as in kube-proxy;
- a missing or unparsable ``last-change-trigger-time`` annotation gives no trigger time:
  it only feeds a latency metric and must never cost a slice its endpoints.

Objects are validated precisely: a malformed one raises :class:`InputError` naming the
object (``Service ns/name``) and the JSON path of the bad field, with a short ``reason``
label meant for metrics. Inputs are never mutated; IP literals are returned in canonical
form. Semantics of the topology fields (what an unknown scope means, the 16-key limit of
``topologyKeys``) belong to :mod:`proxyd.topology`; they are only carried here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, NoReturn, TypeVar

from proxyd.errors import InputError
from proxyd.model import (
    AddressType,
    EndpointPort,
    EndpointSlice,
    IPFamily,
    NodeInfo,
    NodePool,
    PortSpec,
    Protocol,
    Service,
    ServiceRef,
    ServiceType,
    SliceEndpoint,
    TrafficPolicy,
    ip_family,
)

__all__ = ["Translated", "endpoint_slice", "node", "node_pool", "service", "translate_object"]

Translated = Service | EndpointSlice | NodeInfo | NodePool
"""What :func:`translate_object` returns for the kinds proxyd watches."""

_Json = Mapping[str, Any]
_E = TypeVar("_E", bound=StrEnum)

_LABEL_SERVICE_NAME = "kubernetes.io/service-name"
_LABEL_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
_ANN_OPENYURT_SCOPES = "openyurt.io/topologyKeys"
_ANN_IPVS_SCHEDULER = ("proxyd.io/ipvs-scheduler", "kube-router.io/service.scheduler")
_ANN_TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
_NODEPOOL_GROUP = "apps.openyurt.io"
_NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
_SESSION_AFFINITIES = ("None", "ClientIP")
_LB_IP_MODES = ("VIP", "Proxy")
_DEFAULT_AFFINITY_TIMEOUT = 10800
_MAX_AFFINITY_TIMEOUT = 86400
_MAX_PORT = 65535


def _show(value: object) -> str:
    """A short rendering of a bad value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, int) and value.bit_length() > 200:
        return "a huge integer"  # repr() fails past 4300 digits; 60 of them say nothing
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
#: An IPv4 literal already in the form ``str(ipaddress.ip_address(...))`` gives back (no
#: leading zeros): valid as it is, so it needs no parsing.
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


class _Reader:
    """Typed access to one object's fields; every failure names the object and field."""

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, message: str, reason: str) -> NoReturn:
        raise InputError(self.where, field, message, reason)

    def mapping(self, value: object, field: str) -> _Json:
        """An optional object: absent → empty."""
        return {} if value is None else self.item(value, field)

    def item(self, value: object, field: str) -> _Json:
        """A required object (e.g. one entry of a list)."""
        if not isinstance(value, Mapping):
            self.fail(field, f"must be an object, got {_show(value)}", "not_an_object")
        return value

    def seq(self, value: object, field: str) -> list[Any] | tuple[Any, ...]:
        """An optional list: absent → empty."""
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            self.fail(field, f"must be a list, got {_show(value)}", "not_a_list")
        return value

    def opt_string(self, value: object, field: str) -> str | None:
        if value is None or isinstance(value, str):
            return value
        self.fail(field, f"must be a string, got {_show(value)}", "not_a_string")

    def string(self, value: object, field: str, reason: str) -> str:
        """A required, non-empty string."""
        text = self.opt_string(value, field)
        if not text:
            self.fail(field, "is required", reason)
        return text

    def strings(self, value: object, field: str) -> tuple[str, ...]:
        return tuple(
            self.string(v, f"{field}[{i}]", "not_a_string")
            for i, v in enumerate(self.seq(value, field))
        )

    def string_map(self, value: object, field: str) -> dict[str, str]:
        """Labels, annotations and the like: string keys to string values."""
        out: dict[str, str] = {}
        for key, val in self.mapping(value, field).items():
            if not isinstance(key, str):
                self.fail(field, f"keys must be strings, got {_show(key)}", "not_a_string")
            if not isinstance(val, str):
                message = f"must be a string, got {_show(val)}"
                self.fail(f'{field}["{key}"]', message, "not_a_string")
            out[key] = val
        return out

    def opt_bool(self, value: object, field: str) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        self.fail(field, f"must be true or false, got {_show(value)}", "not_a_bool")

    def integer(self, value: object, field: str, low: int, high: int, reason: str) -> int:
        """An integer in [low, high] (80.0 is rejected, as by the API server)."""
        if value is None:
            self.fail(field, "is required", reason)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, f"must be an integer, got {_show(value)}", reason)
        if not low <= value <= high:
            self.fail(field, f"must be in {low}-{high}, got {_show(value)}", reason)
        return value

    def port(self, value: object, field: str) -> int:
        return self.integer(value, field, 1, _MAX_PORT, "invalid_port")

    def opt_port(self, value: object, field: str) -> int | None:
        """An allocated port (nodePort, healthCheckNodePort): absent or 0 → None."""
        if value is None or (type(value) is int and value == 0):
            return None
        return self.port(value, field)

    def ip(self, value: object, field: str, family: IPFamily | None = None) -> str:
        text = self.string(value, field, "invalid_ip")
        if family is not IPFamily.IPV6 and _CANONICAL_IPV4.fullmatch(text):
            return text  # the usual case: a list of 10,000 services parses ~40,000 of these
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            self.fail(field, f"{text!r} is not an IP address", "invalid_ip")
        if "%" in text:
            self.fail(field, f"{text!r}: zoned IPv6 addresses are not allowed", "invalid_ip")
        canonical = str(addr)
        if family is not None and ip_family(canonical) is not family:
            self.fail(field, f"{text!r} is not an {family} address", "invalid_ip")
        return canonical

    def cidr(self, value: object, field: str) -> str:
        text = self.string(value, field, "invalid_cidr").strip()
        try:
            return str(ipaddress.ip_network(text, strict=False))
        except ValueError:
            self.fail(field, f"{text!r} is not a CIDR", "invalid_cidr")

    def enum(
        self, value: object, field: str, cls: type[_E], reason: str, default: _E | None = None
    ) -> _E:
        """A closed vocabulary; absent or "" → ``default`` (required when it is None)."""
        text = self.opt_string(value, field)
        if not text:
            if default is None:
                self.fail(field, "is required", reason)
            return default
        try:
            return cls(text)
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            self.fail(field, f"must be one of {allowed}; got {text!r}", reason)


class _Meta(NamedTuple):
    reader: _Reader
    namespace: str
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]


def _meta(obj: _Json, kind: str, *, namespaced: bool) -> _Meta:
    """Read metadata; from here on errors name the object."""
    anonymous = _Reader(f"{kind} <no name>")
    md = anonymous.mapping(obj.get("metadata"), "metadata")
    namespace = ""
    if namespaced:
        namespace = anonymous.opt_string(md.get("namespace"), "metadata.namespace") or "default"
        anonymous = _Reader(f"{kind} {namespace}/<no name>")
    name = anonymous.string(md.get("name"), "metadata.name", "missing_name")
    reader = _Reader(f"{kind} {namespace}/{name}" if namespaced else f"{kind} {name}")
    labels = reader.string_map(md.get("labels"), "metadata.labels")
    annotations = reader.string_map(md.get("annotations"), "metadata.annotations")
    return _Meta(reader, namespace, name, labels, annotations)


# --- Service -----------------------------------------------------------------------------


def service(obj: _Json) -> Service:
    """A v1 Service."""
    meta = _meta(obj, "Service", namespaced=True)
    r = meta.reader
    spec = r.mapping(obj.get("spec"), "spec")
    status = r.mapping(obj.get("status"), "status")
    headless, cluster_ips = _cluster_ips(r, spec)
    policies = {
        key: r.enum(
            spec.get(key),
            f"spec.{key}",
            TrafficPolicy,
            "invalid_traffic_policy",
            TrafficPolicy.CLUSTER,
        )
        for key in ("internalTrafficPolicy", "externalTrafficPolicy")
    }
    return Service(
        ref=ServiceRef(meta.namespace, meta.name),
        type=r.enum(
            spec.get("type"),
            "spec.type",
            ServiceType,
            "invalid_service_type",
            ServiceType.CLUSTER_IP,
        ),
        headless=headless,
        cluster_ips=cluster_ips,
        ports=_service_ports(r, spec.get("ports")),
        external_ips=tuple(
            r.ip(v, f"spec.externalIPs[{i}]")
            for i, v in enumerate(r.seq(spec.get("externalIPs"), "spec.externalIPs"))
        ),
        load_balancer_ips=_load_balancer_ips(r, status),
        load_balancer_source_ranges=tuple(
            r.cidr(v, f"spec.loadBalancerSourceRanges[{i}]")
            for i, v in enumerate(
                r.seq(spec.get("loadBalancerSourceRanges"), "spec.loadBalancerSourceRanges")
            )
        ),
        session_affinity_timeout=_session_affinity_timeout(r, spec),
        internal_traffic_policy=policies["internalTrafficPolicy"],
        external_traffic_policy=policies["externalTrafficPolicy"],
        health_check_node_port=r.opt_port(
            spec.get("healthCheckNodePort"), "spec.healthCheckNodePort"
        ),
        topology_keys=r.strings(spec.get("topologyKeys"), "spec.topologyKeys"),
        openyurt_scopes=_split_scopes(meta.annotations.get(_ANN_OPENYURT_SCOPES, "")),
        ipvs_scheduler=_ipvs_scheduler(meta.annotations),
        proxy_name=meta.labels.get(_LABEL_PROXY_NAME),
    )


def _cluster_ips(r: _Reader, spec: _Json) -> tuple[bool, tuple[str, ...]]:
    """(headless, cluster IPs). ``clusterIPs`` wins; ``clusterIP`` is its first entry."""
    single = r.opt_string(spec.get("clusterIP"), "spec.clusterIP") or ""
    many = r.strings(spec.get("clusterIPs"), "spec.clusterIPs")
    if single and many and many[0] != single:
        r.fail(
            "spec.clusterIPs[0]",
            f"must equal spec.clusterIP {single!r}, got {many[0]!r}",
            "inconsistent_cluster_ip",
        )
    if many:
        fields = [f"spec.clusterIPs[{i}]" for i in range(len(many))]
    else:
        many, fields = ((single,), ["spec.clusterIP"]) if single else ((), [])
    if many and many[0] == "None":
        if len(many) > 1:
            r.fail(fields[1], "a headless service has no other cluster IPs", "invalid_ip")
        return True, ()
    if len(many) > 2:
        r.fail("spec.clusterIPs", "at most two entries (one per IP family)", "invalid_ip")
    ips = tuple(r.ip(v, f) for v, f in zip(many, fields, strict=True))
    if len(ips) == 2 and ip_family(ips[0]) is ip_family(ips[1]):
        r.fail(fields[1], "must be of the other IP family than spec.clusterIPs[0]", "invalid_ip")
    return False, ips


def _service_ports(r: _Reader, value: object) -> tuple[PortSpec, ...]:
    ports: list[PortSpec] = []
    seen: set[tuple[str, Protocol]] = set()
    for i, item in enumerate(r.seq(value, "spec.ports")):
        field = f"spec.ports[{i}]"
        entry = r.item(item, field)
        spec = PortSpec(
            *_port(r, entry, field),
            node_port=r.opt_port(entry.get("nodePort"), f"{field}.nodePort"),
        )
        if (spec.name, spec.protocol) in seen:
            r.fail(
                f"{field}.name", f"duplicate port {spec.name!r}/{spec.protocol}", "duplicate_port"
            )
        seen.add((spec.name, spec.protocol))
        ports.append(spec)
    return tuple(ports)


def _load_balancer_ips(r: _Reader, status: _Json) -> tuple[str, ...]:
    lb = r.mapping(status.get("loadBalancer"), "status.loadBalancer")
    ips: list[str] = []
    for i, item in enumerate(r.seq(lb.get("ingress"), "status.loadBalancer.ingress")):
        field = f"status.loadBalancer.ingress[{i}]"
        entry = r.item(item, field)
        mode = r.opt_string(entry.get("ipMode"), f"{field}.ipMode") or "VIP"
        if mode not in _LB_IP_MODES:
            r.fail(f"{field}.ipMode", f"must be VIP or Proxy, got {mode!r}", "invalid_ip_mode")
        ip = r.opt_string(entry.get("ip"), f"{field}.ip")
        if not ip:
            continue  # hostname-only ingress: nothing to program
        ip = r.ip(ip, f"{field}.ip")
        if mode == "VIP":
            ips.append(ip)
    return tuple(ips)


def _session_affinity_timeout(r: _Reader, spec: _Json) -> int | None:
    affinity = r.opt_string(spec.get("sessionAffinity"), "spec.sessionAffinity") or "None"
    if affinity not in _SESSION_AFFINITIES:
        r.fail(
            "spec.sessionAffinity",
            f"must be None or ClientIP, got {affinity!r}",
            "invalid_session_affinity",
        )
    if affinity == "None":
        return None
    field = "spec.sessionAffinityConfig"
    config = r.mapping(spec.get("sessionAffinityConfig"), field)
    client_ip = r.mapping(config.get("clientIP"), f"{field}.clientIP")
    timeout = client_ip.get("timeoutSeconds")
    if timeout is None:
        return _DEFAULT_AFFINITY_TIMEOUT
    return r.integer(
        timeout, f"{field}.clientIP.timeoutSeconds", 1, _MAX_AFFINITY_TIMEOUT, "invalid_timeout"
    )


def _split_scopes(value: str) -> tuple[str, ...]:
    """``openyurt.io/topologyKeys``: an ordered, comma-separated list of scopes."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _ipvs_scheduler(annotations: Mapping[str, str]) -> str | None:
    """proxyd's own annotation first, then kube-router's spelling of the same thing."""
    for key in _ANN_IPVS_SCHEDULER:
        value = annotations.get(key, "").strip()
        if value:
            return value
    return None


# --- EndpointSlice -----------------------------------------------------------------------


def endpoint_slice(obj: _Json) -> EndpointSlice:
    """A discovery.k8s.io/v1 EndpointSlice, joined to its Service by label."""
    meta = _meta(obj, "EndpointSlice", namespaced=True)
    r = meta.reader
    service_name = meta.labels.get(_LABEL_SERVICE_NAME)
    if not service_name:
        r.fail(
            f'metadata.labels["{_LABEL_SERVICE_NAME}"]',
            "is required (it names the slice's Service)",
            "missing_service_name",
        )
    address_type = r.enum(
        obj.get("addressType"), "addressType", AddressType, "invalid_address_type"
    )
    return EndpointSlice(
        namespace=meta.namespace,
        name=meta.name,
        service=ServiceRef(meta.namespace, service_name),
        address_type=address_type,
        ports=_slice_ports(r, obj.get("ports")),
        endpoints=tuple(
            _slice_endpoint(r, item, f"endpoints[{i}]", address_type)
            for i, item in enumerate(r.seq(obj.get("endpoints"), "endpoints"))
        ),
        trigger_time=_epoch(meta.annotations.get(_ANN_TRIGGER_TIME, "")),
    )


def _slice_ports(r: _Reader, value: object) -> tuple[EndpointPort, ...]:
    ports: list[EndpointPort] = []
    for i, item in enumerate(r.seq(value, "ports")):
        field = f"ports[{i}]"
        entry = r.item(item, field)
        if entry.get("port") is None:
            continue  # "not restricted": nothing a proxy can program
        ports.append(EndpointPort(*_port(r, entry, field)))
    return tuple(ports)


def _port(r: _Reader, entry: _Json, field: str) -> tuple[str, Protocol, int]:
    """Name, protocol and number of a Service's or an EndpointSlice's port entry: both
    APIs spell them alike and default a missing name to "" and protocol to TCP."""
    name = r.opt_string(entry.get("name"), f"{field}.name") or ""
    protocol = r.enum(
        entry.get("protocol"), f"{field}.protocol", Protocol, "invalid_protocol", Protocol.TCP
    )
    return name, protocol, r.port(entry.get("port"), f"{field}.port")


def _slice_endpoint(
    r: _Reader, item: object, field: str, address_type: AddressType
) -> SliceEndpoint:
    entry = r.item(item, field)
    addresses = r.seq(entry.get("addresses"), f"{field}.addresses")
    if not addresses:
        r.fail(f"{field}.addresses", "needs at least one address", "missing_address")
    checked = [
        _address(r, value, f"{field}.addresses[{i}]", address_type)
        for i, value in enumerate(addresses)
    ]
    conditions = r.mapping(entry.get("conditions"), f"{field}.conditions")
    ready = r.opt_bool(conditions.get("ready"), f"{field}.conditions.ready")
    ready = True if ready is None else ready
    serving = r.opt_bool(conditions.get("serving"), f"{field}.conditions.serving")
    terminating = r.opt_bool(conditions.get("terminating"), f"{field}.conditions.terminating")
    hints = r.mapping(entry.get("hints"), f"{field}.hints")
    topology = r.string_map(entry.get("deprecatedTopology"), f"{field}.deprecatedTopology")
    return SliceEndpoint(
        ip=checked[0],
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=bool(terminating),
        node_name=r.opt_string(entry.get("nodeName"), f"{field}.nodeName") or None,
        zone=r.opt_string(entry.get("zone"), f"{field}.zone") or None,
        hints_zones=_hint_names(r, hints.get("forZones"), f"{field}.hints.forZones"),
        hints_nodes=_hint_names(r, hints.get("forNodes"), f"{field}.hints.forNodes"),
        topology=tuple(sorted(topology.items())),
    )


def _address(r: _Reader, value: object, field: str, address_type: AddressType) -> str:
    if address_type is AddressType.FQDN:
        return r.string(value, field, "missing_address")
    return r.ip(value, field, IPFamily(address_type.value))


def _hint_names(r: _Reader, value: object, field: str) -> frozenset[str] | None:
    """``[{name: …}, …]`` → names; absent → None (no hint), [] → empty set."""
    if value is None:
        return None
    return frozenset(
        r.string(r.item(item, f"{field}[{i}]").get("name"), f"{field}[{i}].name", "missing_name")
        for i, item in enumerate(r.seq(value, field))
    )


def _epoch(value: str) -> float | None:
    """RFC 3339 → epoch seconds; None when absent, unparsable or without a UTC offset."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


# --- Node, NodePool ----------------------------------------------------------------------


#: The taint the cluster autoscaler puts on a node it is about to delete.
_TAINT_TO_BE_DELETED = "ToBeDeletedByClusterAutoscaler"


def node(obj: _Json) -> NodeInfo:
    """A v1 Node: its labels, its InternalIP/ExternalIP addresses (in listed order), and
    whether it is being deleted (``metadata.deletionTimestamp`` set, or the autoscaler's
    ``ToBeDeletedByClusterAutoscaler`` taint — kube-proxy's test for ``nodeEligible``)."""
    meta = _meta(obj, "Node", namespaced=False)
    r = meta.reader
    md = r.mapping(obj.get("metadata"), "metadata")
    deleting = bool(r.opt_string(md.get("deletionTimestamp"), "metadata.deletionTimestamp"))
    spec = r.mapping(obj.get("spec"), "spec")
    for i, taint in enumerate(r.seq(spec.get("taints"), "spec.taints")):
        key = r.opt_string(r.item(taint, f"spec.taints[{i}]").get("key"), f"spec.taints[{i}].key")
        deleting |= key == _TAINT_TO_BE_DELETED
    status = r.mapping(obj.get("status"), "status")
    addresses: list[str] = []
    for i, item in enumerate(r.seq(status.get("addresses"), "status.addresses")):
        field = f"status.addresses[{i}]"
        entry = r.item(item, field)
        if entry.get("type") not in _NODE_ADDRESS_TYPES:
            continue  # Hostname, InternalDNS, …
        ip = r.ip(entry.get("address"), f"{field}.address")
        if ip not in addresses:
            addresses.append(ip)
    return NodeInfo(
        name=meta.name,
        labels=tuple(sorted(meta.labels.items())),
        addresses=tuple(addresses),
        being_deleted=deleting,
    )


def node_pool(obj: _Json) -> NodePool:
    """An OpenYurt NodePool of any ``apps.openyurt.io`` version; members from status."""
    meta = _meta(obj, "NodePool", namespaced=False)
    status = meta.reader.mapping(obj.get("status"), "status")
    return NodePool(
        name=meta.name, nodes=frozenset(meta.reader.strings(status.get("nodes"), "status.nodes"))
    )


# --- dispatch ----------------------------------------------------------------------------

_BY_VERSION: Mapping[tuple[str, str], Callable[[_Json], Translated]] = {
    ("v1", "Service"): service,
    ("discovery.k8s.io/v1", "EndpointSlice"): endpoint_slice,
    ("v1", "Node"): node,
}
_BY_GROUP: Mapping[tuple[str, str], Callable[[_Json], Translated]] = {
    (_NODEPOOL_GROUP, "NodePool"): node_pool,
}


def translate_object(obj: _Json) -> Translated | None:
    """Translate any object by its ``apiVersion``/``kind``; None for kinds proxyd ignores."""
    obj = _Reader("object").item(obj, "(object)")  # e.g. a watch event holding a list
    md = obj.get("metadata")
    name = md.get("name") if isinstance(md, Mapping) else None
    r = _Reader(f"object {name}" if isinstance(name, str) and name else "object")
    api_version = r.string(obj.get("apiVersion"), "apiVersion", "missing_api_version")
    kind = r.string(obj.get("kind"), "kind", "missing_kind")
    translator = _BY_VERSION.get((api_version, kind)) or _BY_GROUP.get(
        (api_version.rpartition("/")[0], kind)
    )
    return None if translator is None else translator(obj)
