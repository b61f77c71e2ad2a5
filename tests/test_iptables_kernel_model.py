"""IptablesBackend against a small model of the kernel's tables (what iptables-restore
--noflush, iptables-save and iptables -S do to and show of them), driven through random
plan changes, refused restores (atomic, or a legacy restore whose filter table commits
before nat fails; in one family or both) and cleanups (which may fail in one family
after the other's chains are gone). Property: once a sync succeeds, the tables hold exactly
what one sync of the same plan gives on a fresh node: no stale chain or rule is left,
none is missing."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd.backends.commands_runner import CompletedRun
from proxyd.backends.iptables import IptablesBackend, Variant
from proxyd.backends.iptables_render import RenderOptions
from proxyd.errors import BackendError
from proxyd.model import IPFamily, NodePlan, Protocol, ServicePlan
from tests.builders import ep, node_plan, sp

Tables = dict[str, dict[str, list[str]]]
BUILTIN = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
OPTIONS = RenderOptions(cluster_cidrs=("10.244.0.0/16", "fd00:244::/64"))
FAMILIES = (IPFamily.IPV4, IPFamily.IPV6)


class Refused(Exception):
    pass


def empty() -> Tables:
    return {t: {c: [] for c in chains} for t, chains in BUILTIN.items()}


def restore(tables: Tables, text: str, fail: str | None) -> Tables:
    """``text`` applied as iptables-restore --noflush does, table by table; ``fail``:
    "all" refuses the whole payload, "nat" commits filter then refuses nat."""
    if fail == "all":
        raise Refused
    done = copy.deepcopy(tables)
    work: dict[str, list[str]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            work = copy.deepcopy(done[table])
        elif line == "COMMIT":
            if fail == "nat" and table == "nat":
                raise Refused(done)
            done[table] = work
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            if policy == "-" or name not in work:
                work[name] = []
        elif line.startswith(("-A ", "-I ", "-D ", "-X ")):
            op, chain, *rest = line.split(" ", 2)
            if chain not in work:
                raise AssertionError(f"{line}: no chain {chain}")
            if op == "-A":
                work[chain].append(rest[0])
            elif op == "-I":
                position, rule = rest[0].split(" ", 1)
                work[chain].insert(int(position) - 1, rule)
            elif op == "-D":
                work[chain].remove(rest[0])
            else:
                refs = [r for rules in work.values() for r in rules if f"-j {chain}" in r]
                assert not work[chain] and not refs, f"{line}: chain busy"
                del work[chain]
        elif line != "-S":
            raise AssertionError(f"unexpected restore line {line!r}")
    return done


def save(tables: Tables, table: str) -> str:
    chains = tables[table]
    lines = [f"*{table}"]
    lines += [f":{c} {'ACCEPT' if c in BUILTIN[table] else '-'} [0:0]" for c in sorted(chains)]
    lines += [f"-A {c} {r}" for c in sorted(chains) for r in chains[c]]
    return "\n".join([*lines, "COMMIT", ""])


@dataclass
class KernelRunner:
    """Both families' tables (``iptables``, ``ip6tables``); ``fail`` applies to the
    restores of the family ``fail_family`` names (None: both)."""

    tables: dict[str, Tables] = field(
        default_factory=lambda: {"iptables": empty(), "ip6tables": empty()}
    )
    fail: str | None = None
    fail_family: str | None = None

    def run(self, argv: Sequence[str], stdin: bytes = b"") -> CompletedRun:
        family, _, tool = argv[0].partition("-nft")
        tables = self.tables[family]
        if tool == "-restore":
            fail = self.fail if self.fail_family in (None, family) else None
            try:
                self.tables[family] = restore(tables, stdin.decode(), fail)
            except Refused as exc:
                if exc.args:
                    self.tables[family] = exc.args[0]
                return CompletedRun(2, "", "iptables-restore: line 3 failed\n")
            return CompletedRun(0)
        if tool == "-save":
            which = [argv[argv.index("-t") + 1]] if "-t" in argv else sorted(tables)
            return CompletedRun(0, "".join(save(tables, t) for t in which))
        if tool == "" and "-S" in argv:
            table, chain = argv[argv.index("-t") + 1], argv[argv.index("-S") + 1]
            rules = tables[table].get(chain, [])
            return CompletedRun(0, "".join(f"-A {chain} {r}\n" for r in rules))
        raise AssertionError(f"unexpected command {argv}")


def service(name: str, endpoints: tuple[int, ...], udp: bool, node_port: bool) -> ServicePlan:
    """Dual-stack: each endpoint index gives an IPv4 and an IPv6 endpoint."""
    return sp(
        name,
        cluster_ips=(f"10.96.0.{ord(name[0])}", f"fd00:96::{ord(name[0])}"),
        protocol=Protocol.UDP if udp else Protocol.TCP,
        internal=[e for i in endpoints for e in (ep(f"10.244.1.{i}"), ep(f"fd00:244::{i}"))],
        node_port=30000 + ord(name[0]) if node_port else None,
    )


plans = st.dictionaries(
    st.sampled_from(("a", "b", "c", "d")),
    st.tuples(st.sets(st.integers(2, 5)).map(lambda s: tuple(sorted(s))), st.booleans(),
              st.booleans()),
).map(lambda d: node_plan(*(service(n, *v) for n, v in d.items())))
steps = st.one_of(
    st.tuples(st.just("sync"), plans, st.sampled_from((None, None, "all", "nat")),
              st.booleans(), st.sampled_from((None, "iptables", "ip6tables"))),
    st.tuples(st.just("cleanup"), st.none(), st.sampled_from((None, "all")), st.none(),
              st.sampled_from((None, "iptables", "ip6tables"))),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, max_size=12), plans)
def test_synced_tables_equal_a_fresh_sync_of_the_same_plan(
    sequence: list[tuple[str, Any, Any, Any, Any]], final: NodePlan
) -> None:
    runner = KernelRunner()
    be = IptablesBackend(runner, Variant.NFT, options=OPTIONS, families=FAMILIES)
    for kind, plan, fail, full, fail_family in sequence:
        runner.fail, runner.fail_family = fail, fail_family
        if kind == "sync":
            be.sync(plan, full=bool(full))
            continue
        with contextlib.suppress(BackendError):  # IPv4 may be gone, IPv6 not
            be.cleanup()
    runner.fail = None
    assert be.sync(final, full=False).ok
    fresh = KernelRunner()
    assert IptablesBackend(fresh, Variant.NFT, options=OPTIONS, families=FAMILIES).sync(
        final, full=True
    ).ok
    assert runner.tables == fresh.tables
