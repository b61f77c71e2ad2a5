"""``proxyd run`` configuration: defaults < YAML config file < command-line flags.

The file uses KubeProxyConfiguration's field names where they mean the same thing
(``clusterCIDR``, ``mode``, ``iptables.syncPeriod`` …), so an operator's kube-proxy
config file mostly carries over; kube-proxy fields proxyd does not implement are
accepted and reported as ignored, anything else is an error (a typo must not silently
fall back to a default). proxyd's own fields (``proxyName``, ``iptablesBackend``,
``logFormat``, ``logLevel``; ``interface`` in the ``ipvs`` section) sit beside them.
``ipvs.strictARP`` means what it means to kube-proxy: in IPVS mode the node stops
answering ARP for addresses it holds only on the IPVS device (MetalLB's L2 mode needs it).
The ``conntrack`` section tunes the node's connection tracking at start as kube-proxy's
does (``proxyd.conntrack_tuning``); 0 in any of its fields leaves that setting alone.
Durations use Go's spelling (``30s``, ``1m30s``, ``500ms``), as in kube-proxy's file.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any, TypeVar

import yaml

from proxyd.errors import InputError

__all__ = [
    "DEFAULT_IPVS_INTERFACE",
    "Config",
    "IptablesBackendChoice",
    "LogFormat",
    "ProxyMode",
    "interface_name",
    "load_file",
    "parse_bind_address",
    "parse_duration",
    "resolve",
]


class ProxyMode(StrEnum):
    IPTABLES = "iptables"
    IPVS = "ipvs"


class IptablesBackendChoice(StrEnum):
    AUTO = "auto"
    NFT = "nft"
    LEGACY = "legacy"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


_LOG_LEVELS = ("debug", "info", "warning", "error")
#: IPVS mode's device; kube-proxy's ``kube-ipvs0`` only when replacing it (DESIGN §3)
DEFAULT_IPVS_INTERFACE = "proxyd-ipvs0"
_E = TypeVar("_E", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``proxyd run`` needs, resolved and validated.

    ``sync_period``/``min_sync_period`` are the values for the chosen mode (kube-proxy
    keeps one pair per mode in its file). An empty bind address disables that server.
    """

    node_name: str
    kubeconfig: str | None = None
    proxy_mode: ProxyMode = ProxyMode.IPTABLES
    ipvs_scheduler: str = "rr"
    ipvs_interface: str = DEFAULT_IPVS_INTERFACE
    ipvs_strict_arp: bool = False
    cluster_cidr: str | None = None
    nodeport_addresses: tuple[str, ...] = ()
    masquerade_all: bool = False
    masquerade_bit: int = 14
    localhost_nodeports: bool = True
    metrics_bind_address: str = "127.0.0.1:10249"
    healthz_bind_address: str = "0.0.0.0:10256"
    sync_period: float = 30.0
    min_sync_period: float = 1.0
    proxy_name: str = "proxyd"
    iptables_backend: IptablesBackendChoice = IptablesBackendChoice.AUTO
    log_format: LogFormat = LogFormat.TEXT
    log_level: str = "info"
    # kube-proxy's conntrack section and defaults; 0 leaves the kernel's value alone
    conntrack_max_per_core: int = 32768
    conntrack_min: int = 131072
    conntrack_tcp_timeout_established: float = 86400.0
    conntrack_tcp_timeout_close_wait: float = 3600.0
    conntrack_tcp_be_liberal: bool = False
    conntrack_udp_timeout: float = 0.0
    conntrack_udp_timeout_stream: float = 0.0


# --- durations and addresses -----------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str, *, where: str = "duration") -> float:
    """Go-style duration (``30s``, ``1m30s``, ``250ms``) → seconds; a bare number is
    seconds (kube-proxy's flags need a unit; accepting none avoids a surprise)."""
    value = text.strip()
    try:
        return _non_negative(float(value), value, where)
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise InputError(where, where, f"{text!r} is not a duration like 30s, 1m or 500ms",
                         reason="bad_duration")
    return _non_negative(total, value, where)


def _non_negative(seconds: float, text: str, where: str) -> float:
    if seconds < 0 or not seconds < float("inf"):
        raise InputError(where, where, f"{text!r} must be a finite duration >= 0",
                         reason="bad_duration")
    return seconds


def interface_name(text: str) -> str:
    """A network device name the kernel accepts (1-15 bytes, no ``/``, ``:`` or
    whitespace, not ``.``/``..``); ValueError otherwise, so argparse can use it as a type."""
    if (
        not 0 < len(text.encode()) <= 15
        or text in (".", "..")
        or any(c in "/:" or c.isspace() for c in text)
    ):
        raise ValueError(f"{text!r} is not a network device name (1-15 bytes, no / : or spaces)")
    return text


def parse_bind_address(text: str, *, where: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` → (host, port); empty → None (server disabled)."""
    if not text:
        return None
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
        if not sep or not 0 <= port <= 65535:
            raise ValueError(port_text)
        ipaddress.ip_address(host)
    except ValueError:
        raise InputError(where, where, f"{text!r} is not IP:port", reason="bad_address") from None
    return host, port


# --- the config file --------------------------------------------------------------------

# Field names of KubeProxyConfiguration that proxyd reads, mapped to Config fields.
_TOP = {
    "clusterCIDR": "cluster_cidr",
    "mode": "proxy_mode",
    "metricsBindAddress": "metrics_bind_address",
    "healthzBindAddress": "healthz_bind_address",
    "hostnameOverride": "node_name",
    "nodePortAddresses": "nodeport_addresses",
    "proxyName": "proxy_name",
    "iptablesBackend": "iptables_backend",
    "logFormat": "log_format",
    "logLevel": "log_level",
}
_IPTABLES = {
    "masqueradeAll": "masquerade_all",
    "masqueradeBit": "masquerade_bit",
    "syncPeriod": "iptables.sync_period",
    "minSyncPeriod": "iptables.min_sync_period",
    "localhostNodePorts": "localhost_nodeports",
}
_IPVS = {
    "scheduler": "ipvs_scheduler",
    "interface": "ipvs_interface",  # proxyd's own
    "strictARP": "ipvs_strict_arp",
    "syncPeriod": "ipvs.sync_period",
    "minSyncPeriod": "ipvs.min_sync_period",
}
_CLIENT_CONNECTION = {"kubeconfig": "kubeconfig"}
_CONNTRACK = {
    "maxPerCore": "conntrack_max_per_core",
    "min": "conntrack_min",
    "tcpEstablishedTimeout": "conntrack_tcp_timeout_established",
    "tcpCloseWaitTimeout": "conntrack_tcp_timeout_close_wait",
    "tcpBeLiberal": "conntrack_tcp_be_liberal",
    "udpTimeout": "conntrack_udp_timeout",
    "udpStreamTimeout": "conntrack_udp_timeout_stream",
}
# KubeProxyConfiguration fields proxyd accepts but does not implement (reported).
_IGNORED_TOP = frozenset({
    "bindAddress", "bindAddressHardFail", "configSyncPeriod",
    "detectLocal", "detectLocalMode", "enableProfiling", "featureGates",
    "logging", "nftables", "oomScoreAdj", "portRange", "showHiddenMetricsForVersion",
    "winkernel", "windowsRunAsService", "linux",
})
_IGNORED_IPTABLES: frozenset[str] = frozenset()
_IGNORED_IPVS = frozenset({
    "excludeCIDRs", "tcpTimeout", "tcpFinTimeout", "udpTimeout",
})
_IGNORED_CLIENT = frozenset({"acceptContentTypes", "burst", "contentType", "qps"})
# ``max``: kube-proxy's absolute limit, removed long ago; old files still carry it
_IGNORED_CONNTRACK = frozenset({"max"})
# Keys that are structure, not settings: the type header and the sections read below.
_STRUCTURE = frozenset({
    "apiVersion", "kind", "iptables", "ipvs", "clientConnection", "conntrack",
})


def load_file(path: str) -> tuple[dict[str, Any], list[str]]:
    """Read a config file → (raw values keyed by internal name, notes about ignored
    fields). Values are validated later by :func:`resolve`, together with the flags."""
    where = f"config file {path}"
    try:
        with open(path, encoding="utf-8") as handle:
            doc = yaml.safe_load(handle)
    except OSError as exc:
        raise InputError(where, "-", exc.strerror or str(exc), reason="unreadable") from exc
    except UnicodeDecodeError as exc:
        raise InputError(where, "-", "not UTF-8 text", reason="not_yaml") from exc
    except RecursionError as exc:
        raise InputError(where, "-", "not YAML: nested too deeply", reason="not_yaml") from exc
    except (yaml.YAMLError, ValueError, AttributeError) as exc:
        # PyYAML lets ValueError/AttributeError escape on e.g. ``!!int x``, ``!!timestamp x``
        raise InputError(where, "-", f"not YAML: {exc}", reason="not_yaml") from exc
    if doc is None:
        return {}, []
    values: dict[str, Any] = {}
    notes: list[str] = []
    _read_section(doc, "", _TOP, _IGNORED_TOP, values, notes, where, skip=_STRUCTURE)
    for section, known, ignored in (
        ("iptables", _IPTABLES, _IGNORED_IPTABLES),
        ("ipvs", _IPVS, _IGNORED_IPVS),
        ("clientConnection", _CLIENT_CONNECTION, _IGNORED_CLIENT),
        ("conntrack", _CONNTRACK, _IGNORED_CONNTRACK),
    ):
        sub = doc.get(section)
        if sub is not None:
            _read_section(sub, f"{section}.", known, ignored, values, notes, where)
    return values, notes


def _read_section(
    doc: object,
    prefix: str,
    known: Mapping[str, str],
    ignored: frozenset[str],
    values: dict[str, Any],
    notes: list[str],
    where: str,
    skip: frozenset[str] = frozenset(),
) -> None:
    if not isinstance(doc, dict):
        raise InputError(where, prefix.rstrip(".") or "-", "must be a mapping",
                         reason="not_mapping")
    for key in sorted(doc, key=str):  # YAML keys need not be strings (``1: x``)
        if key in known:
            if doc[key] is not None and doc[key] != "":
                values[known[key]] = doc[key]
        elif key in ignored:
            notes.append(f"{where}: {prefix}{key} is not implemented by proxyd; ignored")
        elif key not in skip:
            shown = key if isinstance(key, str) and key else repr(key)  # '' or 1, visibly
            raise InputError(where, f"{prefix}{shown}", "unknown field", reason="unknown_field")


# --- resolution -------------------------------------------------------------------------


def resolve(
    file_values: Mapping[str, Any],
    flag_values: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    hostname: str | None = None,
) -> Config:
    """Merge file and flags (flags win) into a validated :class:`Config`.

    Keys are Config field names; the file may also carry ``iptables.*``/``ipvs.*``
    periods, of which the chosen mode's pair applies. The node name comes from the flag,
    else ``hostnameOverride``, else ``NODE_NAME``, else the host name (lower-cased,
    as the kubelet registers it).
    """
    merged: dict[str, Any] = {**file_values, **{k: v for k, v in flag_values.items()
                                                 if v is not None}}
    where = "configuration"
    mode = _enum(ProxyMode, merged.pop("proxy_mode", ProxyMode.IPTABLES), "mode")
    for key in ("sync_period", "min_sync_period"):
        for m in ProxyMode:
            mode_value = merged.pop(f"{m.value}.{key}", None)
            if m is mode and key not in merged and mode_value is not None:
                merged[key] = mode_value
    node = merged.pop("node_name", None) or env.get("NODE_NAME") or hostname
    if node is None:
        node = socket.gethostname()
    node = _text("hostnameOverride", node).strip().lower()
    if not node:
        raise InputError(where, "hostnameOverride", "node name is empty", reason="no_node_name")

    unknown = set(merged) - {f.name for f in fields(Config)}
    if unknown:
        raise InputError(where, ", ".join(sorted(unknown)), "unknown setting",
                         reason="unknown_field")
    cfg = Config(node_name=node, proxy_mode=mode)
    cfg = replace(cfg, **{k: _convert(k, v) for k, v in merged.items()})
    _validate(cfg)
    return cfg


def _enum(kind: type[_E], value: object, field: str) -> _E:
    try:
        return kind(str(value).lower())
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise InputError("configuration", field, f"{value!r} is not one of {allowed}",
                         reason="bad_value") from None


def _convert(key: str, value: Any) -> Any:
    """Coerce one raw value (from YAML or argparse) to its Config field type."""
    match key:
        case "sync_period" | "min_sync_period":
            return parse_duration(str(value), where=key)  # a YAML float too: NaN, -1.0 …
        case (
            "conntrack_tcp_timeout_established" | "conntrack_tcp_timeout_close_wait"
            | "conntrack_udp_timeout" | "conntrack_udp_timeout_stream"
        ):
            return _conntrack_timeout(key, value)
        case "conntrack_max_per_core" | "conntrack_min":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
                raise InputError("configuration", key, f"{value!r} is not an integer >= 0",
                                 reason="bad_value")
            return value
        case (
            "masquerade_all" | "ipvs_strict_arp" | "localhost_nodeports"
            | "conntrack_tcp_be_liberal"
        ):
            if not isinstance(value, bool):
                raise InputError("configuration", key, f"{value!r} is not a boolean",
                                 reason="bad_value")
            return value
        case "masquerade_bit":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 31:
                raise InputError("configuration", key, f"{value!r} is not an integer 0..31",
                                 reason="bad_value")
            return value
        case "nodeport_addresses":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list | tuple):
                raise InputError("configuration", key, "must be a list of CIDRs",
                                 reason="bad_value")
            return tuple(str(i).strip() for i in items if str(i).strip())
        case "iptables_backend":
            return _enum(IptablesBackendChoice, value, key)
        case "log_format":
            return _enum(LogFormat, value, key)
        case "log_level":
            return str(value).lower()
        case _:
            return None if value is None else _text(key, value)


def _text(key: str, value: object) -> str:
    """A string setting; a YAML scalar is taken as written (``proxyName: 7``), but a list
    or mapping is a mistake, not a name."""
    if isinstance(value, list | dict):
        raise InputError("configuration", key, f"must be a string, got {type(value).__name__}",
                         reason="bad_value")
    return str(value)


def _conntrack_timeout(key: str, value: Any) -> float:
    """A conntrack timeout: 0 (leave the kernel's alone) or whole seconds, as the kernel
    counts them (a fraction is dropped, as kube-proxy does). Below 1s is refused: kube-proxy
    would write 0, which expires every such connection at once."""
    seconds = parse_duration(str(value), where=key)
    if 0 < seconds < 1:
        raise InputError("configuration", key, f"{value!r} must be 0 (leave as is) or >= 1s",
                         reason="bad_value")
    return float(int(seconds))


def _validate(cfg: Config) -> None:
    where = "configuration"
    if cfg.sync_period <= 0:
        raise InputError(where, "syncPeriod", "must be > 0", reason="bad_value")
    if cfg.min_sync_period > cfg.sync_period:
        raise InputError(where, "minSyncPeriod", "must not exceed syncPeriod", reason="bad_value")
    if cfg.log_level not in _LOG_LEVELS:
        raise InputError(where, "logLevel", f"{cfg.log_level!r} is not one of "
                         f"{', '.join(_LOG_LEVELS)}", reason="bad_value")
    try:
        interface_name(cfg.ipvs_interface)
    except ValueError as exc:
        raise InputError(where, "ipvs.interface", str(exc), reason="bad_value") from None
    parse_bind_address(cfg.metrics_bind_address, where="metricsBindAddress")
    parse_bind_address(cfg.healthz_bind_address, where="healthzBindAddress")
    cluster_cidrs = cfg.cluster_cidr.split(",") if cfg.cluster_cidr else []
    for cidr in (*cfg.nodeport_addresses, *cluster_cidrs):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise InputError(where, "clusterCIDR/nodePortAddresses",
                             f"{cidr!r} is not a CIDR", reason="bad_cidr") from None
