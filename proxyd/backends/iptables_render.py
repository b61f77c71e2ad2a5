"""Pure rendering of a :class:`~proxyd.model.NodePlan` into ``iptables-restore`` text.

The layout is kube-proxy's, under proxyd's own ``PROXYD-`` prefix so both can run side by
side during a migration (DESIGN §3). Per family (IPv4 → ``iptables-restore``, IPv6 →
``ip6tables-restore``) one payload holds two tables, ``filter`` first and ``nat`` last:
each ``COMMIT`` is atomic on its own, and ``nat`` (the only table with per-service chains)
commits last, so a failed payload leaves ``nat`` exactly as it was.

nat::

    PREROUTING, OUTPUT ─► PROXYD-SERVICES ─┬─ cluster IP ─────────► SVC (or SVL for iTP=Local)
                                            ├─ external IP ────────► EXT
                                            ├─ LB IP ──────────────► FW (source ranges) ─► EXT
                                            └─ local dst (last) ───► PROXYD-NODEPORTS ─► EXT
    EXT: eTP=Cluster → mark for masquerade, SVC;  eTP=Local → pod/local sources to SVC, else SVL
    SVC/SVL ─► SEP-… (``-m statistic`` spread, ``-m recent`` affinity) ─► DNAT
    POSTROUTING ─► PROXYD-POSTROUTING: MASQUERADE --random-fully what PROXYD-MARK-MASQ marked

filter: ``PROXYD-SERVICES`` (REJECT cluster IPs without endpoints), ``PROXYD-EXTERNAL-SERVICES``
(REJECT, or DROP for eTP=Local without a local endpoint), ``PROXYD-PROXY-FIREWALL`` (DROP LB
traffic the FW chain did not admit), ``PROXYD-NODEPORTS`` (ACCEPT health check node ports),
``PROXYD-FORWARD`` (drop ctstate INVALID, accept marked and established traffic),
``PROXYD-FIREWALL`` (with localhost NodePorts: drop packets to 127.0.0.0/8 from elsewhere).

Chain names hash the service port's identity (and the endpoint for SEP chains), so they
are stable across restarts. Each service port renders to a cached :class:`ServiceRules`;
:func:`render` writes the rules of services whose rules changed and only *counts* the rest
(a counting sink), rewrites a shared chain only when one of its lines changed, and
deletes stale chains (flush, then ``-X``) in the same restore. The jump rules from the
built-in chains cannot be appended idempotently by a ``--noflush`` restore; the apply
layer lists those chains and passes the :class:`Jump` s that are missing, which are then
inserted (first in their chain, as kube-proxy does) in the same payload.

Decisions where kube-proxy's behaviour needed a choice:

- An empty ``internal`` set REJECTs cluster IPs (the plan's contract), also when only
  external endpoints exist; external destinations without endpoints are REJECTed when
  the service has none at all and DROPped when only the local ones are missing.
- SVC holds the endpoints for cluster traffic (SVL with iTP=Local), SVL those for external
  traffic with eTP=Local; when a plan gives one chain two different sets, SVC takes the
  internal and SVL the external one. With both policies Local, SVC holds the plan's
  ``cluster`` set, where the EXT chain sends this node's pods and the node itself (as
  kube-proxy writes KUBE-SVC next to KUBE-SVL); external destinations of a port without
  local endpoints then still get nat rules for them, and the filter table DROPs the rest.
- NodePorts answer on every local address (``--nodeport-addresses`` narrows them to local
  addresses in those CIDRs); on IPv4 loopback only with ``localhost_nodeports`` (see
  :func:`localhost_nodeports`), on IPv6 loopback never. A CIDR that holds loopback but
  loopback is excluded is split around it; ``0.0.0.0/0`` and ``::/0`` mean "all".
- ``loadBalancerSourceRanges`` of the other family admit nothing: an LB IP of a family
  without ranges of its own is closed, not open. Ranges that hold one of the node's
  addresses (``NodePlan.node_addresses``) also admit the LB IPs as sources, as kube-proxy
  does for its node IP: the node's own requests to an LB IP that is local to it.
- Only the first ``--cluster-cidr`` of each family decides masquerading (one ``! -s``).
- Comments are dropped from per-endpoint rules once the plan has more than
  :data:`COMMENT_ENDPOINT_LIMIT` cluster endpoints (both families counted).
- Large nat payloads for iptables-nft start with a chain-less ``-S``
  (:func:`_nft_cache_hint`): without it, iptables-nft 1.8.9 takes hours at 10,000 services.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import itertools
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from proxyd.model import (
    Endpoint,
    IPFamily,
    NodePlan,
    ServicePlan,
    ServicePortKey,
    TrafficPolicy,
)

__all__ = [
    "COMMENT_ENDPOINT_LIMIT",
    "EXTERNAL_SERVICES",
    "FIREWALL",
    "FORWARD",
    "JUMPS",
    "KUBE_PROXY",
    "LOCALNET_FIREWALL",
    "MARK_MASQ",
    "MAX_CHAIN_NAME",
    "NFT_CHAIN_LIST_LIMIT",
    "NODEPORTS",
    "OWN_PREFIXES",
    "POSTROUTING",
    "PROXYD",
    "SERVICES",
    "TABLES",
    "ChainOwner",
    "FamilyState",
    "Jump",
    "Payload",
    "RenderOptions",
    "SavedTable",
    "ServiceRules",
    "Shared",
    "chain_name",
    "escape_comment",
    "jump_target",
    "localhost_nodeports",
    "missing_jumps",
    "parse_save",
    "render",
    "render_cleanup",
    "render_service",
]

MAX_CHAIN_NAME = 28  # XT_EXTENSION_MAXNAMELEN - 1
COMMENT_ENDPOINT_LIMIT = 1000  # above this, per-endpoint rules carry no comment (as kube-proxy)
_COMMENT_MAX = 255  # XT_MAX_COMMENT_LEN - 1

TABLES = ("filter", "nat")  # payload order: nat last, see the module docstring

SERVICES = "PROXYD-SERVICES"  # in nat and in filter
NODEPORTS = "PROXYD-NODEPORTS"  # in nat and in filter
EXTERNAL_SERVICES = "PROXYD-EXTERNAL-SERVICES"
FIREWALL = "PROXYD-PROXY-FIREWALL"
FORWARD = "PROXYD-FORWARD"
MARK_MASQ = "PROXYD-MARK-MASQ"
POSTROUTING = "PROXYD-POSTROUTING"
#: kube-proxy's KUBE-FIREWALL: the martian guard localhost NodePorts need (filter only)
LOCALNET_FIREWALL = "PROXYD-FIREWALL"

_SVC = "PROXYD-SVC-"
_SVL = "PROXYD-SVL-"
_EXT = "PROXYD-EXT-"
_FW = "PROXYD-FW-"
_SEP = "PROXYD-SEP-"
#: Prefixes of proxyd's per-service chains; with the static chains, all proxyd owns.
OWN_PREFIXES = (_SVC, _SVL, _EXT, _FW, _SEP)

_STATIC: Mapping[str, tuple[str, ...]] = {
    "filter": (SERVICES, EXTERNAL_SERVICES, NODEPORTS, FIREWALL, FORWARD, LOCALNET_FIREWALL),
    "nat": (SERVICES, NODEPORTS, MARK_MASQ, POSTROUTING),
}


@dataclass(frozen=True, slots=True)
class ChainOwner:
    """Which chains belong to one proxy: cleanup and stale-chain deletion touch only these."""

    chains: frozenset[str]
    prefixes: tuple[str, ...]

    def owns(self, chain: str) -> bool:
        return chain in self.chains or chain.startswith(self.prefixes)


PROXYD = ChainOwner(frozenset(c for cs in _STATIC.values() for c in cs), OWN_PREFIXES)
#: What kube-proxy (iptables and ipvs modes) leaves behind. The kubelet's own chains
#: (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT, KUBE-MARK-DROP) are not in it.
KUBE_PROXY = ChainOwner(
    frozenset(
        {
            "KUBE-SERVICES",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
            "KUBE-FORWARD",
            "KUBE-PROXY-FIREWALL",
            "KUBE-PROXY-CANARY",
            "KUBE-LOAD-BALANCER",
            "KUBE-NODE-PORT",
            "KUBE-IPVS-FILTER",
            "KUBE-IPVS-OUT-FILTER",
            "KUBE-SOURCE-RANGES-FIREWALL",
        }
    ),
    ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-", "KUBE-XLB-"),
)


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # RFC 4648 base32 alphabet
_B32_PAIRS = tuple(a + b for a in _B32 for b in _B32)  # 10 bits -> 2 characters
_SHIFTS = (70, 60, 50, 40, 30, 20, 10, 0)


def chain_name(prefix: str, *parts: str) -> str:
    """``prefix`` + 16 base32 characters of sha256 over ``parts`` (NUL-separated so that
    ``("a", "bc")`` and ``("ab", "c")`` differ). Stable across restarts and versions."""
    # The first 16 base32 characters are the first 80 bits; spelled out here because
    # base64.b32encode is pure Python and this runs once per endpoint.
    bits = int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:10], "big")
    name = prefix + "".join([_B32_PAIRS[(bits >> shift) & 1023] for shift in _SHIFTS])
    assert len(name) <= MAX_CHAIN_NAME, name
    return name


def escape_comment(text: str) -> str:
    """``text`` as one quoted restore token: non-printables replaced, cut to the kernel's
    255 bytes, backslash and double quote escaped (restore unescapes both)."""
    plain = len(text) <= _COMMENT_MAX and text.isascii() and text.isprintable()
    if plain and '"' not in text and "\\" not in text:
        return f'"{text}"'  # the common case, kept cheap: rendering calls this per endpoint
    clean = "".join(ch if ch.isprintable() else "?" for ch in text)
    clean = clean.encode()[:_COMMENT_MAX].decode("utf-8", "ignore")
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    return f"-m comment --comment {escape_comment(text)}"


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """Rule shape beyond the plan, named after kube-proxy's flags.

    ``cluster_cidrs``: traffic to a cluster IP from outside these is masqueraded (the first
    CIDR of each family is used). ``nodeport_addresses``: NodePorts answer only on local
    addresses inside these CIDRs (default: every local address). ``localhost_nodeports``:
    IPv4 NodePorts also answer on 127.0.0.0/8 when ``nodeport_addresses`` hold it
    (kube-proxy's ``iptables.localhostNodePorts``); off by default here because it only
    works with ``route_localnet=1``, which the backend must set (``proxyd run`` turns it
    on). ``masquerade_bit``: the fwmark bit for "masquerade this" (14 → 0x4000)::

        RenderOptions(cluster_cidrs=("10.244.0.0/16",), nodeport_addresses=("10.0.0.0/8",))
    """

    cluster_cidrs: tuple[str, ...] = ()
    masquerade_all: bool = False
    nodeport_addresses: tuple[str, ...] = ()
    masquerade_bit: int = 14
    localhost_nodeports: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.masquerade_bit <= 31:
            raise ValueError(f"masquerade bit {self.masquerade_bit} not in 0..31")

    @property
    def mark(self) -> str:
        return f"{1 << self.masquerade_bit:#x}"


def _is_v6(addr: str) -> bool:
    return ":" in addr  # addresses are validated by translate.py


def _of(addrs: Iterable[str], v6: bool) -> tuple[str, ...]:
    return tuple(a for a in addrs if _is_v6(a) == v6)


_LOOPBACK4 = ipaddress.IPv4Network("127.0.0.0/8")
_LOOPBACK6 = ipaddress.IPv6Network("::1/128")


def localhost_nodeports(options: RenderOptions) -> bool:
    """Whether IPv4 NodePorts answer on 127.0.0.0/8: the option is on and the NodePort
    addresses hold loopback (all addresses, or a CIDR overlapping 127.0.0.0/8), as
    kube-proxy decides it. The backend must then set ``route_localnet=1`` and the filter
    table drops martians to 127.0.0.0/8 (CVE-2020-8558)."""
    if not options.localhost_nodeports:
        return False
    if not options.nodeport_addresses:
        return True
    nets = (ipaddress.ip_network(c, strict=False) for c in _of(options.nodeport_addresses, False))
    return any(net.overlaps(_LOOPBACK4) for net in nets)


@functools.lru_cache(maxsize=16)
def _nodeport_destinations(options: RenderOptions, v6: bool) -> tuple[str, ...]:
    """Destination matches that select NodePort traffic (one rule each). Loopback is cut
    out unless :func:`localhost_nodeports` (never for IPv6); one iptables rule takes one
    ``-d``, so a CIDR around loopback becomes the CIDRs around it."""
    loopback = _LOOPBACK6 if v6 else _LOOPBACK4
    keep_loopback = not v6 and localhost_nodeports(options)
    nets = [ipaddress.ip_network(c, strict=False) for c in _of(options.nodeport_addresses, v6)]
    if not options.nodeport_addresses or any(net.prefixlen == 0 for net in nets):
        cut = "" if keep_loopback else f" ! -d {loopback}"
        return (f"-m addrtype --dst-type LOCAL{cut}",)
    pieces: list[str] = []
    for net in nets:
        if keep_loopback or not net.overlaps(loopback):
            pieces.append(str(net))
        elif isinstance(net, ipaddress.IPv4Network) and net.prefixlen < _LOOPBACK4.prefixlen:
            pieces += map(str, sorted(net.address_exclude(_LOOPBACK4)))
        elif isinstance(net, ipaddress.IPv6Network) and net.prefixlen < _LOOPBACK6.prefixlen:
            pieces += map(str, sorted(net.address_exclude(_LOOPBACK6)))
    return tuple(f"-d {c} -m addrtype --dst-type LOCAL" for c in pieces)


class Shared(NamedTuple):
    """A service port's lines in the chains all services share (one field per chain)."""

    filter_services: tuple[str, ...] = ()
    filter_external: tuple[str, ...] = ()
    filter_nodeports: tuple[str, ...] = ()
    filter_firewall: tuple[str, ...] = ()
    nat_services: tuple[str, ...] = ()
    nat_nodeports: tuple[str, ...] = ()


#: (table, chain) of each :class:`Shared` field, in field order.
_SHARED_CHAINS: tuple[tuple[str, str], ...] = (
    ("filter", SERVICES),
    ("filter", EXTERNAL_SERVICES),
    ("filter", NODEPORTS),
    ("filter", FIREWALL),
    ("nat", SERVICES),
    ("nat", NODEPORTS),
)


@dataclass(frozen=True, slots=True)
class ServiceRules:
    """What one service port adds to one family's tables: its own nat chains (``chains``,
    declared when written), their ``rules``, and its lines in the shared chains."""

    chains: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    shared: Shared = field(default_factory=Shared)


_NO_RULES = ServiceRules()


def _endpoints(eps: Iterable[Endpoint], v6: bool) -> tuple[tuple[str, str], ...]:
    """This family's endpoints as (ip:port, ip), one per ip:port, in a stable order."""
    unique = {ep.addr: ep.ip for ep in eps if _is_v6(ep.ip) == v6}
    return tuple((addr, unique[addr]) for addr in sorted(unique))


_PROBABILITIES = tuple(f"{1.0 / n:.10f}" if n else "" for n in range(257))


def _probability(n: int) -> str:
    """``1/n`` as kube-proxy spells it (10 decimals); the common ones precomputed."""
    return _PROBABILITIES[n] if n < len(_PROBABILITIES) else f"{1.0 / n:.10f}"


def render_service(
    sp: ServicePlan,
    family: IPFamily,
    options: RenderOptions,
    *,
    comments: bool = True,
    node_ips: Sequence[str] = (),
) -> ServiceRules:
    """The rules of one service port in one family (nothing if it has no cluster IP there).

    ``sp.internal`` feeds the chain for cluster traffic (SVC, or SVL with iTP=Local) and
    ``sp.external`` the chain for external traffic (SVC, or SVL with eTP=Local); when the
    two policies name the same chain but the plan gives them different endpoints, SVC
    takes the internal and SVL the external ones. With eTP=Local, pods and the node going
    to an external destination are sent to the cluster-wide set: ``sp.cluster`` in SVC
    when the plan gives it (and SVC is free for it), else the internal chain.
    ``comments=False`` drops the comments of per-endpoint rules (large clusters).
    ``node_ips``: this node's addresses of ``family`` (see :func:`_admits_node`).
    """
    port = sp.port
    v6 = family is IPFamily.IPV6
    vips = _of(port.cluster_ips, v6)
    if not vips:
        return _NO_RULES
    key = port.key
    ref = key.service
    ident = (ref.namespace, ref.name, key.port_name, str(key.protocol))
    label = f"{ref}:{key.port_name}" if key.port_name else str(ref)
    proto = key.protocol.lower()
    svc, svl = chain_name(_SVC, *ident), chain_name(_SVL, *ident)
    internal = _endpoints(sp.internal, v6)
    external = _endpoints(sp.external, v6)
    external_ips = _of(port.external_ips, v6)
    lb_ips = _of(port.load_balancer_ips, v6)
    exposed = bool(external_ips or lb_ips or port.node_port)
    cluster = _endpoints(sp.cluster, v6) if sp.cluster is not None else None
    has_endpoints = bool(internal or external or cluster)
    etp_local = port.external_traffic_policy is TrafficPolicy.LOCAL

    int_chain = svl if port.internal_traffic_policy is TrafficPolicy.LOCAL else svc
    ext_chain = svl if etp_local else svc
    if int_chain == ext_chain and internal != external:
        int_chain, ext_chain = svc, svl
    policy: dict[str, tuple[tuple[str, str], ...]] = {}
    if internal:
        policy[int_chain] = internal
    if exposed and external:
        policy[ext_chain] = external
    # The short circuit of eTP=Local (pods and the node to external destinations).
    short_chain, short = int_chain, internal
    if cluster is not None and policy.get(svc, cluster) == cluster:
        short_chain, short = svc, cluster
    if exposed and etp_local and short:
        policy[short_chain] = short

    chains: list[str] = sorted(policy)  # SVC before SVL
    rules: list[str] = []
    sh: dict[str, list[str]] = {f: [] for f in Shared._fields}
    masq = f"-j {MARK_MASQ}"

    def dst(ip: str) -> str:
        return f"-p {proto} -m {proto} -d {ip} --dport {port.port}"

    # Cluster IPs: jump to the internal chain, masquerading off-cluster sources.
    cluster_cidr = _of(options.cluster_cidrs, v6)[:1]
    for ip in vips:
        if internal:
            head = f"-A {int_chain} {_comment(f'{label} cluster IP')} {dst(ip)}"
            if options.masquerade_all:
                rules.append(f"{head} {masq}")
            elif cluster_cidr:
                rules.append(f"{head} ! -s {cluster_cidr[0]} {masq}")
            sh["nat_services"].append(
                f"-A {SERVICES} {_comment(f'{label} cluster IP')} {dst(ip)} -j {int_chain}"
            )
        else:
            sh["filter_services"].append(
                f"-A {SERVICES} {_comment(f'{label} has no endpoints')} {dst(ip)} -j REJECT"
            )

    # Endpoint spreading, per policy chain.
    seps: dict[str, tuple[str, str]] = {}  # addr -> (chain, ip)
    for chain in chains:
        eps = policy[chain]
        tags = [f" {_comment(f'{label} -> {addr}')}" if comments else "" for addr, _ in eps]
        for addr, ip in eps:
            if addr not in seps:
                seps[addr] = (chain_name(_SEP, *ident, addr), ip)
        targets = [seps[addr][0] for addr, _ in eps]
        if port.session_affinity_timeout is not None:
            for sep, tag in zip(targets, tags, strict=True):
                rules.append(
                    f"-A {chain}{tag} -m recent --name {sep} --rcheck"
                    f" --seconds {port.session_affinity_timeout} --reap -j {sep}"
                )
        n = len(eps)
        for i, (sep, tag) in enumerate(zip(targets, tags, strict=True)):
            spread = f" -m statistic --mode random --probability {_probability(n - i)}"
            rules.append(f"-A {chain}{tag}{spread if i < n - 1 else ''} -j {sep}")

    # External destinations.
    if exposed and has_endpoints:
        ext, fw = chain_name(_EXT, *ident), chain_name(_FW, *ident)
        chains.append(ext)
        if not etp_local:
            rules.append(
                f"-A {ext} {_comment(f'masquerade traffic for {label} external destinations')}"
                f" {masq}"
            )
        elif short:
            for cidr in cluster_cidr:
                rules.append(
                    f"-A {ext} {_comment(f'pod traffic for {label} external destinations')}"
                    f" -s {cidr} -j {short_chain}"
                )
            local = "-m addrtype --src-type LOCAL"
            rules.append(
                f"-A {ext}"
                f" {_comment(f'masquerade LOCAL traffic for {label} external destinations')}"
                f" {local} {masq}"
            )
            rules.append(
                f"-A {ext} {_comment(f'route LOCAL traffic for {label} external destinations')}"
                f" {local} -j {short_chain}"
            )
        if external:
            rules.append(f"-A {ext} -j {ext_chain}")
        for ip in external_ips:
            sh["nat_services"].append(
                f"-A {SERVICES} {_comment(f'{label} external IP')} {dst(ip)} -j {ext}"
            )
        firewalled = bool(port.load_balancer_source_ranges) and bool(lb_ips)
        for ip in lb_ips:
            sh["nat_services"].append(
                f"-A {SERVICES} {_comment(f'{label} loadbalancer IP')} {dst(ip)}"
                f" -j {fw if firewalled else ext}"
            )
        if firewalled:
            # Sources of the other family only: nothing admitted, everything dropped.
            chains.append(fw)
            ranges = _of(port.load_balancer_source_ranges, v6)
            sources = (*ranges, *(lb_ips if _admits_node(ranges, node_ips) else ()))
            for source in sources:
                rules.append(f"-A {fw} {_comment(f'{label} loadbalancer IP')} -s {source} -j {ext}")
            for ip in lb_ips:
                sh["filter_firewall"].append(
                    f"-A {FIREWALL} {_comment(f'{label} traffic not accepted by {fw}')}"
                    f" {dst(ip)} -j DROP"
                )
        if port.node_port:
            sh["nat_nodeports"].append(
                f"-A {NODEPORTS} {_comment(label)} -p {proto} -m {proto}"
                f" --dport {port.node_port} -j {ext}"
            )

    # External destinations that must not pass: nothing at all, or no local endpoint.
    if exposed and not external:
        target, why = (
            ("DROP", "has no local endpoints") if has_endpoints else ("REJECT", "has no endpoints")
        )
        note = _comment(f"{label} {why}")
        for ip in (*external_ips, *lb_ips):
            sh["filter_external"].append(f"-A {EXTERNAL_SERVICES} {note} {dst(ip)} -j {target}")
        if port.node_port:
            for where in _nodeport_destinations(options, v6):
                sh["filter_external"].append(
                    f"-A {EXTERNAL_SERVICES} {note} {where} -p {proto} -m {proto}"
                    f" --dport {port.node_port} -j {target}"
                )
    if etp_local and port.health_check_node_port:
        sh["filter_nodeports"].append(
            f"-A {NODEPORTS} {_comment(f'{label} health check node port')}"
            f" -p tcp -m tcp --dport {port.health_check_node_port} -j ACCEPT"
        )

    # Endpoint chains: hairpin traffic is masqueraded, then DNAT (and affinity record).
    affinity = port.session_affinity_timeout is not None
    note = f" {_comment(label)}" if comments else ""
    for addr, (sep, ip) in seps.items():
        chains.append(sep)
        record = f" -m recent --name {sep} --set" if affinity else ""
        rules.append(f"-A {sep}{note} -s {ip} {masq}")
        rules.append(f"-A {sep}{note} -p {proto}{record} -j DNAT --to-destination {addr}")

    return ServiceRules(
        chains=tuple(chains),
        rules=tuple(rules),
        shared=Shared(**{k: tuple(v) for k, v in sh.items()}),
    )


def _admits_node(ranges: Sequence[str], node_ips: Sequence[str]) -> bool:
    """Whether source ranges admit this node. An LB IP is often also a local address of
    the node (VIP-like load balancers), so the node's own requests to it leave with the LB
    IP as source and never cross the load balancer; kube-proxy admits that source when
    the ranges hold the node's IP, and so does proxyd."""
    nets = [ipaddress.ip_network(c, strict=False) for c in ranges]
    return any(ipaddress.ip_address(ip) in net for ip in node_ips for net in nets)


@dataclass(frozen=True, slots=True)
class Jump:
    """A rule in a built-in chain that sends packets into one of proxyd's chains."""

    table: str
    chain: str
    target: str
    args: str

    @property
    def insert_line(self) -> str:
        return f"-I {self.chain} 1 {self.args} -j {self.target}"


_NEW = "-m conntrack --ctstate NEW"
JUMPS: tuple[Jump, ...] = (
    Jump("filter", "INPUT", LOCALNET_FIREWALL, _comment("proxyd localnet firewall")),
    Jump("filter", "INPUT", FIREWALL, f"{_NEW} {_comment('proxyd load balancer firewall')}"),
    Jump("filter", "INPUT", NODEPORTS, _comment("proxyd health check service ports")),
    Jump("filter", "INPUT", EXTERNAL_SERVICES, f"{_NEW} {_comment('proxyd external services')}"),
    Jump("filter", "FORWARD", FIREWALL, f"{_NEW} {_comment('proxyd load balancer firewall')}"),
    Jump("filter", "FORWARD", FORWARD, _comment("proxyd forwarding rules")),
    Jump("filter", "FORWARD", SERVICES, f"{_NEW} {_comment('proxyd service portals')}"),
    Jump("filter", "FORWARD", EXTERNAL_SERVICES, f"{_NEW} {_comment('proxyd external services')}"),
    Jump("filter", "OUTPUT", LOCALNET_FIREWALL, _comment("proxyd localnet firewall")),
    Jump("filter", "OUTPUT", FIREWALL, f"{_NEW} {_comment('proxyd load balancer firewall')}"),
    Jump("filter", "OUTPUT", SERVICES, f"{_NEW} {_comment('proxyd service portals')}"),
    Jump("nat", "PREROUTING", SERVICES, _comment("proxyd service portals")),
    Jump("nat", "OUTPUT", SERVICES, _comment("proxyd service portals")),
    Jump("nat", "POSTROUTING", POSTROUTING, _comment("proxyd postrouting rules")),
)


def _static_rules(options: RenderOptions, v6: bool) -> Mapping[str, tuple[str, ...]]:
    """Rules of the static chains that are not shared with services."""
    m = options.mark
    # route_localnet lets packets to 127.0.0.0/8 in from any link (CVE-2020-8558): only
    # local ones, and replies or DNATed traffic conntrack knows, may reach loopback.
    martians = (
        (
            f"-A {LOCALNET_FIREWALL} {_comment('proxyd: only local sources may reach loopback')}"
            " -d 127.0.0.0/8 ! -s 127.0.0.0/8"
            " -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        )
        if not v6 and localhost_nodeports(options)
        else ()
    )
    return {
        "filter": (
            f"-A {FORWARD} -m conntrack --ctstate INVALID -j DROP",
            f"-A {FORWARD} {_comment('proxyd forwarding rules')} -m mark --mark {m}/{m} -j ACCEPT",
            f"-A {FORWARD} {_comment('proxyd forwarding conntrack rule')}"
            " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            *martians,
        ),
        "nat": (
            f"-A {MARK_MASQ} -j MARK --or-mark {m}",
            f"-A {POSTROUTING} -m mark ! --mark {m}/{m} -j RETURN",
            f"-A {POSTROUTING} -j MARK --xor-mark {m}",
            f"-A {POSTROUTING} {_comment('proxyd service traffic requiring SNAT')}"
            " -j MASQUERADE --random-fully",
        ),
    }


def _nodeports_jumps(options: RenderOptions, v6: bool) -> tuple[str, ...]:
    """The tail of nat PROXYD-SERVICES: local destinations go on to the NodePorts."""
    note = _comment("proxyd service nodeports; NOTE: this must be the last rule in this chain")
    return tuple(
        f"-A {SERVICES} {note} {where} -j {NODEPORTS}"
        for where in _nodeport_destinations(options, v6)
    )


_Entry = tuple[ServicePlan, ServiceRules]


def _weights(rules: ServiceRules) -> tuple[int, ...]:
    """Rule counts: own chains, then each shared chain (the :class:`Shared` fields)."""
    return (len(rules.rules), *map(len, rules.shared))


@dataclass(frozen=True, slots=True)
class FamilyState:
    """What one family's tables hold after a successful restore: the plan and rules of
    every service port (the cache partial syncs diff against).

    ``by_identity`` indexes the same entries by ``id()`` of their ServicePlan: the planner
    hands back the very same objects for unchanged services, and finding those by
    identity costs a fraction of hashing 10,000 keys on every sync. ``totals`` are the
    rule counts of all services (see :func:`_weights`), kept up to date incrementally.
    ``node_ips``: the node's addresses of this family the rules were rendered with.
    """

    family: IPFamily
    options: RenderOptions
    comments: bool
    services: Mapping[ServicePortKey, _Entry]
    by_identity: Mapping[int, _Entry]
    totals: tuple[int, ...]
    node_ips: tuple[str, ...] = ()

    def chains(self) -> frozenset[str]:
        """proxyd's per-service chains these rules created (all in nat)."""
        return frozenset(c for _, rules in self.services.values() for c in rules.chains)


@dataclass(frozen=True, slots=True)
class Payload:
    """One restore for one family. ``text`` is empty when nothing needs writing;
    ``state`` is what the tables hold once ``text`` is applied; ``rules`` counts the rules
    in proxyd's chains per table afterwards, written or not."""

    text: str
    state: FamilyState
    full: bool
    written: frozenset[ServicePortKey]
    removed: frozenset[ServicePortKey]
    rules: Mapping[str, int]


class _Sink:
    """Lines that go into the restore (kube-proxy's line buffer)."""

    __slots__ = ("count", "lines")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0

    def extend(self, lines: Sequence[str]) -> None:
        self.lines.extend(lines)
        self.count += len(lines)


class _CountingSink:
    """Counts rules that are not written and keeps none: rules that stay in the kernel
    untouched still count toward the rule metrics. ``skip`` takes a count already known
    (unchanged services are not visited one by one)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def extend(self, lines: Sequence[str]) -> None:
        self.count += len(lines)

    def skip(self, count: int) -> None:
        self.count += count


#: Above this many chains in one nat payload, :func:`_nft_cache_hint` is worth its cost.
NFT_CHAIN_LIST_LIMIT = 1000


def _nft_cache_hint(jumps: Sequence[Jump]) -> list[str]:
    """Lines that open a large nat payload for iptables-nft-restore.

    iptables-nft (1.8.9, Debian 12) records every chain a restore's commands name in a
    sorted linked list, to fetch only those from the kernel: quadratic in the number of
    chains (1,000 services x 10 endpoints: 14 s instead of 0.6 s; 10,000 would take hours).
    One command that names no chain makes it fetch the whole table instead and skip the
    list; a chain-less ``-S`` is the only such command that changes nothing (it prints the
    table as it was, which the runner discards). With that whole-table cache, a nat table
    that does not exist yet gets no built-in chains implicitly, so the built-in chains the
    jump rules go into are declared (nat chains always have policy ACCEPT).
    """
    builtin = dict.fromkeys(j.chain for j in jumps if j.table == "nat")
    return ["-S", *(f":{chain} ACCEPT [0:0]" for chain in builtin)]


@dataclass(slots=True)
class _Table:
    head: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)
    rules: _Sink = field(default_factory=_Sink)
    kept: _CountingSink = field(default_factory=_CountingSink)
    inserts: list[str] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)

    def declare(self, names: Iterable[str]) -> None:
        self.chains.extend(f":{c} - [0:0]" for c in names)

    def text(self, name: str) -> list[str]:
        if not (self.chains or self.rules.lines or self.inserts or self.deletes):
            return []
        body = [*self.chains, *self.rules.lines, *self.inserts, *self.deletes]
        return [f"*{name}", *self.head, *body, "COMMIT"]


def _rules(services: Mapping[ServicePortKey, _Entry], key: ServicePortKey) -> ServiceRules:
    entry = services.get(key)
    return _NO_RULES if entry is None else entry[1]


@dataclass(slots=True)
class _Diff:
    """Service entries after this sync, and which keys changed (rules differ or new) or
    went away since ``previous``."""

    services: dict[ServicePortKey, _Entry]
    by_identity: dict[int, _Entry]
    changed: list[ServicePortKey]
    removed: list[ServicePortKey]


def _diff(
    plan: NodePlan,
    family: IPFamily,
    options: RenderOptions,
    comments: bool,
    node_ips: tuple[str, ...],
    previous: FamilyState | None,
    reuse: bool,
) -> _Diff:
    """Render what is new; reuse the rules of identical (or equal) plans when ``reuse``."""
    old = previous.services if previous is not None and reuse else {}
    old_ids = previous.by_identity if previous is not None and reuse else {}
    by_identity: dict[int, _Entry] = {}
    fresh: list[ServicePlan] = []
    for sp in plan.services:
        entry = old_ids.get(id(sp))
        if entry is not None and entry[0] is sp:
            by_identity[id(sp)] = entry
        else:
            fresh.append(sp)
    services = dict(old)
    changed: list[ServicePortKey] = []
    fresh_keys: set[ServicePortKey] = set()
    for sp in fresh:
        before = old.get(sp.key)
        if before is not None and before[0] == sp:
            entry = (sp, before[1])
        else:
            entry = (sp, render_service(sp, family, options, comments=comments, node_ips=node_ips))
            if before is None or before[1] != entry[1]:
                changed.append(sp.key)
        services[sp.key] = by_identity[id(sp)] = entry
        fresh_keys.add(sp.key)
    removed: list[ServicePortKey] = []
    if previous is not None and not reuse:
        removed = [k for k in previous.services if k not in services]
    elif len(plan.services) - len(fresh) != len(old_ids):  # some old entry not kept as is
        gone = (e[0].key for i, e in old_ids.items() if i not in by_identity)
        removed = [k for k in gone if k not in fresh_keys]
        for key in removed:
            del services[key]
    return _Diff(services, by_identity, changed, removed)


def render(
    plan: NodePlan,
    family: IPFamily,
    options: RenderOptions,
    previous: FamilyState | None = None,
    *,
    full: bool = False,
    existing: Mapping[str, Iterable[str]] | None = None,
    jumps: Sequence[Jump] = (),
    nft: bool = False,
) -> Payload:
    """The restore text that turns ``previous`` into ``plan`` for ``family``.

    Partial (``full=False`` and a compatible ``previous``): only service ports whose rules
    changed are written, shared chains only when a line of theirs changed, and the chains
    those services no longer use are deleted. Full: everything is written, and every
    proxyd chain in ``existing`` (table → chain names found in the kernel) or in
    ``previous`` that the plan does not use is deleted. ``jumps`` are inserted as given.
    ``nft``: the payload is for ``iptables-nft-restore`` (see :func:`_nft_cache_hint`).
    """
    v6 = family is IPFamily.IPV6
    comments = sum(len(sp.internal) for sp in plan.services) <= COMMENT_ENDPOINT_LIMIT
    node_ips = tuple(sorted(_of(plan.node_addresses, v6)))  # rarely change: then full
    reuse = (
        previous is not None
        and previous.family is family
        and previous.options == options
        and previous.comments == comments
        and previous.node_ips == node_ips
    )
    full = full or not reuse
    diff = _diff(plan, family, options, comments, node_ips, previous, reuse)
    services, changed, removed = diff.services, diff.changed, diff.removed
    ordered = [diff.by_identity[id(sp)][1] for sp in plan.services] if full else []
    old = previous.services if previous is not None and reuse else {}
    if full:
        totals = tuple(map(sum, zip(*map(_weights, ordered), strict=True))) if ordered else ()
        totals = totals or (0,) * (1 + len(Shared._fields))
    else:
        assert previous is not None
        acc = list(previous.totals)
        for key in (*changed, *removed):
            before, after = _weights(_rules(old, key)), _weights(_rules(services, key))
            acc = [t - b + a for t, b, a in zip(acc, before, after, strict=True)]
        totals = tuple(acc)

    tables = {name: _Table() for name in TABLES}
    statics = _static_rules(options, v6)
    for name in TABLES:
        if full:
            tables[name].declare(_STATIC[name])
            tables[name].rules.extend(statics[name])
        else:
            tables[name].kept.extend(statics[name])

    # Shared chains: rewritten whole when any of their lines changed.
    diffs = (*changed, *removed)
    tail = {("nat", SERVICES): _nodeports_jumps(options, v6)}
    for i, (tname, chain) in enumerate(_SHARED_CHAINS):
        table = tables[tname]
        lines_after = tail.get((tname, chain), ())
        if full:
            for rules in ordered:
                table.rules.extend(rules.shared[i])
        elif any(_rules(old, k).shared[i] != _rules(services, k).shared[i] for k in diffs):
            table.declare((chain,))
            for sp in plan.services:
                table.rules.extend(diff.by_identity[id(sp)][1].shared[i])
        else:
            table.kept.skip(totals[1 + i] + len(lines_after))
            continue
        table.rules.extend(lines_after)

    # Per-service chains, all in nat.
    nat = tables["nat"]
    if full:
        for rules in ordered:
            nat.declare(rules.chains)
            nat.rules.extend(rules.rules)
    else:
        for key in changed:
            rules = services[key][1]
            nat.declare(rules.chains)
            nat.rules.extend(rules.rules)
        nat.kept.skip(totals[0] - sum(len(services[k][1].rules) for k in changed))

    # Stale chains: flushed by their declaration, then deleted.
    if full:
        known = {name: set(existing.get(name, ())) if existing else set() for name in TABLES}
        if previous is not None:
            known["nat"] |= previous.chains()
        desired = {name: set(_STATIC[name]) for name in TABLES}
        for rules in ordered:
            desired["nat"].update(rules.chains)
        stale = {
            name: sorted(c for c in known[name] - desired[name] if PROXYD.owns(c))
            for name in TABLES
        }
    else:
        gone: set[str] = set()
        for key in diffs:
            gone.update(_rules(old, key).chains)
        for key in changed:
            gone.difference_update(services[key][1].chains)
        stale = {"filter": [], "nat": sorted(gone)}
    for name in TABLES:
        tables[name].declare(stale[name])
        tables[name].deletes.extend(f"-X {c}" for c in stale[name])

    for jump in reversed(jumps):  # each goes first: reverse keeps JUMPS order per chain
        tables[jump.table].inserts.append(jump.insert_line)
    if nft and len(nat.chains) > NFT_CHAIN_LIST_LIMIT:
        nat.head = _nft_cache_hint(jumps)

    lines = [line for name in TABLES for line in tables[name].text(name)]
    return Payload(
        text="\n".join(lines) + "\n" if lines else "",
        state=FamilyState(family, options, comments, services, diff.by_identity, totals, node_ips),
        full=full,
        written=frozenset(services) if full else frozenset(changed),
        removed=frozenset(removed),
        rules={name: tables[name].rules.count + tables[name].kept.count for name in TABLES},
    )


# --- reading what the kernel has ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SavedTable:
    """One table of ``iptables-save`` (or ``iptables -S``) output: chain names, and each
    rule as (chain, text after ``-A CHAIN``)."""

    chains: frozenset[str]
    rules: tuple[tuple[str, str], ...]


_BUILTIN = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})


def parse_save(
    text: str, default_table: str = "filter", *, rules_of: Callable[[str], bool] | None = None
) -> dict[str, SavedTable]:
    """Tables of a save dump. Rules are kept only for chains where ``rules_of(chain)`` is
    true (all when None): at scale a dump has hundreds of thousands of rules nobody needs."""
    chains: dict[str, set[str]] = {}
    rules: dict[str, list[tuple[str, str]]] = {}
    table = default_table
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            chains.setdefault(table, set()).add(line[1:].split(" ", 1)[0])
        elif line.startswith(("-A ", "-N ", "-P ")):
            op, chain, *rest = line.split(" ", 2)
            chains.setdefault(table, set()).add(chain)
            if op == "-A" and (rules_of is None or rules_of(chain)):
                rules.setdefault(table, []).append((chain, rest[0] if rest else ""))
    return {
        t: SavedTable(frozenset(chains.get(t, ())), tuple(rules.get(t, ())))
        for t in sorted(chains.keys() | rules.keys())
    }


def jump_target(rule: str) -> str | None:
    """The chain a rule jumps or goes to (``-j``/``-g``), if any."""
    if "-j " not in rule and "-g " not in rule:
        return None
    try:
        tokens = shlex.split(rule)
    except ValueError:
        match = re.search(r"(?:^|\s)-[jg] (\S+)", rule)
        return match.group(1) if match else None
    for flag, value in itertools.pairwise(tokens):
        if flag in ("-j", "-g", "--jump", "--goto"):
            return value
    return None


def missing_jumps(saved: Mapping[str, SavedTable]) -> tuple[Jump, ...]:
    """The :data:`JUMPS` not present in ``saved`` (a jump counts as present when its
    built-in chain has any rule targeting its chain)."""
    present = {
        (t, chain, jump_target(rule)) for t, tbl in saved.items() for chain, rule in tbl.rules
    }
    return tuple(j for j in JUMPS if (j.table, j.chain, j.target) not in present)


def render_cleanup(
    saved: Mapping[str, SavedTable], owns: Callable[[str], bool], *, nft: bool = False
) -> str:
    """Restore text removing every chain ``owns`` accepts and every other rule that jumps
    to one of them; empty when there is nothing to remove (cleanup is idempotent).
    ``nft``: for iptables-nft-restore (a chain-less listing first when there are many
    chains, see :func:`_nft_cache_hint`)."""
    lines: list[str] = []
    for name in sorted(saved):
        table = saved[name]
        own = sorted(c for c in table.chains if owns(c) and c not in _BUILTIN)
        refs = [
            f"-D {chain} {rule}"
            for chain, rule in table.rules
            if not owns(chain) and (target := jump_target(rule)) is not None and owns(target)
        ]
        if own or refs:
            hint = ["-S"] if nft and len(own) > NFT_CHAIN_LIST_LIMIT else []
            lines += [f"*{name}", *hint, *(f":{c} - [0:0]" for c in own), *refs]
            lines += [*(f"-X {c}" for c in own), "COMMIT"]
    return "\n".join(lines) + "\n" if lines else ""
