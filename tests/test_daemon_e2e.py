"""``proxyd run`` end to end: a real daemon process in a node network namespace, the fake
API server, real packets, a real Prometheus.

Layout (DESIGN §5): node netns ``pxe-…-n1`` with pods web-1 and web-2 on its bridge and a
client outside. The fake API server runs in this test process but listens *inside* the
node netns (its event-loop thread is started from a thread that entered the netns), so
the daemon reaches it on 127.0.0.1 there and nothing is added to the root namespace.
The tests share one daemon and run in file order; each uses its own service and cluster
IP; the last one stops the daemon with SIGTERM.

The failing-backend case needs no test hook in proxyd: the test makes the kernel refuse
proxyd's restore by holding a reference to a chain proxyd must delete.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from proxyd.sandbox.demo import in_netns as run_in_netns
from proxyd.sandbox.fakeapi import FakeApiServer
from proxyd.sandbox.netns import Client, Node, Topology
from tests.builders import ep_obj, node_obj, port_obj, slice_obj, svc_obj
from tests.conftest import require
from tests.test_daemon import eventually, fetch

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

T = TypeVar("T")
HEALTHZ, METRICS, PROMETHEUS = 10256, 10249, 19090
SYNC_PERIOD = 2.0  # /healthz turns 503 after 2 x this
TRIGGER = "endpoints.kubernetes.io/last-change-trigger-time"
TOPOLOGY = "openyurt.io/topologyKeys"


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """``fn`` on a thread inside ``netns``; sockets and threads it creates stay there."""
    return run_in_netns([(netns, fn)])[0]


def get(netns: str, url: str) -> tuple[int, bytes]:
    return in_netns(netns, lambda: fetch(url))


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass
class E2E:
    node: Node
    client: Client
    api: FakeApiServer
    proc: subprocess.Popen[bytes]
    log: Path
    pod_ips: dict[str, str]

    def healthz(self, path: str = "/healthz") -> tuple[int, bytes]:
        return get(self.node.name, f"http://127.0.0.1:{HEALTHZ}{path}")

    def metrics(self) -> str:
        status, body = get(self.node.name, f"http://127.0.0.1:{METRICS}/metrics")
        assert status == 200
        return body.decode()

    def metric(self, name: str) -> float:
        """Sum of every series of ``name`` (all label sets)."""
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.metrics().splitlines()
                   if line.startswith((name + " ", name + "{")))

    def answers(self, ip: str, count: int = 1) -> list[str]:
        """Who answered each of ``count`` TCP connections to ip:80 from the client
        (``!refused``/``!timeout`` for failures)."""
        return [a.pod or f"!{a.error}" for a in
                self.client.probe("tcp", ip, 80, count=count, timeout=0.5)]

    def service(self, name: str, ip: str, pods: dict[str, str], *, spec: dict[str, Any] | None
                = None, **annotations: str) -> None:
        """Create/update service ``name`` (port 80 → 8080, more ``spec`` fields by API name)
        with endpoints ``pods`` (pod → node name), stamped with a fresh trigger time."""
        self.api.apply(svc_obj(name, cluster_ip=ip, annotations=annotations or None,
                               **(spec or {})))
        endpoints = [ep_obj(self.pod_ips[p], node=n, ready=True) for p, n in pods.items()]
        self.api.apply(slice_obj(name, endpoints, ports=[port_obj(8080)],
                                 annotations={TRIGGER: now_rfc3339()}))

    def save(self) -> str:
        return self.node.run("iptables-nft-save", "-t", "nat").stdout

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    require(os.geteuid() == 0, "needs root for network namespaces")
    for binary in ("ip", "iptables-nft-restore", "iptables-nft-save", "conntrack"):
        require(shutil.which(binary), f"{binary} not installed (.ci/install)")
    tmp = tmp_path_factory.mktemp("e2e")
    with Topology("pxe-") as topo:
        node = topo.add_node()
        pods = {name: topo.add_pod(node, name) for name in ("web-1", "web-2")}
        client = topo.add_client(node)
        for pod in pods.values():
            topo.serve(pod, tcp=[8080], lifetime=900)
        api = in_netns(node.name, lambda: FakeApiServer().start())
        try:
            api.apply(node_obj("n1"))
            kubeconfig = api.write_kubeconfig(tmp / "kubeconfig")
            log = tmp / "proxyd.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    node.argv(sys.executable, "-m", "proxyd", "run", "--kubeconfig", kubeconfig,
                              "--node-name", "n1", "--cluster-cidr", "10.244.0.0/16",
                              "--iptables-backend", "nft",
                              "--metrics-bind-address", f"127.0.0.1:{METRICS}",
                              "--healthz-bind-address", f"127.0.0.1:{HEALTHZ}",
                              "--sync-period", f"{SYNC_PERIOD}s", "--min-sync-period", "100ms",
                              "--log-format", "json", "--log-level", "debug"),
                    stdout=out, stderr=subprocess.STDOUT,
                )
            run = E2E(node, client, api, proc, log, {n: p.ip for n, p in pods.items()})
            try:
                eventually(lambda: not json.loads(run.healthz()[1] or b"{}")
                           .get("lastUpdated", "0001").startswith("0001"),
                           15, "first sync")
                yield run
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        finally:
            api.close()


def test_service_traffic_follows_every_change(e2e: E2E) -> None:
    ip = "10.96.0.50"
    start = time.monotonic()
    e2e.service("web", ip, {"web-1": "n1"})
    eventually(lambda: e2e.answers(ip) == ["web-1"], 5, "service reachable")
    assert time.monotonic() - start <= 2.0, e2e.tail()

    e2e.service("web", ip, {"web-1": "n1", "web-2": "n2"})
    eventually(lambda: set(e2e.answers(ip, 30)) == {"web-1", "web-2"}, 5, "scaled to two")

    e2e.service("web", ip, {"web-1": "n1", "web-2": "n2"}, **{TOPOLOGY: "kubernetes.io/hostname"})
    eventually(lambda: set(e2e.answers(ip, 20)) == {"web-1"}, 5, "node scope: local only")

    e2e.api.delete("Service", "web", "default")
    e2e.api.delete("EndpointSlice", "web-abcde", "default")
    eventually(lambda: e2e.answers(ip) == ["!refused"] or e2e.answers(ip) == ["!timeout"], 5,
               "service gone")
    assert ip not in e2e.save()


def test_network_programming_latency_observed_per_change(e2e: E2E) -> None:
    ip = "10.96.0.51"
    name = "kubeproxy_network_programming_duration_seconds_count"
    for step, pods in enumerate(({"web-1": "n1"}, {"web-1": "n1", "web-2": "n1"}), start=1):
        before = e2e.metric(name)
        e2e.service("latency", ip, pods)
        eventually(lambda b=before: e2e.metric(name) > b, 5, f"latency of change {step}")
    text = e2e.metrics()
    assert 'kubeproxy_network_programming_duration_seconds_bucket{le="5.0"}' in text
    bucket = next(float(line.split()[1]) for line in text.splitlines() if line.startswith(
        'kubeproxy_network_programming_duration_seconds_bucket{le="5.0"}'))
    assert bucket == e2e.metric(name)  # every change programmed within 5 s


def test_healthz_503_while_restores_fail_livez_stays_200_then_recovers(e2e: E2E) -> None:
    ip = "10.96.0.52"
    e2e.service("victim", ip, {"web-1": "n1"})
    eventually(lambda: e2e.answers(ip) == ["web-1"], 5, "victim reachable")
    chain = next(line.rsplit("-j ", 1)[1].split()[0] for line in e2e.save().splitlines()
                 if line.startswith("-A PROXYD-SERVICES") and ip in line
                 and "PROXYD-SVC-" in line)
    # A foreign rule jumping to the service's chain: the kernel refuses to delete it, so
    # every restore that removes the service fails, until the reference goes away.
    e2e.node.run("iptables-nft", "-t", "nat", "-N", "PXE-HOLD")
    e2e.node.run("iptables-nft", "-t", "nat", "-A", "PXE-HOLD", "-j", chain)
    failures = e2e.metric("proxyd_sync_failures_total")
    try:
        e2e.api.delete("Service", "victim", "default")
        eventually(lambda: e2e.healthz()[0] == 503, 4 * SYNC_PERIOD + 5, "/healthz 503")
        assert e2e.healthz("/livez")[0] == 200
        assert e2e.metric("proxyd_sync_failures_total") > failures
        body = json.loads(e2e.healthz()[1])
        assert set(body) == {"lastUpdated", "currentTime", "nodeEligible"}
        for _ in range(3):  # stays live while failing
            time.sleep(SYNC_PERIOD / 2)
            assert e2e.healthz("/livez")[0] == 200
    finally:
        e2e.node.run("iptables-nft", "-t", "nat", "-F", "PXE-HOLD")
        e2e.node.run("iptables-nft", "-t", "nat", "-X", "PXE-HOLD")
    eventually(lambda: e2e.healthz()[0] == 200, 2 * SYNC_PERIOD + 5, "/healthz 200 again")
    assert chain not in e2e.save()
    assert e2e.metric("kubeproxy_sync_proxy_rules_iptables_restore_failures_total") > 0


def test_losing_the_api_server_keeps_the_rules_and_resumes(e2e: E2E) -> None:
    ip = "10.96.0.54"
    e2e.service("steady", ip, {"web-1": "n1"})
    eventually(lambda: e2e.answers(ip) == ["web-1"], 5, "steady reachable")
    e2e.api.stop()
    try:
        time.sleep(3 * SYNC_PERIOD)  # several periodic full syncs without an API server
        assert e2e.answers(ip) == ["web-1"]
        assert e2e.healthz("/livez")[0] == 200
        assert e2e.healthz()[0] == 200  # nothing queued: the rules are as current as known
    finally:
        in_netns(e2e.node.name, e2e.api.start)
    e2e.service("steady", ip, {"web-2": "n1"})  # informers resumed: changes flow again
    eventually(lambda: e2e.answers(ip) == ["web-2"], 15, "change after reconnect")


def test_health_check_node_port_answers_local_endpoint_count(e2e: E2E) -> None:
    port = 32100
    spec = {"type": "NodePort", "externalTrafficPolicy": "Local", "healthCheckNodePort": port,
            "ports": [port_obj(80, nodePort=30080)]}
    url = f"http://127.0.0.1:{port}/"
    e2e.service("local", "10.96.0.55", {"web-1": "n1", "web-2": "n1"}, spec=spec)
    # the Service may be synced before its slice: wait for the state with both endpoints
    _, body = eventually(
        lambda: (r := get(e2e.node.name, url))[0] == 200 and r, 15, "hc server with endpoints"
    )
    assert json.loads(body)["localEndpoints"] == 2, body
    assert json.loads(body)["service"] == {"namespace": "default", "name": "local"}
    e2e.service("local", "10.96.0.55", {"web-1": "n2"}, spec=spec)
    eventually(lambda: get(e2e.node.name, url)[0] == 503, 5, "no local endpoint: 503")
    assert json.loads(get(e2e.node.name, url)[1])["localEndpoints"] == 0
    e2e.api.delete("Service", "local", "default")
    eventually(lambda: get(e2e.node.name, url)[0] == 0, 5, "server closed with the service")


def test_metrics_pass_promtool_and_a_real_prometheus_scrapes_them(e2e: E2E, tmp_path) -> None:
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    require(promtool and prometheus, "prometheus/promtool not installed (.ci/install)")
    assert promtool is not None and prometheus is not None
    text = e2e.metrics()
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=30, check=False)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()

    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: proxyd\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{METRICS}']}}]\n"
    )
    server = subprocess.Popen(
        e2e.node.argv(prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                      f"--storage.tsdb.path={tmp_path / 'data'}",
                      f"--web.listen-address=127.0.0.1:{PROMETHEUS}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        query = urllib.parse.quote('count({__name__=~"kubeproxy_.+",job="proxyd"})')
        url = f"http://127.0.0.1:{PROMETHEUS}/api/v1/query?query={query}"

        def series() -> float:
            status, body = get(e2e.node.name, url)
            result = json.loads(body)["data"]["result"] if status == 200 else []
            return float(result[0]["value"][1]) if result else 0.0

        assert eventually(series, 30, "Prometheus scraped kubeproxy_ series") >= 12
        _, body = get(e2e.node.name, f"http://127.0.0.1:{PROMETHEUS}/api/v1/targets")
        [target] = json.loads(body)["data"]["activeTargets"]
        assert (target["health"], target["lastError"]) == ("up", "")
    finally:
        server.terminate()
        server.wait(15)


def test_sigterm_leaves_rules_in_place_and_exits_0(e2e: E2E) -> None:
    ip = "10.96.0.53"
    e2e.service("survivor", ip, {"web-2": "n1"})
    eventually(lambda: e2e.answers(ip) == ["web-2"], 5, "survivor reachable")
    e2e.service("survivor", ip, {"web-1": "n1", "web-2": "n1"})  # a sync may be running
    e2e.proc.send_signal(signal.SIGTERM)
    assert e2e.proc.wait(20) == 0, e2e.tail()
    assert ip in e2e.save()
    assert e2e.answers(ip) != ["!refused"]
    assert "rules left in place" in e2e.tail()

