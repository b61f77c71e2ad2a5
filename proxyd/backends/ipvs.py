"""The IPVS backend: diff the desired state (:mod:`ipvs_plan`) against the kernel.

Sync reads what the kernel holds (on a full sync; a partial sync trusts the mirror of what
the last successful sync wrote), computes the operations that close the gap, and hands
them to an injected :class:`IpvsClient` in dependency order: bind addresses and add set
members first, then virtual and real servers, then remove members and addresses (a
service IP is unbound only after its virtual server is gone).

What proxyd owns. The kernel keeps no owner tag on a virtual server, so ownership is read
from state only proxyd writes: a virtual server is proxyd's when its address is bound on
proxyd's interface (default ``proxyd-ipvs0``; cluster, external and LB IPs), or when its
port (SCTP: address and port) is in one of proxyd's NodePort sets (``PROXYD-NODE-PORT-*``,
``PROXYD-6-NODE-PORT-*``; NodePorts live on node addresses). Anything else — another
proxy's, an operator's — is never modified or deleted, and this survives restarts because
the markers are in the kernel. Set members are added before the virtual server and
removed after it, so a crash in between never leaves an unrecognisable virtual server
behind.

Graceful termination. A real server that leaves the plan gets weight 0 (no new
connections) and is deleted once it has no active connections, or after ``drain_timeout``
seconds at most; UDP real servers are deleted at once (no connection to wait for). Every
sync also reconciles weights with the plan, so a restart never leaves a live endpoint at
weight 0, and a draining real server that comes back is simply set to weight 1 again.
A scheduler the kernel does not have (module missing) falls back to the default
scheduler with a warning instead of failing the sync.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Protocol as TypingProtocol

from proxyd.backends import SyncResult
from proxyd.backends.commands_runner import CommandRunner
from proxyd.backends.iptables import Variant, remove_chains, restore_failure, tool
from proxyd.backends.iptables_render import Jump, jump_target, parse_save
from proxyd.backends.ipvs_plan import (
    CHAINS,
    DEFAULT_SCHEDULER,
    NODE_PORT_SETS,
    Fragment,
    IpvsOptions,
    IpvsState,
    RealServer,
    SetSpec,
    VirtualServer,
    VsKey,
    assemble,
    default_scheduler,
    fragment,
    jumps,
    node_port_addresses,
    node_port_member,
    parse_scheduler,
    restore_text,
    set_specs,
)
from proxyd.config import DEFAULT_IPVS_INTERFACE
from proxyd.errors import BackendError
from proxyd.model import IPFamily, NodePlan, Protocol, ServicePlan, ServicePortKey

__all__ = [
    "DEFAULT_INTERFACE",
    "STRICT_ARP_SYSCTLS",
    "SYSCTLS",
    "AddAddress",
    "AddDest",
    "AddMember",
    "AddService",
    "Changes",
    "DelAddress",
    "DelDest",
    "DelMember",
    "DelService",
    "IpvsBackend",
    "IpvsClient",
    "KernelDest",
    "Observed",
    "Op",
    "OpError",
    "SetDest",
    "SetService",
    "diff",
    "mirror",
    "owned",
]

DEFAULT_INTERFACE = DEFAULT_IPVS_INTERFACE  # one definition: the config's default
#: Sysctls IPVS mode needs (relative to /proc/sys). conntrack=1 lets iptables NAT
#: (masquerade) see IPVS connections; conn_reuse_mode=1 reschedules a new connection that
#: reuses an old source port (so it avoids draining real servers); expire_nodest_conn
#: and expire_quiescent_template drop connections and persistence templates of deleted
#: or weight-0 real servers instead of black-holing them.
SYSCTLS: Mapping[str, str] = {
    "net/ipv4/vs/conntrack": "1",
    "net/ipv4/vs/conn_reuse_mode": "1",
    "net/ipv4/vs/expire_nodest_conn": "1",
    "net/ipv4/vs/expire_quiescent_template": "1",
    "net/ipv4/ip_forward": "1",
}
#: Added to :data:`SYSCTLS` with ``strict_arp`` (kube-proxy's ``ipvs.strictARP``). Every
#: service address is bound on the IPVS device, and by default Linux answers ARP for any
#: local address on any link; arp_ignore=1 answers only for addresses of the link the
#: request came in on, arp_announce=2 sources ARP requests from the outgoing link's own
#: address. Then only the node's own addresses answer on its links, and a MetalLB (L2)
#: speaker alone announces a load-balancer IP. Left alone when disabled, as kube-proxy does.
STRICT_ARP_SYSCTLS: Mapping[str, str] = {
    "net/ipv4/conf/all/arp_ignore": "1",
    "net/ipv4/conf/all/arp_announce": "2",
}


# --- what the client reads and writes ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class KernelDest:
    """A real server as the kernel reports it (``masq``: forwarding method is NAT)."""

    address: str
    port: int
    weight: int
    masq: bool = True
    active: int = 0


@dataclass(frozen=True, slots=True)
class AddService:
    server: VirtualServer


@dataclass(frozen=True, slots=True)
class SetService:
    server: VirtualServer


@dataclass(frozen=True, slots=True)
class DelService:
    key: VsKey


@dataclass(frozen=True, slots=True)
class AddDest:
    key: VsKey
    real: RealServer


@dataclass(frozen=True, slots=True)
class SetDest:
    key: VsKey
    real: RealServer


@dataclass(frozen=True, slots=True)
class DelDest:
    key: VsKey
    real: RealServer


@dataclass(frozen=True, slots=True)
class AddAddress:
    address: str


@dataclass(frozen=True, slots=True)
class DelAddress:
    address: str


@dataclass(frozen=True, slots=True)
class AddMember:
    set: str
    member: str


@dataclass(frozen=True, slots=True)
class DelMember:
    set: str
    member: str


Op = (
    AddService
    | SetService
    | DelService
    | AddDest
    | SetDest
    | DelDest
    | AddAddress
    | DelAddress
    | AddMember
    | DelMember
)


@dataclass(frozen=True, slots=True)
class OpError:
    """An operation the kernel refused: ``errno`` and a readable reason."""

    op: Op
    errno: int
    message: str


class IpvsClient(TypingProtocol):
    """The kernel, as the backend needs it (netlink in production, a fake in tests)."""

    def prepare(self, interface: str, sets: Sequence[SetSpec], sysctls: Mapping[str, str]) -> None:
        """Write the sysctls, create the interface (dummy, else a bridge) and the sets
        when missing. Raises :class:`BackendError` when that is impossible."""
        ...

    def services(self) -> dict[VsKey, VirtualServer]:
        """Every virtual server in the kernel (proxyd's or not)."""
        ...

    def dests(self, keys: Iterable[VsKey]) -> dict[VsKey, list[KernelDest]]:
        """Real servers of each of ``keys`` (those that exist)."""
        ...

    def addresses(self, interface: str) -> set[str]:
        """Addresses bound on ``interface`` (none when it does not exist)."""
        ...

    def members(self, sets: Iterable[str]) -> dict[str, set[str]]:
        """Members of each set, in ipset's spelling."""
        ...

    def apply(self, ops: Sequence[Op]) -> list[OpError]:
        """Carry out ``ops`` in order; returns the refused ones (the rest took effect)."""
        ...

    def remove(self, interface: str, sets: Iterable[str]) -> None:
        """Delete the interface and destroy the sets (cleanup)."""
        ...


# --- the pure diff ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observed:
    """Kernel state as far as proxyd owns it (see the module docstring)."""

    services: Mapping[VsKey, VirtualServer]
    dests: Mapping[VsKey, Mapping[tuple[str, int], KernelDest]]
    addresses: frozenset[str]
    members: Mapping[str, frozenset[str]]


def owned(
    key: VsKey,
    addresses: AbstractSet[str],
    members: Mapping[str, AbstractSet[str]],
    node_port_sets: Mapping[Protocol, Sequence[str]] = NODE_PORT_SETS,
    *,
    local: AbstractSet[str] | None = None,
) -> bool:
    """Whether a virtual server in the kernel is proxyd's (see the module docstring), or,
    given another proxy's ``node_port_sets`` (and its interface's ``addresses``), that
    proxy's; ``local`` limits NodePort matches to these addresses (``None``: any). The
    member looked for is :func:`~proxyd.backends.ipvs_plan.node_port_member`'s: the port,
    or for SCTP ``<node IP>,sctp:<port>`` (kube-proxy's sets are laid out the same way)."""
    if key.address in addresses:
        return True
    if local is not None and key.address not in local:
        return False
    member = node_port_member(key)
    return any(
        member in members.get(name, frozenset()) for name in node_port_sets.get(key.protocol, ())
    )


@dataclass(frozen=True, slots=True)
class Changes:
    """Operations in three phases, plus the draining bookkeeping after they succeed:
    ``draining`` maps (virtual server, real server address) to the drain deadline."""

    before: tuple[Op, ...]
    servers: tuple[Op, ...]
    after: tuple[Op, ...]
    draining: Mapping[tuple[VsKey, tuple[str, int]], float]
    touched: frozenset[VsKey]
    deleted: frozenset[VsKey]


def diff(
    want: IpvsState,
    have: Observed,
    draining: Mapping[tuple[VsKey, tuple[str, int]], float],
    now: float,
    drain_timeout: float,
    dirty: AbstractSet[VsKey] | None = None,
) -> Changes:
    """Operations turning ``have`` into ``want``. Real servers that left the plan drain:
    weight 0 first, deletion once ``active`` is 0, the deadline passed, or for UDP.
    ``dirty``: the only virtual servers whose settings or real servers may differ (all
    when ``None``); sets, addresses and stale virtual servers are always compared whole
    (set arithmetic, cheap at any scale)."""
    before: list[Op] = [AddAddress(a) for a in sorted(want.addresses - have.addresses)]
    after: list[Op] = []
    for name, members in want.sets.items():
        present = have.members.get(name, frozenset())
        before += [AddMember(name, m) for m in sorted(members - present)]
        after += [DelMember(name, m) for m in sorted(present - members)]
    after += [DelAddress(a) for a in sorted(have.addresses - want.addresses)]

    servers: list[Op] = []
    still: dict[tuple[VsKey, tuple[str, int]], float] = {}
    touched: set[VsKey] = set()
    if dirty is None:
        keys: Iterable[VsKey] = want.services
    else:
        keys = sorted(k for k in {*dirty, *(k for k, _ in draining)} if k in want.services)
    for key in keys:
        svc = want.services[key]
        current = have.services.get(key)
        kdests = have.dests.get(key, {}) if current is not None else {}
        ops: list[Op] = []
        if current is None:
            ops.append(AddService(svc.server))
        elif current != svc.server:
            ops.append(SetService(svc.server))
        wanted = {r.addr: r for r in svc.reals}
        for addr, real in wanted.items():
            kd = kdests.get(addr)
            if kd is None:
                ops.append(AddDest(key, real))
            elif kd.weight != real.weight or not kd.masq:
                ops.append(SetDest(key, real))
        for addr, kd in sorted(kdests.items()):
            if addr in wanted:
                continue
            real = RealServer(kd.address, kd.port, 0)
            deadline = draining.get((key, addr), now + drain_timeout)
            if key.protocol is Protocol.UDP or kd.active == 0 or now >= deadline:
                ops.append(DelDest(key, real))
                continue
            still[(key, addr)] = deadline
            if kd.weight != 0 or not kd.masq:
                ops.append(SetDest(key, real))
        if ops:
            touched.add(key)
            servers += ops
    deleted = frozenset(have.services.keys() - want.services.keys())
    servers += [DelService(k) for k in sorted(deleted)]
    return Changes(tuple(before), tuple(servers), tuple(after), still, frozenset(touched), deleted)


def mirror(
    want: IpvsState, changes: Changes, previous: Observed, dirty: AbstractSet[VsKey] | None
) -> Observed:
    """What the kernel holds after ``changes`` were applied to ``previous``: the wanted
    state plus the real servers still draining (at weight 0). Only ``dirty`` virtual
    servers (and draining ones) are rebuilt; ``None`` rebuilds all."""
    dests: dict[VsKey, Mapping[tuple[str, int], KernelDest]]
    dests = {} if dirty is None else dict(previous.dests)
    for key in changes.deleted:
        dests.pop(key, None)
    rebuild = want.services.keys() if dirty is None else {*dirty, *(k for k, _ in changes.draining)}
    for key in rebuild:
        svc = want.services.get(key)
        if svc is None:
            dests.pop(key, None)
            continue
        dests[key] = {r.addr: KernelDest(r.address, r.port, r.weight) for r in svc.reals}
    for key, addr in changes.draining:
        old = previous.dests.get(key, {}).get(addr)
        dests[key] = {
            **dests[key],
            addr: KernelDest(addr[0], addr[1], 0, True, old.active if old else 1),
        }
    return Observed(
        services={k: s.server for k, s in want.services.items()},
        dests=dests,
        addresses=want.addresses,
        members=want.sets,
    )


# --- the backend -----------------------------------------------------------------------------


_EMPTY = Observed({}, {}, frozenset(), {})
_DEFAULT_OPTIONS = IpvsOptions()


_Cache = dict[ServicePortKey, tuple[ServicePlan, Fragment]]


@dataclass(slots=True)
class _Mirror:
    """What the last successful sync left: the kernel as proxyd sees it, the state it
    wanted, the drains in progress, and each service port's plan and fragment (a
    partial sync recomputes only fragments whose ServicePlan changed)."""

    observed: Observed = _EMPTY
    state: IpvsState | None = None
    draining: dict[tuple[VsKey, tuple[str, int]], float] = field(default_factory=dict)
    fragments: _Cache = field(default_factory=dict)
    node_addresses: tuple[str, ...] = ()


class IpvsBackend:
    """:class:`~proxyd.backends.Backend` for IPVS mode. ``clock`` returns seconds (for
    drain deadlines); ``runner``/``variant`` write the few iptables rules; ``strict_arp``
    adds :data:`STRICT_ARP_SYSCTLS` to the sysctls every full sync writes."""

    def __init__(
        self,
        client: IpvsClient,
        runner: CommandRunner,
        *,
        variant: Variant = Variant.NFT,
        options: IpvsOptions = _DEFAULT_OPTIONS,
        families: Sequence[IPFamily] = (IPFamily.IPV4,),
        interface: str = DEFAULT_INTERFACE,
        clock: Callable[[], float],
        drain_timeout: float = 900.0,
        lock_wait: int = 5,
        strict_arp: bool = False,
    ) -> None:
        self._client = client
        self._runner = runner
        self._variant = variant
        self._options = options
        self._families = tuple(families)
        self._interface = interface
        self._clock = clock
        self._drain_timeout = drain_timeout
        self._lock_wait = lock_wait
        self._sysctls = {**SYSCTLS, **STRICT_ARP_SYSCTLS} if strict_arp else SYSCTLS
        self._mirror = _Mirror()
        self._need_full = True

    @classmethod
    def real(
        cls,
        options: IpvsOptions = _DEFAULT_OPTIONS,
        *,
        iptables_backend: str = "auto",
        interface: str = DEFAULT_INTERFACE,
        strict_arp: bool = False,
    ) -> IpvsBackend:
        """Production wiring: netlink client, real commands, the iptables variant the node
        uses, IPv6 when the kernel has it, the monotonic clock for drain deadlines."""
        import time

        from proxyd.backends.commands_runner import SubprocessRunner
        from proxyd.backends.iptables import available_families, resolve_variant
        from proxyd.backends.ipvs_netlink import NetlinkIpvsClient  # imports pyroute2

        runner = SubprocessRunner()
        return cls(
            NetlinkIpvsClient(),
            runner,
            variant=resolve_variant(runner, iptables_backend),
            options=options,
            families=available_families(),
            interface=interface,
            clock=time.monotonic,
            strict_arp=strict_arp,
        )

    @property
    def draining(self) -> frozenset[tuple[VsKey, tuple[str, int]]]:
        """Real servers at weight 0 waiting for their connections to end."""
        return frozenset(self._mirror.draining)

    def sync(self, plan: NodePlan, *, full: bool) -> SyncResult:
        full = full or self._need_full
        self._need_full = True  # cleared only by success
        node_addresses = node_port_addresses(plan, self._options)
        fragments, dirty = self._fragments(plan, node_addresses, full)
        _, config_warnings = default_scheduler(self._options)
        want = assemble((f for _, f in fragments.values()), config_warnings)
        warnings = tuple((w.reason, f"{w.key or 'config'}: {w.message}") for w in want.warnings)
        try:
            if full:
                self._prepare()
                # NodePort markers name a port only: scope them to this node's addresses
                local = {*plan.node_addresses, *self._mirror.node_addresses}
                have = self._read(want, local)
            else:
                # node addresses changed (dirty None): every virtual server may lose reals
                maybe = want.services.keys() if dirty is None else dirty
                have = self._refresh(want, self._mirror.observed, maybe)
            now = self._clock()
            changes = diff(want, have, self._mirror.draining, now, self._drain_timeout, dirty)
            errors, fallbacks = self._apply(changes)
        except BackendError as exc:
            return SyncResult(ok=False, full=full, error=str(exc), warnings=warnings)
        warnings += fallbacks
        owners = {k: s.owner for k, s in want.services.items()}
        previous = self._mirror.state.services if self._mirror.state else {}
        written = {owners[k] for k in changes.touched} if not full else set(owners.values())
        removed = {previous[k].owner for k in changes.deleted if k in previous}
        result_rules = {
            "ipvs": len(want.services),
            "ipvs_real": sum(len(s.reals) for s in want.services.values()),
            "ipset": sum(len(m) for m in want.sets.values()),
        }
        if errors:
            detail = "\n".join(f"{e.op}: {e.message}" for e in errors[:20])
            return SyncResult(
                ok=False,
                full=full,
                written=frozenset(written),
                error=f"the kernel refused {len(errors)} IPVS operation(s): {errors[0].message}",
                detail=detail,
                warnings=warnings,
            )
        self._mirror = _Mirror(
            mirror(want, changes, have, dirty),
            want,
            dict(changes.draining),
            fragments,
            node_addresses,
        )
        self._need_full = False
        return SyncResult(
            ok=True,
            full=full,
            written=frozenset(written),
            removed=frozenset(removed - set(owners.values())),
            rules=result_rules,
            warnings=warnings,
        )

    def cleanup(self) -> None:
        """Remove everything IPVS mode installed: proxyd's virtual servers, the rules, the
        sets and the interface. Idempotent."""
        specs = set_specs()
        have = self._read(IpvsState({}, frozenset(), {}))
        errors = self._client.apply([DelService(k) for k in sorted(have.services)])
        if errors:
            raise BackendError(f"cannot delete IPVS services: {errors[0].message}")
        own = {c for cs in CHAINS.values() for c in cs}
        for family in self._families:
            remove_chains(self._runner, self._variant, family, own.__contains__, self._lock_wait)
        self._client.remove(self._interface, [s.name for s in specs])
        self._mirror = _Mirror()
        self._need_full = True

    def remove_foreign(
        self,
        interface: str,
        node_port_sets: Mapping[Protocol, Sequence[str]],
        local: AbstractSet[str],
    ) -> list[VsKey]:
        """Delete another proxy's virtual servers (kube-proxy's, for a migration), told
        apart by the markers proxyd uses for its own — an address on that proxy's
        ``interface``, or a port in its ``node_port_sets`` on a ``local`` address — but
        never one that is proxyd's too (both serve the same services during a
        migration). Returns the deleted ones; the markers stay (the caller removes them)."""
        mine = self._client.addresses(self._interface)
        sets = [n for names in (*NODE_PORT_SETS.values(), *node_port_sets.values()) for n in names]
        members = self._client.members(sets)
        theirs = self._client.addresses(interface)
        doomed = sorted(
            k
            for k in self._client.services()
            if owned(k, theirs, members, node_port_sets, local=local)
            and not owned(k, mine, members)
        )
        errors = self._client.apply([DelService(k) for k in doomed])
        if errors:
            raise BackendError(f"cannot delete IPVS services: {errors[0].message}")
        return doomed

    # --- steps ---

    def _prepare(self) -> None:
        self._client.prepare(self._interface, set_specs(), self._sysctls)
        for family in self._families:
            text = restore_text(family, self._options, self._missing_jumps(family))
            argv = [tool(self._variant, family, "restore"), "-w", str(self._lock_wait), "--noflush"]
            run = self._runner.run(argv, text.encode())
            if not run.ok:
                error, context = restore_failure(text, run)
                raise BackendError(f"{error}\n{context}")

    def _missing_jumps(self, family: IPFamily) -> list[Jump]:
        present: set[tuple[str, str, str | None]] = set()
        for table in CHAINS:
            argv = [tool(self._variant, family, "save"), "-t", table]
            run = self._runner.run(argv)
            if not run.ok:
                raise BackendError(f"{' '.join(argv)} failed: {run.stderr.strip()}")
            builtin = {j.chain for j in jumps()}
            for name, saved in parse_save(run.stdout, table, rules_of=builtin.__contains__).items():
                present |= {(name, chain, jump_target(rule)) for chain, rule in saved.rules}
        return [j for j in jumps() if (j.table, j.chain, j.target) not in present]

    def _read(self, want: IpvsState, local: AbstractSet[str] | None = None) -> Observed:
        """Kernel state proxyd owns (plus virtual servers ``want`` claims); ``local`` as
        in :func:`owned`."""
        addresses = frozenset(self._client.addresses(self._interface))
        sets = self._client.members([s.name for s in set_specs()])
        members = {k: frozenset(v) for k, v in sets.items()}
        services = {
            k: v
            for k, v in self._client.services().items()
            if k in want.services or owned(k, addresses, members, local=local)
        }
        dests = {
            k: {(d.address, d.port): d for d in ds}
            for k, ds in self._client.dests(sorted(services)).items()
        }
        return Observed(services, dests, addresses, members)

    def _fragments(
        self, plan: NodePlan, node_addresses: tuple[str, ...], full: bool
    ) -> tuple[_Cache, set[VsKey] | None]:
        """Each service port's fragment, reused when its ServicePlan is unchanged, and the
        virtual servers that may differ from the mirror (``None``: all of them)."""
        default, _ = default_scheduler(self._options)
        fresh = full or node_addresses != self._mirror.node_addresses
        cache = {} if fresh else self._mirror.fragments
        dirty: set[VsKey] | None = None if fresh else set()
        out: _Cache = {}
        for sp in plan.services:
            prev = cache.get(sp.key)
            if prev is not None and (prev[0] is sp or prev[0] == sp):
                out[sp.key] = prev
                continue
            frag = fragment(sp, node=plan.node, node_addresses=node_addresses, default=default)
            out[sp.key] = (sp, frag)
            if dirty is not None:
                dirty.update(s.key for s in frag.services)
                if prev is not None:
                    dirty.update(s.key for s in prev[1].services)
        if dirty is not None:
            for key in cache.keys() - out.keys():
                dirty.update(s.key for s in cache[key][1].services)
        return out, dirty

    def _refresh(self, want: IpvsState, observed: Observed, dirty: AbstractSet[VsKey]) -> Observed:
        """The mirror, with fresh real servers (and connection counts) wherever one
        drains or is about to: where the mirror holds a real server the plan dropped."""
        keys = {key for key, _ in self._mirror.draining}
        for key in dirty:
            svc = want.services.get(key)
            if svc is None:
                continue
            held = observed.dests.get(key, {})
            if held and not held.keys() <= {r.addr for r in svc.reals}:
                keys.add(key)
        if not keys:
            return observed
        fresh = self._client.dests(sorted(keys))
        dests = dict(observed.dests)
        for key in keys:
            dests[key] = {(d.address, d.port): d for d in fresh.get(key, [])}
        return replace(observed, dests=dests)

    def _apply(self, changes: Changes) -> tuple[list[OpError], tuple[tuple[str, str], ...]]:
        """Apply in phases. A virtual server whose scheduler the kernel lacks (ENOENT) is
        retried with the default scheduler, its real servers after it, and reported."""
        errors = self._client.apply(changes.before)
        refused = self._client.apply(changes.servers)
        fallback, _, _ = parse_scheduler(self._options.default_scheduler)
        fallback = fallback or DEFAULT_SCHEDULER
        retry: list[Op] = []
        fallbacks: list[tuple[str, str]] = []
        for e in refused:
            op = e.op
            if (
                isinstance(op, AddService | SetService)
                and e.errno == errno.ENOENT
                and op.server.scheduler != fallback
            ):
                key = op.server.key
                retry.append(type(op)(replace(op.server, scheduler=fallback, flags=frozenset())))
                if isinstance(op, AddService):  # else the real servers went in already
                    retry += [o for o in changes.servers if isinstance(o, AddDest) and o.key == key]
                fallbacks.append(
                    (
                        "scheduler_unavailable",
                        f"{key}: this kernel has no IPVS scheduler {op.server.scheduler}; "
                        f"using {fallback}",
                    )
                )
        retried = {op.key for op in retry if isinstance(op, AddDest)} | {
            op.server.key for op in retry if isinstance(op, AddService | SetService)
        }
        errors += [e for e in refused if _key_of(e.op) not in retried]
        errors += self._client.apply(retry)
        # a virtual server whose delete was refused keeps the markers that make it proxyd's
        kept = [e.op.key for e in errors if isinstance(e.op, DelService)]
        markers = {DelAddress(k.address) for k in kept} | {
            DelMember(name, node_port_member(k))
            for k in kept
            for name in NODE_PORT_SETS[k.protocol]
        }
        errors += self._client.apply([op for op in changes.after if op not in markers])
        return errors, tuple(fallbacks)


def _key_of(op: Op) -> VsKey | None:
    match op:
        case AddService(server) | SetService(server):
            return server.key
        case DelService(key) | AddDest(key, _) | SetDest(key, _) | DelDest(key, _):
            return key
    return None
