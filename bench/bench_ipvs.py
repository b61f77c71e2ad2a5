"""IPVS backend at scale: N services x M endpoints, against ``ipvsadm -R``, in the VM.

The host kernel has no IPVS: run on the host, this script re-runs itself inside the test VM
(``tests/vm/run.sh``, qemu TCG — slow, so the *ratio* is the figure that matters). Inside,
each contender gets a fresh network namespace (IPVS state is per namespace; a namespace
that just deleted 100k real servers keeps them in its "trash" list for minutes and every
new real server scans it, which would penalise whoever runs second):

- ``ipvsadm_restore_s``: ``ipvsadm -R`` of the same virtual and real servers (the floor);
- ``full_sync_s``: ``IpvsBackend.sync(plan, full=True)`` into an empty namespace — sysctls,
  interface, sets and iptables rules, reading the kernel, the diff, every virtual server,
  real server, bound address and set member; ``ratio`` = full / ipvsadm (goal ≤ 2);
  ``ipvs_apply_s`` is the virtual/real server part of it alone;
- ``change_s``: a partial sync that replaces one endpoint of one service;
- ``resync_s``: a full sync with nothing to change (reads back all kernel state).

One JSON line::

    python bench/bench_ipvs.py [--services 10000] [--endpoints 10]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

# run as a script (also inside the VM): import proxyd and tests.builders from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_NEWNET = 0x40000000


def _plan(services: int, endpoints: int, moved: int = -1):  # type: ignore[no-untyped-def]
    from proxyd.model import Endpoint
    from tests.builders import node_plan, sp

    plans = []
    for i in range(services):
        vip = f"10.96.{i // 250}.{i % 250 + 1}"
        eps = []
        for j in range(endpoints):
            k = i * endpoints + j + (1_000_000 if i == moved and j == 0 else 0)
            eps.append(Endpoint(f"10.{200 + k // 62500}.{(k // 250) % 250}.{k % 250 + 1}", 8080))
        plans.append(sp(f"svc-{i:05d}", internal=eps, namespace="bench", cluster_ips=(vip,)))
    return node_plan(*plans, node="bench-node")


def _enter(ns: str) -> None:
    subprocess.run(["ip", "netns", "add", ns], check=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, _NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def _in_vm(argv: Sequence[str]) -> int:
    harness = Path(__file__).resolve().parent.parent / "tests" / "vm" / "run.sh"
    env = {**os.environ, "PROXYD_VM_MEM": os.environ.get("PROXYD_VM_MEM", "2048")}
    return subprocess.run([str(harness), "bench/bench_ipvs.py", *argv], env=env).returncode


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    args = ap.parse_args(argv)
    if not os.path.exists("/proc/net/ip_vs") and not Path("/sys/module/ip_vs").exists():
        return _in_vm(sys.argv[1:] if argv is None else argv)

    from proxyd.backends.commands_runner import SubprocessRunner
    from proxyd.backends.ipvs import IpvsBackend
    from proxyd.backends.ipvs_netlink import NetlinkIpvsClient
    from proxyd.backends.ipvs_plan import desired_state

    t = time.perf_counter()
    plan = _plan(args.services, args.endpoints)
    plan_s = time.perf_counter() - t
    state = desired_state(plan)
    lines = []
    for key, svc in state.services.items():
        lines.append(f"-A -t {key.address}:{key.port} -s {svc.server.scheduler}")
        lines += [
            f"-a -t {key.address}:{key.port} -r {r.address}:{r.port} -m -w 1" for r in svc.reals
        ]
    text = ("\n".join(lines) + "\n").encode()

    subprocess.run(["ip", "netns", "add", "bench-ipvsadm"], check=True)
    subprocess.run(["ip", "-n", "bench-ipvsadm", "link", "set", "lo", "up"], check=True)
    t = time.perf_counter()
    subprocess.run(
        ["ip", "netns", "exec", "bench-ipvsadm", "ipvsadm", "-R"], input=text, check=True
    )
    ipvsadm_s = time.perf_counter() - t

    _enter("bench-proxyd")
    client = NetlinkIpvsClient()
    applied: list[float] = []
    real_apply = client.apply

    def timed_apply(ops):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return real_apply(ops)
        finally:
            if ops and type(ops[0]).__name__.endswith(("Service", "Dest")):
                applied.append(time.perf_counter() - start)

    client.apply = timed_apply  # type: ignore[method-assign]
    backend = IpvsBackend(client, SubprocessRunner(), clock=time.monotonic)
    t = time.perf_counter()
    result = backend.sync(plan, full=True)
    full_s = time.perf_counter() - t
    assert result.ok, result.error
    ipvs_apply_s = sum(applied)

    moved = args.services // 2  # the planner reuses unchanged ServicePlans: so does this
    other = _plan(args.services, args.endpoints, moved=moved).services[moved]
    changed = replace(plan, services=(*plan.services[:moved], other, *plan.services[moved + 1 :]))
    t = time.perf_counter()
    result = backend.sync(changed, full=False)
    change_s = time.perf_counter() - t
    assert result.ok and len(result.written) == 1, result

    t = time.perf_counter()
    result = backend.sync(changed, full=True)
    resync_s = time.perf_counter() - t
    assert result.ok, result.error

    print(
        json.dumps(
            {
                "bench": "ipvs",
                "where": "qemu TCG VM, 1 vCPU",
                "services": args.services,
                "endpoints_per_service": args.endpoints,
                "plan_build_s": round(plan_s, 2),
                "ipvsadm_restore_s": round(ipvsadm_s, 2),
                "full_sync_s": round(full_s, 2),
                "ratio": round(full_s / ipvsadm_s, 2),
                "ipvs_apply_s": round(ipvs_apply_s, 2),
                "change_s": round(change_s, 3),
                "resync_s": round(resync_s, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
