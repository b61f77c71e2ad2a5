"""iptables backend at scale: 10,000 services x 10 endpoints, nft and legacy.

For each variant, in a fresh network namespace (prefix ``pxi-``, root needed):

- ``plain_restore_s``: ``iptables-restore --noflush`` of the exact payload proxyd's first
  sync writes, fed from memory into emptied tables — the floor (mean of one run before
  and one after proxyd's, the kernel being slower on a table that held rules before);
- ``full_sync_s``: ``IptablesBackend.sync(plan, full=True)`` into the emptied namespace:
  reading the tables, rendering and the same restore; ``ratio`` = full / plain (goal ≤ 1.3);
- ``change_s``: median (and max) of partial syncs that move one endpoint of one service
  (goal ≤ 50 ms); ``change_floor_s``: a bare restore writing one rule at that table size
  (what any change costs the kernel and the tool); ``render_s``: the Python rendering alone;
- ``minimal_layout_floor_s``: the same one-rule restore when the nat table holds only what
  *any* iptables layout that spreads load needs at this scale — one dispatch rule per
  service and one DNAT rule per endpoint with its ``statistic`` choice, reachable from
  PREROUTING and OUTPUT (pod and host traffic) — no endpoint chains, hairpin, masquerade
  or affinity rules. It bounds from below what a one-service change can cost through
  iptables-restore.

One JSON line per variant::

    python bench/bench_iptables.py [--services 10000] [--endpoints 10] [--variants nft legacy]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

# run as a script: import proxyd and tests.builders from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxyd.backends.commands_runner import CompletedRun, SubprocessRunner
from proxyd.backends.iptables import IptablesBackend, Variant, tool
from proxyd.backends.iptables_render import JUMPS, RenderOptions, render
from proxyd.model import Endpoint, IPFamily, NodePlan
from tests.builders import node_plan, sp

OPTIONS = RenderOptions(cluster_cidrs=("10.128.0.0/9",))
V4 = IPFamily.IPV4


def _ip(n: int) -> str:
    return f"10.{128 + n // 65536}.{n // 256 % 256}.{n % 256}"


def build_plan(services: int, endpoints: int) -> NodePlan:
    plans = []
    for i in range(services):
        eps = [Endpoint(ip=_ip(i * endpoints + j), port=8080) for j in range(endpoints)]
        vip = f"10.96.{i // 256}.{i % 256}"
        plans.append(sp(f"svc-{i:05d}", internal=eps, namespace="bench", cluster_ips=(vip,)))
    return node_plan(*plans, node="bench")


def move_one_endpoint(plan: NodePlan, index: int, step: int) -> NodePlan:
    """``plan`` with service ``index`` moving its last endpoint to a new address (the other
    ServicePlan objects stay the same, as the planner hands them back)."""
    services = list(plan.services)
    sp = services[index]
    moved = (*sp.internal[:-1], Endpoint(ip=f"10.127.{step // 256}.{step % 256}", port=8080))
    services[index] = replace(sp, internal=moved, external=moved)
    return replace(plan, services=tuple(services))


@dataclass
class _Recorder:
    inner: SubprocessRunner
    payloads: list[str] = field(default_factory=list)

    def run(self, argv: Sequence[str], stdin: bytes = b"") -> CompletedRun:
        if argv[0].endswith("-restore"):
            self.payloads.append(stdin.decode())
        return self.inner.run(argv, stdin)


def minimal_layout(services: int, endpoints: int) -> bytes:
    """A nat table holding one dispatch rule per service and one DNAT per endpoint (each but
    the last picked by ``statistic``, as every random spread in iptables must be)."""
    chains = [f":PXB-{i:05d} - [0:0]" for i in range(services)]
    rules = []
    for i in range(services):
        vip = f"10.96.{i // 256}.{i % 256}"
        rules.append(f"-A PXB-SERVICES -d {vip}/32 -p tcp --dport 80 -j PXB-{i:05d}")
        for j in range(endpoints):
            dest = _ip(i * endpoints + j)
            chance = f"--mode random --probability {1 / (endpoints - j):.5f}"
            pick = "" if j == endpoints - 1 else f"-m statistic {chance} "
            rules.append(f"-A PXB-{i:05d} -p tcp {pick}-j DNAT --to-destination {dest}:8080")
    head = ["*nat", ":PXB-SERVICES - [0:0]", *chains]
    head += ["-A PREROUTING -j PXB-SERVICES", "-A OUTPUT -j PXB-SERVICES"]
    return "\n".join([*head, *rules, "COMMIT", ""]).encode()


def one_rule_restores(restore: list[str], runs: int = 3) -> float:
    """Median time of restores that each add one rule to a new chain."""
    times = []
    for run in range(runs):
        one_rule = f"*nat\n:PXB-ONE{run} - [0:0]\n-A PXB-ONE{run} -j ACCEPT\nCOMMIT\n"
        start = time.perf_counter()
        subprocess.run(restore, input=one_rule.encode(), check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(variant: Variant, services: int, endpoints: int, changes: int) -> dict[str, object]:
    """Runs inside the benchmark namespace."""
    plan = build_plan(services, endpoints)
    start = time.perf_counter()
    text = render(plan, V4, OPTIONS, jumps=JUMPS, nft=variant is Variant.NFT).text
    render_s = time.perf_counter() - start

    restore = [tool(variant, V4, "restore"), "-w", "5", "--noflush"]
    empty = b"*filter\nCOMMIT\n*nat\nCOMMIT\n"  # without --noflush: flush and delete all

    def plain() -> float:
        """The same restore, same plumbing, into emptied tables."""
        subprocess.run([tool(variant, V4, "restore")], input=empty, check=True)
        start = time.perf_counter()
        assert SubprocessRunner().run(restore, text.encode()).ok
        elapsed = time.perf_counter() - start
        subprocess.run([tool(variant, V4, "restore")], input=empty, check=True)
        return elapsed

    plain_before = plain()

    runner = _Recorder(SubprocessRunner())
    backend = IptablesBackend(runner, variant, options=OPTIONS, families=(V4,))
    start = time.perf_counter()
    result = backend.sync(plan, full=True)
    full_s = time.perf_counter() - start
    assert result.ok, result.error
    assert runner.payloads == [text], "the first sync wrote something else"

    # The floor for a change: a restore writing one rule at this table size (the kernel
    # re-validates the whole nft table on each commit; legacy rewrites the blob).
    change_floor_s = one_rule_restores(restore)

    times = []
    for step in range(changes):
        plan = move_one_endpoint(plan, (step * 7919) % services, step)
        start = time.perf_counter()
        result = backend.sync(plan, full=False)
        times.append(time.perf_counter() - start)
        assert result.ok and not result.full and len(result.written) == 1, result
    plain_s = (plain_before + plain()) / 2  # one run before the syncs, one after

    subprocess.run(restore, input=minimal_layout(services, endpoints), check=True)
    minimal_floor_s = one_rule_restores(restore)
    subprocess.run([tool(variant, V4, "restore")], input=empty, check=True)
    return {
        "variant": str(variant),
        "services": services,
        "endpoints": endpoints,
        "rules": sum(result.rules.values()),
        "payload_mb": round(len(text) / 1e6, 1),
        "render_s": round(render_s, 3),
        "plain_restore_s": round(plain_s, 3),
        "full_sync_s": round(full_s, 3),
        "ratio": round(full_s / plain_s, 3),
        "change_s": round(statistics.median(times), 4),
        "change_max_s": round(max(times), 4),
        "change_floor_s": round(change_floor_s, 4),
        "minimal_layout_floor_s": round(minimal_floor_s, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--changes", type=int, default=7)
    parser.add_argument("--variants", nargs="+", default=["nft", "legacy"], choices=list(Variant))
    parser.add_argument("--inner", choices=list(Variant), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        row = measure(Variant(args.inner), args.services, args.endpoints, args.changes)
        print(json.dumps(row), flush=True)
        return 0
    for variant in args.variants:
        ns = f"pxi-b{secrets.token_hex(2)}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            inner = [sys.executable, __file__, "--inner", variant]
            inner += ["--services", str(args.services), "--endpoints", str(args.endpoints)]
            inner += ["--changes", str(args.changes)]
            subprocess.run(["ip", "netns", "exec", ns, *inner], check=True)
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
