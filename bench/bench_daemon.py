"""Cold start of ``proxyd run`` with 10,000 services, and its steady memory.

A fake API server holds N services (plus ``default/kubernetes``), each with one
EndpointSlice of M ready endpoints on this node. The real daemon starts as its own
process, inside a fresh network namespace (prefix ``pxe-``) where the fake API server
listens too, and programs the real kernel with ``--iptables-backend nft`` or ``legacy``
(root needed). ``--backend none`` runs the same daemon with a backend that writes
nothing, to separate proxyd's own cost (list, translate, plan) from the kernel's.

Figures (one JSON line):

- ``api_service_s``: process start → ``default/kubernetes`` programmed (cold-start
  priming); ``cold_start_s``: process start → first completed full sync (goal ≤ 5 s);
  ``first_sync_s``: that sync alone (plan + restore), from the daemon's own metric;
- ``phases_s``: where the cold start went, from the daemon's log: interpreter and imports
  (``startup``), listing every object (``list``), the first full sync (``sync``);
- ``cpu_s``: CPU the daemon and its children (iptables-restore …) used until then; on a
  busy machine the wall-clock figures grow, this one much less;
- ``rss_mib``: resident memory after ``--settle`` seconds of endpoint churn (goal ≤ 200);
  ``peak_rss_mib``: the high-water mark.

    python bench/bench_daemon.py [--services 10000] [--endpoints 2] [--backend nft]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
METRICS_PORT = 10249


def objects(services: int, endpoints: int, node: str, stamp: str) -> Iterator[dict[str, Any]]:
    yield {"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}}}
    yield _service("default", "kubernetes", "10.96.0.1", 443)
    yield _slice("default", "kubernetes", ["192.168.0.10"], 6443, node, stamp)
    for i in range(services):
        name = f"svc-{i:05d}"
        ip = f"10.{97 + i // 65536}.{i // 256 % 256}.{i % 256}"
        eps = [f"10.244.{1 + (i * endpoints + k) // 250 % 250}.{(i * endpoints + k) % 250 + 2}"
               for k in range(endpoints)]
        yield _service(f"ns-{i % 50}", name, ip, 80)
        yield _slice(f"ns-{i % 50}", name, eps, 8080, node, stamp)


def _service(ns: str, name: str, ip: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": port, "protocol": "TCP"}]}}


def _slice(ns: str, svc: str, ips: list[str], port: int, node: str,
           stamp: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{svc}-x", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time":
                                         stamp}},
            "addressType": "IPv4",
            "ports": [{"name": "p", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "nodeName": node,
                           "conditions": {"ready": True}} for ip in ips]}


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn`` on a thread inside ``netns`` (None: here)."""
    from proxyd.sandbox.demo import in_netns as run_in_netns

    return fn() if netns is None else run_in_netns([(netns, fn)])[0]


def metric(netns: str | None, name: str) -> float | None:
    def fetch() -> float | None:
        try:
            url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else None

    return in_netns(netns, fetch)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def log_time(log: Path, message: str) -> float | None:
    """Epoch seconds of the first JSON log record whose msg starts with ``message``."""
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if str(rec.get("msg", "")).startswith(message):
            return datetime.fromisoformat(rec["ts"]).timestamp()
    return None


def child(argv: list[str]) -> int:
    """``--backend none``: the real daemon wiring with a backend that writes nothing."""
    from proxyd.backends import SyncResult
    from proxyd.commands.run import Daemon, config_from_args
    from proxyd.logging_setup import setup
    from proxyd.model import NodePlan
    from proxyd.sources.kube import api_client

    class Nothing:
        def sync(self, plan: NodePlan, *, full: bool) -> SyncResult:
            return SyncResult(ok=True, full=full, rules={"nat": len(plan.services)})

        def cleanup(self) -> None:
            pass

    from proxyd.cli import build_parser

    args = build_parser().parse_args(["run", *argv])
    cfg, _ = config_from_args(args, os.environ)
    setup(cfg.log_format, cfg.log_level)
    daemon = Daemon(cfg, Nothing(), client=api_client(cfg.kubeconfig), cold=True)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    daemon.run()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=2)
    parser.add_argument("--backend", choices=("nft", "legacy", "none"), default="nft")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds of endpoint churn before reading RSS")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child)

    from proxyd.sandbox.fakeapi import FakeApiServer

    netns = None
    if args.backend != "none":
        if os.geteuid() != 0:
            parser.error("the nft/legacy backends need root (or use --backend none)")
        netns = f"pxe-bench-{os.getpid() % 10000}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    workdir = tempfile.TemporaryDirectory(prefix="pxe-bench-")
    work = Path(workdir.name)
    try:
        api = in_netns(netns, lambda: FakeApiServer().start())
        stamp = datetime.now().astimezone().isoformat()
        t = time.monotonic()
        loaded = api.apply_all(objects(args.services, args.endpoints, "n1", stamp))
        load_s = time.monotonic() - t
        kubeconfig = api.write_kubeconfig(work / "kubeconfig")
        flags = ["--kubeconfig", kubeconfig, "--node-name", "n1",
                 "--cluster-cidr", "10.244.0.0/16", "--log-format", "json",
                 "--metrics-bind-address", f"127.0.0.1:{METRICS_PORT}",
                 "--healthz-bind-address", "127.0.0.1:10256"]
        if netns is None:
            argv = [sys.executable, __file__, "--child", *flags]
        else:
            argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "proxyd", "run",
                    *flags, "--iptables-backend", args.backend]
        log = work / "proxyd.log"
        with log.open("wb") as out:
            started = time.time()
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while (synced := log_time(log, "synced")) is None:  # the first full sync's line
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"daemon did not sync: {log.read_text()[-2000:]}")
                time.sleep(0.05)
            cpu = cpu_seconds(proc.pid)
            primed = log_time(log, "cold start: programmed")
            begun = log_time(log, "starting")
            listed = log_time(log, "informers listed")
            first_sync = metric(netns, "kubeproxy_sync_full_proxy_rules_duration_seconds_sum")
            churn_until = time.monotonic() + args.settle
            i = 0
            while time.monotonic() < churn_until:  # steady state: endpoints keep changing
                for obj in objects(min(args.services, 20), args.endpoints + i % 2, "n1", stamp):
                    if obj["kind"] == "EndpointSlice":
                        api.apply(obj)
                i += 1
                time.sleep(0.5)
            rss, peak = rss_mib(proc.pid)  # `ip netns exec` execs: its pid is the daemon's
        finally:
            proc.terminate()
            code = proc.wait(60)
        api.close()
    finally:
        if netns is not None:
            subprocess.run(["ip", "netns", "del", netns], check=False)
        workdir.cleanup()
    print(json.dumps({
        "bench": "daemon",
        "backend": args.backend,
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "objects_loaded": loaded,
        "api_load_s": round(load_s, 2),
        "api_service_s": round(primed - started, 2) if primed else None,
        "cold_start_s": round(synced - started, 2),
        "first_sync_s": round(first_sync, 2) if first_sync is not None else None,
        "phases_s": {
            "startup": _span(started, begun),
            "list": _span(begun, listed),
            "sync": _span(listed, synced),
        },
        "cpu_s": round(cpu, 2),
        "rss_mib": round(rss, 1),
        "peak_rss_mib": round(peak, 1),
        "exit_code_after_sigterm": code,
        "goal": {"cold_start_s": 5.0, "rss_mib": 200.0},
    }))
    return 0


def _span(a: float | None, b: float | None) -> float | None:
    return round(b - a, 2) if a is not None and b is not None else None


if __name__ == "__main__":
    raise SystemExit(main())
