"""Pure translation of a :class:`~proxyd.model.NodePlan` into the desired IPVS state.

IPVS mode has the shape of kube-proxy's: one virtual server per service IP:port (cluster
IPs, external IPs, load-balancer IPs) and one per node address for a NodePort, real
servers with masquerade (NAT) forwarding and weight 1; the service IPs are bound on a
dummy interface so the node accepts their packets. What IPVS cannot express lives in
ipsets and a few static iptables rules that match those sets (masquerade, NodePort
accept, load-balancer source ranges, reject/drop when a service has no endpoints): the
rules never change per service, only the set members do.

Schedulers. ``ServicePort.ipvs_scheduler`` holds the ``proxyd.io/ipvs-scheduler``
annotation verbatim: a kernel scheduler name (rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed,
nq, mh), optionally followed by sh/mh flags after a colon, e.g. ``sh:fallback,port``.
Flags are written in the same annotation (kube-proxy has no per-service scheduler, so
there is no convention to follow; one annotation keeps the choice atomic); ``flag-1`` /
``flag-2`` (kube-router) and ``sh-port`` style (ipvsadm) spellings are accepted. An unknown
scheduler or flag is never fatal: the default is used and an :class:`IpvsWarning` says so.

Identity. A virtual server is keyed by protocol, address and port (:class:`VsKey`); two
service ports that claim the same key (e.g. one external IP in two Services) are a
conflict: the first in plan order wins and the other gets a warning.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from proxyd.backends.iptables_render import Jump, escape_comment
from proxyd.model import (
    Endpoint,
    IPFamily,
    NodePlan,
    Protocol,
    ServicePlan,
    ServicePortKey,
    TrafficPolicy,
    format_addr,
    ip_family,
)

__all__ = [
    "CHAINS",
    "DEFAULT_SCHEDULER",
    "NODE_PORT_SETS",
    "SCHEDULERS",
    "SCHED_FLAGS",
    "Fragment",
    "IpvsOptions",
    "IpvsService",
    "IpvsState",
    "IpvsWarning",
    "RealServer",
    "SetSpec",
    "VirtualServer",
    "VsKey",
    "assemble",
    "default_scheduler",
    "desired_state",
    "fragment",
    "jumps",
    "listing",
    "node_port_addresses",
    "node_port_member",
    "parse_scheduler",
    "restore_text",
    "set_specs",
]

DEFAULT_SCHEDULER = "rr"
SCHEDULERS = frozenset({"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh"})
#: Scheduler flags and the IPVS service flag bit each sets (IP_VS_SVC_F_SCHED1/2).
SCHED_FLAGS: Mapping[str, int] = {"fallback": 0x0008, "port": 0x0010}
_FLAG_ALIASES = {"flag-1": "fallback", "flag-2": "port"}
_FLAGGED = frozenset({"sh", "mh"})

# ipvsadm's protocol spelling and IP protocol numbers (its listing sorts by the number)
_PROTO_NUMBER = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132}


@dataclass(frozen=True, slots=True)
class IpvsOptions:
    """Shape beyond the plan, named after kube-proxy's flags. ``nodeport_addresses``:
    NodePort virtual servers only on node addresses inside these CIDRs (default all);
    ``cluster_cidrs``: cluster-IP traffic from outside them is masqueraded (with
    ``masquerade_all``, all of it); ``masquerade_bit`` 14 → mark 0x4000."""

    default_scheduler: str = DEFAULT_SCHEDULER
    nodeport_addresses: tuple[str, ...] = ()
    cluster_cidrs: tuple[str, ...] = ()
    masquerade_all: bool = False
    masquerade_bit: int = 14

    @property
    def mark(self) -> str:
        return f"{1 << self.masquerade_bit:#x}"


@dataclass(frozen=True, slots=True, order=True)
class VsKey:
    """A virtual server's identity in the kernel."""

    protocol: Protocol
    address: str
    port: int

    @property
    def family(self) -> IPFamily:
        return ip_family(self.address)

    def __str__(self) -> str:
        return f"{self.protocol}  {format_addr(self.address, self.port)}"


@dataclass(frozen=True, slots=True)
class VirtualServer:
    """A virtual server's settings: scheduler, sh/mh flags, persistence (seconds, 0 = none;
    session affinity ClientIP)."""

    key: VsKey
    scheduler: str
    flags: frozenset[str] = frozenset()
    persistence: int = 0


@dataclass(frozen=True, slots=True, order=True)
class RealServer:
    """A real server (always masquerade forwarding). Weight 1 when live, 0 while draining."""

    address: str
    port: int
    weight: int = 1

    @property
    def addr(self) -> tuple[str, int]:
        return self.address, self.port


@dataclass(frozen=True, slots=True)
class IpvsService:
    """One virtual server with its real servers (sorted), and the service port it serves."""

    server: VirtualServer
    reals: tuple[RealServer, ...]
    owner: ServicePortKey

    @property
    def key(self) -> VsKey:
        return self.server.key


@dataclass(frozen=True, slots=True)
class IpvsWarning:
    """Something an operator must hear about (the daemon makes an event and a metric of
    it); ``reason`` is a short label, ``key`` the service port concerned."""

    key: ServicePortKey | None
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class SetSpec:
    """An ipset proxyd owns: its type and family (``None`` for port bitmaps, which serve
    both families)."""

    name: str
    kind: str
    family: IPFamily | None
    comment: str


@dataclass(frozen=True, slots=True)
class IpvsState:
    """The whole desired IPVS state of a node: virtual servers by key, the addresses to
    bind on the interface, and the members of every set in :func:`set_specs`."""

    services: Mapping[VsKey, IpvsService]
    addresses: frozenset[str]
    sets: Mapping[str, frozenset[str]]
    warnings: tuple[IpvsWarning, ...] = field(default=(), compare=False)


def _set_name(base: str, family: IPFamily) -> str:
    return f"PROXYD-6-{base}" if family is IPFamily.IPV6 else f"PROXYD-{base}"


_IP_SETS = (  # (base name, type, what it holds) — one per family
    ("CLUSTER-IP", "hash:ip,port", "cluster IP:port of every service"),
    ("EXTERNAL-IP", "hash:ip,port", "external IP:port, externalTrafficPolicy Cluster"),
    ("EXTERNAL-IP-LOCAL", "hash:ip,port", "external IP:port, externalTrafficPolicy Local"),
    ("LOAD-BALANCER", "hash:ip,port", "load-balancer IP:port, externalTrafficPolicy Cluster"),
    ("LOAD-BALANCER-LOCAL", "hash:ip,port", "load-balancer IP:port, externalTrafficPolicy Local"),
    ("LB-FW", "hash:ip,port", "load-balancer IP:port with loadBalancerSourceRanges"),
    ("LB-SOURCE-CIDR", "hash:ip,port,net", "load-balancer IP:port and an allowed source"),
    ("LOOP-BACK", "hash:ip,port,ip", "endpoint on this node, for hairpin masquerade"),
    ("NO-ENDPOINTS", "hash:ip,port", "service address without endpoints: reject"),
    ("NO-LOCAL-ENDPOINTS", "hash:ip,port", "externalTrafficPolicy Local, none here: drop"),
)
#: NodePorts of these protocols live in port bitmaps shared by both families. The kernel
#: reads the port of TCP and UDP packets only for a bitmap:port set, so an SCTP NodePort
#: lives in a hash:ip,port set of node address and port per family (as kube-proxy's do).
_PORT_BITMAP = frozenset({Protocol.TCP, Protocol.UDP})


def _node_port_set(proto: Protocol, family: IPFamily, *, local: bool) -> str:
    """The set of a ``proto`` NodePort on a ``family`` address (``local``: eTP Local)."""
    base = f"NODE-PORT-{'LOCAL-' if local else ''}{proto}"
    return f"PROXYD-{base}" if proto in _PORT_BITMAP else _set_name(base, family)


#: Every NodePort set of each protocol (a virtual server in one of them is proxyd's).
NODE_PORT_SETS: Mapping[Protocol, tuple[str, ...]] = {
    p: tuple(sorted({_node_port_set(p, f, local=lo) for f in IPFamily for lo in (False, True)}))
    for p in Protocol
}


def node_port_member(key: VsKey) -> str:
    """A NodePort virtual server's member of its set: the port, or for SCTP its address
    and port in ipset's spelling."""
    return (
        str(key.port)
        if key.protocol in _PORT_BITMAP
        else _entry(key.address, key.protocol, key.port)
    )


def set_specs() -> tuple[SetSpec, ...]:
    """Every ipset IPVS mode uses, sorted by name."""
    specs = {
        SetSpec(_set_name(base, fam), kind, fam, what)
        for fam in IPFamily
        for base, kind, what in _IP_SETS
    }
    for p in Protocol:
        for local in (False, True):
            what = f"{p} node ports{', eTP Local' if local else ''}"
            for fam in IPFamily:
                kind, of = ("bitmap:port", None) if p in _PORT_BITMAP else ("hash:ip,port", fam)
                specs.add(SetSpec(_node_port_set(p, fam, local=local), kind, of, what))
    return tuple(sorted(specs, key=lambda s: s.name))


def parse_scheduler(value: str) -> tuple[str, frozenset[str], tuple[str, ...]]:
    """``NAME[:FLAG,...]`` → (name, flags, problems). ``name`` is empty when it is not a
    kernel scheduler; unusable flags are dropped and named in ``problems``."""
    name, _, rest = value.strip().lower().partition(":")
    name = name.strip()
    if name not in SCHEDULERS:
        return "", frozenset(), (f"unknown IPVS scheduler {value.strip()!r}",)
    flags: set[str] = set()
    problems: list[str] = []
    for raw in filter(None, (f.strip() for f in rest.split(","))):
        flag = _FLAG_ALIASES.get(raw, raw.removeprefix(f"{name}-"))
        if name not in _FLAGGED:
            problems.append(f"scheduler {name} takes no flags (ignored {raw!r})")
        elif flag not in SCHED_FLAGS:
            problems.append(f"unknown {name} flag {raw!r} (ignored)")
        else:
            flags.add(flag)
    return name, frozenset(flags), tuple(problems)


def _scheduler(
    sp: ServicePlan, default: tuple[str, frozenset[str]], warnings: list[IpvsWarning]
) -> tuple[str, frozenset[str]]:
    value = sp.port.ipvs_scheduler
    if value is None:
        return default
    name, flags, problems = parse_scheduler(value)
    for problem in problems:
        fallback = "" if name else f"; using the default {default[0]}"
        reason = "unknown_scheduler" if not name else "unknown_scheduler_flag"
        warnings.append(IpvsWarning(sp.key, reason, problem + fallback))
    return (name, flags) if name else default


def _in_any(ip: str, cidrs: Sequence[str]) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(c, strict=False) for c in cidrs)


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr, strict=False)


def _reals(eps: Iterable[Endpoint], family: IPFamily) -> tuple[RealServer, ...]:
    return tuple(sorted({RealServer(e.ip, e.port) for e in eps if ip_family(e.ip) is family}))


def _entry(ip: str, proto: Protocol, port: int) -> str:
    """ipset's spelling of an ip,port member (``10.96.0.10,tcp:80``)."""
    return f"{ip},{proto.lower()}:{port}"


@dataclass(frozen=True, slots=True)
class Fragment:
    """What one service port contributes. ``needs`` ties every bound address (set
    ``None``) and set member to the virtual server that needs it, so a virtual server
    lost to a conflict brings nothing along."""

    owner: ServicePortKey
    services: tuple[IpvsService, ...]
    needs: tuple[tuple[VsKey, str | None, str], ...]
    warnings: tuple[IpvsWarning, ...] = ()


def default_scheduler(
    options: IpvsOptions,
) -> tuple[tuple[str, frozenset[str]], tuple[IpvsWarning, ...]]:
    """The configured default scheduler, or ``rr`` and a warning when it is unusable."""
    name, flags, problems = parse_scheduler(options.default_scheduler)
    if name:
        return (name, flags), ()
    return (DEFAULT_SCHEDULER, frozenset()), tuple(
        IpvsWarning(None, "unknown_scheduler", p) for p in problems
    )


def node_port_addresses(plan: NodePlan, options: IpvsOptions) -> tuple[str, ...]:
    """The node addresses that get NodePort virtual servers."""
    return tuple(
        sorted(
            ip
            for ip in set(plan.node_addresses)
            if not options.nodeport_addresses or _in_any(ip, options.nodeport_addresses)
        )
    )


def fragment(
    sp: ServicePlan,
    *,
    node: str,
    node_addresses: Sequence[str],
    default: tuple[str, frozenset[str]],
) -> Fragment:
    """One service port's virtual servers, addresses and set members (pure)."""
    port = sp.port
    proto = port.key.protocol
    warnings: list[IpvsWarning] = []
    name, flags = _scheduler(sp, default, warnings)
    persistence = port.session_affinity_timeout or 0
    local = port.external_traffic_policy is TrafficPolicy.LOCAL
    services: list[IpvsService] = []
    needs: list[tuple[VsKey, str | None, str]] = []

    def add(ip: str, number: int, *, external: bool) -> VsKey:
        key = VsKey(proto, ip, number)
        fam = key.family
        eps = sp.external if external else sp.internal
        reals = _reals(eps, fam)
        services.append(IpvsService(VirtualServer(key, name, flags, persistence), reals, sp.key))
        if not reals:
            # no endpoint at all → reject; only the local ones missing → drop (eTP=Local)
            local_only = external and _reals(sp.internal, fam)
            base = "NO-LOCAL-ENDPOINTS" if local_only else "NO-ENDPOINTS"
            needs.append((key, _set_name(base, fam), _entry(ip, proto, number)))
        loop = _set_name("LOOP-BACK", fam)
        for e in eps:
            if e.node_name == node and ip_family(e.ip) is fam:
                needs.append((key, loop, f"{_entry(e.ip, proto, e.port)},{e.ip}"))
        return key

    for ip in port.cluster_ips:
        key = add(ip, port.port, external=False)
        needs += [
            (key, None, ip),
            (key, _set_name("CLUSTER-IP", key.family), _entry(ip, proto, port.port)),
        ]
    for ips, base in (
        (port.external_ips, "EXTERNAL-IP"),
        (port.load_balancer_ips, "LOAD-BALANCER"),
    ):
        for ip in ips:
            key = add(ip, port.port, external=True)
            fam, entry = key.family, _entry(ip, proto, port.port)
            needs += [
                (key, None, ip),
                (key, _set_name(f"{base}-LOCAL" if local else base, fam), entry),
            ]
            if base == "LOAD-BALANCER" and port.load_balancer_source_ranges:
                nets = [
                    net
                    for net in map(_network, port.load_balancer_source_ranges)
                    if (net.version == 6) == (fam is IPFamily.IPV6)
                ]
                # a /0 admits everyone, and ipset refuses it in a net member
                if all(net.prefixlen for net in nets):
                    needs.append((key, _set_name("LB-FW", fam), entry))
                    needs += [
                        (key, _set_name("LB-SOURCE-CIDR", fam), f"{entry},{net}") for net in nets
                    ]
    if port.node_port is not None:
        for ip in node_addresses:
            key = add(ip, port.node_port, external=True)
            needs.append(
                (key, _node_port_set(proto, key.family, local=local), node_port_member(key))
            )
    return Fragment(sp.key, tuple(services), tuple(needs), tuple(warnings))


def assemble(fragments: Iterable[Fragment], warnings: Iterable[IpvsWarning] = ()) -> IpvsState:
    """The node's state from its fragments, in order: the first claim of a virtual
    server wins, later ones become ``conflict`` warnings."""
    services: dict[VsKey, IpvsService] = {}
    addresses: set[str] = set()
    sets: dict[str, set[str]] = {s.name: set() for s in set_specs()}
    said = list(warnings)
    for f in fragments:
        said += f.warnings
        won: set[VsKey] = set()
        for svc in f.services:
            if svc.key in services:
                other = services[svc.key].owner
                said.append(IpvsWarning(f.owner, "conflict", f"{svc.key} already serves {other}"))
                continue
            services[svc.key] = svc
            won.add(svc.key)
        for key, name, value in f.needs:
            if key in won:
                if name is None:
                    addresses.add(value)
                else:
                    sets[name].add(value)
    return IpvsState(
        services=services,
        addresses=frozenset(addresses),
        sets={name: frozenset(members) for name, members in sets.items()},
        warnings=tuple(said),
    )


def desired_state(plan: NodePlan, options: IpvsOptions = IpvsOptions()) -> IpvsState:
    """What the kernel must hold for ``plan``. Never raises for plan content: problems
    come back as :attr:`IpvsState.warnings`."""
    default, warnings = default_scheduler(options)
    addresses = node_port_addresses(plan, options)
    return assemble(
        (
            fragment(sp, node=plan.node, node_addresses=addresses, default=default)
            for sp in plan.services
        ),
        warnings,
    )


def _sort_key(key: VsKey) -> tuple[int, int, int, int]:
    """ipvsadm's listing order: family, protocol number, address, port."""
    addr = ipaddress.ip_address(key.address)
    return addr.version, _PROTO_NUMBER[key.protocol], int(addr), key.port


def _flag_text(server: VirtualServer) -> str:
    text = ""
    if server.flags:
        names = ",".join(f"{server.scheduler}-{f}" for f in sorted(server.flags))
        text += f" ({names})"
    if server.persistence:
        text += f" persistent {server.persistence}"
    return text


def listing(state: NodePlan | IpvsState, options: IpvsOptions = IpvsOptions()) -> str:
    """ipvsadm-like text (``ipvsadm -Ln`` without the counters): one line per virtual
    server, its real servers indented under it, in ipvsadm's order."""
    if isinstance(state, NodePlan):
        state = desired_state(state, options)
    lines: list[str] = []
    for key in sorted(state.services, key=_sort_key):
        svc = state.services[key]
        lines.append(f"{key} {svc.server.scheduler}{_flag_text(svc.server)}")
        for rs in sorted(svc.reals, key=lambda r: (int(ipaddress.ip_address(r.address)), r.port)):
            lines.append(f"  -> {format_addr(rs.address, rs.port):<28} Masq    {rs.weight}")
    return "\n".join(lines) + "\n" if lines else ""


# --- iptables: a few static rules per family; the sets carry everything per service -------

SERVICES = "PROXYD-IPVS-SERVICES"
NODE_PORT = "PROXYD-IPVS-NODE-PORT"
MARK_MASQ = "PROXYD-IPVS-MARK-MASQ"
POSTROUTING = "PROXYD-IPVS-POSTROUTING"
FIREWALL = "PROXYD-IPVS-FIREWALL"
FORWARD = "PROXYD-IPVS-FORWARD"
#: Every chain IPVS mode creates, per table (cleanup removes exactly these).
CHAINS: Mapping[str, tuple[str, ...]] = {
    "filter": (FIREWALL, NODE_PORT, FORWARD),
    "nat": (SERVICES, NODE_PORT, MARK_MASQ, POSTROUTING),
}


def _c(text: str) -> str:
    return f"-m comment --comment {escape_comment(text)}"


def _node_port_match(proto: Protocol, family: IPFamily, *, local: bool) -> str:
    """Matches a NodePort's set: by destination port, SCTP by destination address and port."""
    dims = "dst" if proto in _PORT_BITMAP else "dst,dst"
    name = _node_port_set(proto, family, local=local)
    return f"-p {proto.lower()} -m set --match-set {name} {dims}"


_NEW = "-m conntrack --ctstate NEW"


def jumps() -> tuple[Jump, ...]:
    """The rules in built-in chains that lead into IPVS mode's chains."""
    return (
        Jump("filter", "INPUT", FIREWALL, f"{_NEW} {_c('proxyd ipvs firewall')}"),
        Jump("filter", "INPUT", NODE_PORT, _c("proxyd ipvs node ports")),
        Jump("filter", "FORWARD", FORWARD, _c("proxyd ipvs forwarding rules")),
        Jump("filter", "OUTPUT", FIREWALL, f"{_NEW} {_c('proxyd ipvs firewall')}"),
        Jump("nat", "PREROUTING", SERVICES, _c("proxyd ipvs service portals")),
        Jump("nat", "OUTPUT", SERVICES, _c("proxyd ipvs service portals")),
        Jump("nat", "POSTROUTING", POSTROUTING, _c("proxyd ipvs postrouting rules")),
    )


def restore_text(family: IPFamily, options: IpvsOptions, missing: Iterable[Jump] = ()) -> str:
    """``iptables-restore --noflush`` payload (filter, then nat) that (re)writes IPVS
    mode's chains for ``family`` and inserts the ``missing`` jumps."""
    s = {base: _set_name(base, family) for base, _, _ in _IP_SETS}
    m = options.mark
    reject = "icmp6-port-unreachable" if family is IPFamily.IPV6 else "icmp-port-unreachable"
    v6 = family is IPFamily.IPV6
    cidrs = [c for c in options.cluster_cidrs if (":" in c) == v6][:1]
    masq_cluster = (
        [
            f"-A {SERVICES} {_c('cluster IP, masquerade all')} -m set --match-set "
            f"{s['CLUSTER-IP']} dst,dst -j {MARK_MASQ}"
        ]
        if options.masquerade_all
        else [
            f"-A {SERVICES} {_c('cluster IP from outside the cluster')} ! -s {cidr} "
            f"-m set --match-set {s['CLUSTER-IP']} dst,dst -j {MARK_MASQ}"
            for cidr in cidrs
        ]
    )
    filter_rules = [
        f"-A {FIREWALL} {_c('service without endpoints')} -m set --match-set "
        f"{s['NO-ENDPOINTS']} dst,dst -j REJECT --reject-with {reject}",
        f"-A {FIREWALL} {_c('externalTrafficPolicy Local without local endpoints')} "
        f"-m set --match-set {s['NO-LOCAL-ENDPOINTS']} dst,dst -j DROP",
        f"-A {FIREWALL} {_c('load balancer source ranges')} -m set --match-set {s['LB-FW']} "
        f"dst,dst -m set ! --match-set {s['LB-SOURCE-CIDR']} dst,dst,src -j DROP",
        *(
            f"-A {NODE_PORT} {_node_port_match(p, family, local=local)} -j ACCEPT"
            for p in Protocol
            for local in (False, True)
        ),
        f"-A {FORWARD} -m conntrack --ctstate INVALID -j DROP",
        f"-A {FORWARD} {_c('proxyd forwarding rules')} -m mark --mark {m}/{m} -j ACCEPT",
        f"-A {FORWARD} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    nat_rules = [
        *masq_cluster,
        f"-A {SERVICES} -m set --match-set {s['CLUSTER-IP']} dst,dst -j ACCEPT",
        f"-A {SERVICES} -m set --match-set {s['EXTERNAL-IP-LOCAL']} dst,dst -j ACCEPT",
        f"-A {SERVICES} -m set --match-set {s['EXTERNAL-IP']} dst,dst -j {MARK_MASQ}",
        f"-A {SERVICES} -m set --match-set {s['EXTERNAL-IP']} dst,dst -j ACCEPT",
        f"-A {SERVICES} -m set --match-set {s['LOAD-BALANCER-LOCAL']} dst,dst -j ACCEPT",
        f"-A {SERVICES} -m set --match-set {s['LOAD-BALANCER']} dst,dst -j {MARK_MASQ}",
        f"-A {SERVICES} -m set --match-set {s['LOAD-BALANCER']} dst,dst -j ACCEPT",
        f"-A {SERVICES} -m addrtype --dst-type LOCAL -j {NODE_PORT}",
        *(
            line
            for p in Protocol
            for line in (
                f"-A {NODE_PORT} {_node_port_match(p, family, local=True)} -j RETURN",
                f"-A {NODE_PORT} {_node_port_match(p, family, local=False)} -j {MARK_MASQ}",
            )
        ),
        f"-A {MARK_MASQ} -j MARK --or-mark {m}",
        f"-A {POSTROUTING} {_c('hairpin')} -m set --match-set {s['LOOP-BACK']} dst,dst,src "
        "-j MASQUERADE",
        f"-A {POSTROUTING} -m mark ! --mark {m}/{m} -j RETURN",
        f"-A {POSTROUTING} -j MARK --xor-mark {m}",
        f"-A {POSTROUTING} {_c('proxyd service traffic requiring SNAT')} "
        "-j MASQUERADE --random-fully",
    ]
    missing = tuple(missing)
    out: list[str] = []
    for table, rules in (("filter", filter_rules), ("nat", nat_rules)):
        out += [f"*{table}", *(f":{c} - [0:0]" for c in CHAINS[table]), *rules]
        # each insert goes to position 1: reversed, they end up in jumps() order
        out += [j.insert_line for j in reversed(missing) if j.table == table]
        out.append("COMMIT")
    return "\n".join(out) + "\n"
