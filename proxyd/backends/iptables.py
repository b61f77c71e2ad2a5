"""The iptables backend: applies :mod:`~proxyd.backends.iptables_render` payloads.

One ``iptables-restore -w N --noflush`` per family and sync (argv list, payload on stdin,
no shell), through an injected :class:`~proxyd.backends.commands_runner.CommandRunner`.
Each table commits atomically, so a refused payload leaves the previous rules in place;
the sync then returns ``ok=False`` with the payload lines around the failing one, and the
next sync is full whatever the caller asks.

Which variant (nft or legacy) is detected the way the kubelet's iptables wrappers do: the
kubelet's ``KUBE-IPTABLES-HINT`` / ``KUBE-KUBELET-CANARY`` chains say which one the node
uses (nft checked first); without them, the variant holding more rules wins; nft when
both are empty. Reading the kernel is done by parsing ``iptables-save`` / ``iptables -S``
output, which works for both variants (python-iptables only sees legacy tables).

Where proxyd's chains are is learned once: the first full sync of a family reads the
tables (stale chains of an earlier run get deleted, jump rules already present are
kept); later full syncs know the chains from the last applied state and only list the
built-in chains to re-insert jump rules someone removed. Partial syncs run one restore
and nothing else.

Localhost NodePorts (:func:`~proxyd.backends.iptables_render.localhost_nodeports`) need
``net.ipv4.conf.all.route_localnet=1``: every full sync ensures it through an injected
:class:`~proxyd.backends.sysctl.Sysctls`. When it cannot be set (a read-only
``/proc/sys``), the rules are rendered without localhost NodePorts and the sync reports a
warning instead of failing, so the node keeps working as before. Without a ``Sysctls``
the option is refused.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from enum import StrEnum

from proxyd.backends import SyncResult
from proxyd.backends.commands_runner import CommandRunner, CompletedRun
from proxyd.backends.conntrack import ConntrackCleaner, stale_udp_flows
from proxyd.backends.iptables_render import (
    JUMPS,
    PROXYD,
    TABLES,
    FamilyState,
    Payload,
    RenderOptions,
    SavedTable,
    localhost_nodeports,
    missing_jumps,
    parse_save,
    render,
    render_cleanup,
)
from proxyd.backends.sysctl import Sysctls
from proxyd.errors import BackendError
from proxyd.model import IPFamily, NodePlan, ServicePortKey

__all__ = [
    "ROUTE_LOCALNET",
    "IptablesBackend",
    "Variant",
    "available_families",
    "choose_variant",
    "detect_variant",
    "remove_chains",
    "resolve_variant",
    "restore_failure",
    "tool",
]

_MARKERS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")
#: What localhost NodePorts need: packets to 127.0.0.0/8 may be routed off the host.
ROUTE_LOCALNET = "net/ipv4/conf/all/route_localnet"


class Variant(StrEnum):
    NFT = "nft"
    LEGACY = "legacy"


#: Values of ``--iptables-backend``.


def tool(variant: Variant, family: IPFamily, kind: str = "") -> str:
    """Binary name, e.g. ``ip6tables-legacy-restore`` (``kind`` = restore | save | "")."""
    base = "ip6tables" if family is IPFamily.IPV6 else "iptables"
    return f"{base}-{variant}-{kind}" if kind else f"{base}-{variant}"


def available_families() -> tuple[IPFamily, ...]:
    """IPv4, plus IPv6 when the kernel has it (``/proc/net/if_inet6``)."""
    v6 = os.path.exists("/proc/net/if_inet6")
    return (IPFamily.IPV4, IPFamily.IPV6) if v6 else (IPFamily.IPV4,)


def choose_variant(mangle: Mapping[Variant, str], dumps: Mapping[Variant, str] | None) -> Variant:
    """Pure decision. ``mangle``: each variant's mangle table dump (where the kubelet's
    markers live); ``dumps``: full dumps, consulted only when no marker is found (may be
    ``None`` then the answer is nft). Markers: nft before legacy; else more rules wins."""
    for marker in _MARKERS:
        for variant in (Variant.NFT, Variant.LEGACY):
            if marker in mangle.get(variant, ""):
                return variant
    if dumps is None:
        return Variant.NFT

    def rules(text: str) -> int:
        return sum(1 for line in text.splitlines() if line.startswith("-"))

    legacy, nft = rules(dumps.get(Variant.LEGACY, "")), rules(dumps.get(Variant.NFT, ""))
    return Variant.LEGACY if legacy > nft else Variant.NFT


def _dump(runner: CommandRunner, variant: Variant, *table: str) -> str:
    out = []
    for family in (IPFamily.IPV4, IPFamily.IPV6):
        args = ["-t", table[0]] if table else []
        try:
            run = runner.run([tool(variant, family, "save"), *args])
        except BackendError:
            continue  # that variant is not installed: it holds nothing
        out.append(run.stdout if run.ok else "")
    return "".join(out)


def detect_variant(runner: CommandRunner) -> Variant:
    """Which variant the node uses (see :func:`choose_variant`)."""
    mangle = {v: _dump(runner, v, "mangle") for v in Variant}
    if any(m in text for text in mangle.values() for m in _MARKERS):
        return choose_variant(mangle, None)
    return choose_variant(mangle, {v: _dump(runner, v) for v in Variant})


def resolve_variant(runner: CommandRunner, choice: str) -> Variant:
    """``--iptables-backend``: ``auto`` detects, ``nft``/``legacy`` force."""
    if choice == "auto":
        return detect_variant(runner)
    return Variant(choice)


_LINE = re.compile(r"line:? (\d+)")
#: The program prefix of a restore message: ``iptables-restore: `` or, with the version
#: header, ``iptables-nft-restore v1.8.9 (nf_tables): `` (alone on its line when the
#: kernel refused the commit and the reasons follow as ``line N: ... failed`` lines).
_PROGRAM = re.compile(r"^\S*-restore(?: v\S+ \([^)]*\))?:\s*")
_HINTS = ("Try `", "Error occurred at line")


def _messages(stderr: str) -> list[str]:
    """The stderr lines that say what went wrong: program prefix stripped, the version
    header, usage hint and "Error occurred at line" dropped (the line number is used
    separately)."""
    out = []
    for raw in stderr.splitlines():
        text = _PROGRAM.sub("", raw.strip(), count=1)
        if text and not text.startswith(_HINTS):
            out.append(text)
    return out


def restore_failure(text: str, run: CompletedRun, around: int = 3) -> tuple[str, str]:
    """A one-line reason (the first message that says what failed, with the line number)
    and the detail: further messages, then the payload lines around the one restore
    named (marked >)."""
    messages = _messages(run.stderr) or ["no message"]
    said, others = messages[0], messages[1:]
    match = _LINE.search(run.stderr)
    if match is not None and _LINE.search(said) is None:
        said += f" (line {match.group(1)})"
    error = f"iptables-restore failed (exit {run.returncode}): {said}"
    if match is None:
        return error, run.stderr.strip()
    bad = int(match.group(1))
    lines = text.splitlines()
    lo, hi = max(1, bad - around), min(len(lines), bad + around)
    context = [f"{'>' if n == bad else ' '}{n:7d}  {lines[n - 1]}" for n in range(lo, hi + 1)]
    return error, "\n".join([*others, *context])


def _check(run: CompletedRun, argv: Sequence[str]) -> str:
    if not run.ok:
        raise BackendError(f"{' '.join(argv)} failed (exit {run.returncode}): {run.stderr.strip()}")
    return run.stdout


def remove_chains(
    runner: CommandRunner,
    variant: Variant,
    family: IPFamily,
    owns: Callable[[str], bool] = PROXYD.owns,
    lock_wait: int = 5,
) -> bool:
    """Delete every chain ``owns`` accepts and every rule jumping to one, in one restore
    per family. Returns whether anything was there to remove."""
    argv = [tool(variant, family, "save")]
    saved = parse_save(_check(runner.run(argv), argv), rules_of=lambda c: not owns(c))
    text = render_cleanup(saved, owns, nft=variant is Variant.NFT)
    if not text:
        return False
    argv = [tool(variant, family, "restore"), "-w", str(lock_wait), "--noflush"]
    run = runner.run(argv, text.encode())
    if not run.ok:
        error, context = restore_failure(text, run)
        raise BackendError(f"{error}\n{context}")
    return True


class IptablesBackend:
    """:class:`~proxyd.backends.Backend` on iptables-restore (nft or legacy).

    ``conntrack`` (optional) deletes stale UDP entries after each successful sync.
    ``families`` are synced in order, each with its own restore. ``sysctls`` sets what
    the options need (``route_localnet`` for localhost NodePorts); required then.
    """

    def __init__(
        self,
        runner: CommandRunner,
        variant: Variant,
        *,
        options: RenderOptions | None = None,
        families: Sequence[IPFamily] = (IPFamily.IPV4, IPFamily.IPV6),
        conntrack: ConntrackCleaner | None = None,
        sysctls: Sysctls | None = None,
        lock_wait: int = 5,
    ) -> None:
        self._runner = runner
        self.variant = variant
        self._options = options or RenderOptions()
        if sysctls is None and localhost_nodeports(self._options):
            raise ValueError("localhost NodePorts need a Sysctls to set route_localnet")
        self._sysctls = sysctls
        self._effective = self._options  # what the rules were rendered with
        self._families = tuple(families)
        self._conntrack = conntrack
        self._lock_wait = lock_wait
        self._states: dict[IPFamily, FamilyState] = {}
        self._synced: FamilyState | None = None  # first family's, at the last ok sync
        self._need_full = True

    def sync(self, plan: NodePlan, *, full: bool) -> SyncResult:
        """Write ``plan``; partial unless ``full`` or the last sync failed."""
        full = full or self._need_full
        warnings = self._ensure_sysctls() if full else ()
        applied = self._states.get(self._families[0])
        before = self._synced  # the rules the conntrack entries were made with
        written: set[ServicePortKey] = set()
        removed: set[ServicePortKey] = set()
        counts: Counter[str] = Counter()
        any_full = False
        for family in self._families:
            try:
                payload = self._payload(plan, family, full)
                run = self._restore(family, payload.text) if payload.text else None
            except BackendError as exc:
                self._need_full = True
                return SyncResult(ok=False, full=full, error=str(exc))
            if run is not None and not run.ok:
                self._need_full = True
                error, context = restore_failure(payload.text, run)
                return SyncResult(ok=False, full=full, error=error, detail=context)
            self._states[family] = payload.state
            any_full |= payload.full
            written |= payload.written
            removed |= payload.removed
            counts.update(payload.rules)
        # After a failed sync the families restored before the failure moved their state
        # on: what they removed is in no key this sync wrote, so look at every key.
        detail = self._clean_conntrack(before, written | removed if before is applied else None)
        self._synced = self._states.get(self._families[0])
        if full:
            self._need_full = False
        return SyncResult(
            ok=True,
            full=any_full,
            written=frozenset(written),
            removed=frozenset(removed),
            rules=dict(counts),
            detail=detail,
            warnings=warnings,
        )

    def cleanup(self) -> None:
        """Remove every proxyd chain and jump rule of this variant (idempotent)."""
        # Forgotten first: when one family fails, the ones before it are already gone,
        # and the next sync must read the tables again instead of trusting the old state.
        self._states.clear()
        self._synced = None
        self._need_full = True
        for family in self._families:
            remove_chains(self._runner, self.variant, family, lock_wait=self._lock_wait)

    # --- internals ------------------------------------------------------------------

    def _ensure_sysctls(self) -> tuple[tuple[str, str], ...]:
        """Decide the options of this full sync: localhost NodePorts only while
        ``route_localnet=1`` holds (checked every full sync: someone may reset it)."""
        self._effective = self._options
        if self._sysctls is None or not localhost_nodeports(self._options):
            return ()
        try:
            self._sysctls.ensure(ROUTE_LOCALNET, "1")
        except BackendError as exc:
            self._effective = replace(self._options, localhost_nodeports=False)
            return (("route_localnet", f"config: {exc}; NodePorts do not answer on 127.0.0.1"),)
        return ()

    def _payload(self, plan: NodePlan, family: IPFamily, full: bool) -> Payload:
        previous = self._states.get(family)
        nft = self.variant is Variant.NFT
        if not full:
            return render(plan, family, self._effective, previous, nft=nft)
        if previous is None:  # first sync: learn what an earlier run left behind
            saved = self._read_tables(family)
            existing = {t: saved[t].chains for t in TABLES if t in saved}
        else:
            saved = self._read_builtin_chains(family)
            existing = None
        return render(
            plan,
            family,
            self._effective,
            previous,
            full=True,
            existing=existing,
            jumps=missing_jumps(saved),
            nft=nft,
        )

    def _read_tables(self, family: IPFamily) -> dict[str, SavedTable]:
        saved: dict[str, SavedTable] = {}
        for table in TABLES:
            argv = [tool(self.variant, family, "save"), "-t", table]
            text = _check(self._runner.run(argv), argv)
            saved.update(parse_save(text, table, rules_of=lambda c: not PROXYD.owns(c)))
        return saved

    def _read_builtin_chains(self, family: IPFamily) -> dict[str, SavedTable]:
        saved: dict[str, SavedTable] = {}
        for table, chain in sorted({(j.table, j.chain) for j in JUMPS}):
            argv = [tool(self.variant, family), "-w", str(self._lock_wait), "-t", table]
            argv += ["-S", chain]
            listing = parse_save(_check(self._runner.run(argv), argv), table)
            if table in listing:
                prior = saved.get(table, SavedTable(frozenset(), ()))
                saved[table] = SavedTable(
                    prior.chains | listing[table].chains, prior.rules + listing[table].rules
                )
        return saved

    def _restore(self, family: IPFamily, text: str) -> CompletedRun:
        argv = [tool(self.variant, family, "restore"), "-w", str(self._lock_wait), "--noflush"]
        return self._runner.run(argv, text.encode())

    def _clean_conntrack(
        self, before: FamilyState | None, keys: set[ServicePortKey] | None
    ) -> str:
        """Delete UDP entries made stale by this sync (nothing on the first one: what the
        kernel held before is unknown, and flushing on restart would break live flows).
        ``keys`` None: every service port of ``before`` and after."""
        after = self._states.get(self._families[0])
        if self._conntrack is None or before is None or after is None or keys == set():
            return ""
        wanted = before.services.keys() | after.services.keys() if keys is None else keys
        old = {k: before.services[k][0] for k in wanted if k in before.services}
        new = {k: after.services[k][0] for k in wanted if k in after.services}
        errors = self._conntrack.delete(stale_udp_flows(old, new))
        return "\n".join(f"conntrack: {e}" for e in errors)
