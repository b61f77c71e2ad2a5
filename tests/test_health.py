"""Proxier health (/healthz, /livez) and the healthCheckNodePort servers."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request

import pytest

from proxyd.health import (
    HealthCheck,
    ProxyHealth,
    Response,
    ServiceHealthServers,
    SystemdNotifier,
    health_checks,
    health_routes,
    serve_http,
)
from proxyd.model import (
    Endpoint,
    NodePlan,
    Protocol,
    ServicePlan,
    ServicePort,
    ServicePortKey,
    ServiceRef,
    TrafficPolicy,
)
from proxyd.runner import ManualClock

TIMEOUT = 60.0


def health(clock: ManualClock, eligible: bool = True, *, synced: bool = True) -> ProxyHealth:
    """Proxy health, by default after a first successful sync at the clock's time."""
    h = ProxyHealth(clock, TIMEOUT, node_eligible=lambda: eligible)
    if synced:
        h.updated()
    return h


def get(handler, path: str) -> tuple[int, dict]:
    resp: Response = handler(path)
    return resp.status, json.loads(resp.body)


# --- proxier health ----------------------------------------------------------------------


def test_not_healthy_but_live_until_the_first_successful_sync() -> None:
    clock = ManualClock()
    h = health(clock, synced=False)
    routes = health_routes(h)
    st = h.status()
    assert (st.healthy, st.live, st.last_updated) == (False, True, None)
    assert (routes("/healthz").status, routes("/livez").status) == (503, 200)
    h.queued_update()
    clock.advance(TIMEOUT / 2)
    h.attempted()  # a failed sync changes nothing
    assert (routes("/healthz").status, routes("/livez").status) == (503, 200)
    h.updated()
    assert (routes("/healthz").status, routes("/livez").status) == (200, 200)


def test_healthy_with_nothing_queued_however_long_ago_the_last_sync() -> None:
    clock = ManualClock()
    h = health(clock)
    clock.advance(10 * TIMEOUT)
    st = h.status()
    assert (st.healthy, st.live) == (True, True)


def test_queued_update_unapplied_past_timeout_is_unhealthy() -> None:
    clock = ManualClock()
    h = health(clock)
    h.queued_update()
    clock.advance(TIMEOUT - 0.001)
    assert h.status().healthy
    clock.advance(0.001)
    assert not h.status().healthy


def test_oldest_queued_update_counts_not_the_latest() -> None:
    clock = ManualClock()
    h = health(clock)
    h.queued_update()
    clock.advance(TIMEOUT / 2)
    h.queued_update()
    clock.advance(TIMEOUT / 2)
    assert not h.status().healthy


def test_successful_sync_clears_pending_and_records_wall_time() -> None:
    clock = ManualClock()
    h = health(clock)
    h.queued_update()
    clock.advance(TIMEOUT * 2)
    h.updated()
    st = h.status()
    assert st.healthy
    assert st.last_updated == clock.time()


def test_failing_syncs_are_unhealthy_but_live() -> None:
    clock = ManualClock()
    h = health(clock)
    h.queued_update()
    for _ in range(10):
        clock.advance(TIMEOUT / 3)
        h.attempted()
    st = h.status()
    assert (st.healthy, st.live) == (False, True)


def test_wedged_loop_is_not_live() -> None:
    clock = ManualClock()
    h = health(clock)
    h.attempted()
    h.queued_update()
    clock.advance(TIMEOUT / 2)
    h.attempted()
    clock.advance(TIMEOUT)
    assert not h.status().live


def test_healthz_body_is_kube_proxys() -> None:
    clock = ManualClock()
    h = health(clock)
    h.updated()
    clock.advance(0.25)
    status, body = get(health_routes(h), "/healthz")
    assert status == 200
    assert body == {
        "lastUpdated": "2023-11-14 22:30:00 +0000 UTC",
        "currentTime": "2023-11-14 22:30:00.25 +0000 UTC",
        "nodeEligible": True,
    }


def test_zero_time_before_first_sync() -> None:
    status, body = get(health_routes(health(ManualClock(), synced=False)), "/healthz")
    assert (status, body["lastUpdated"]) == (503, "0001-01-01 00:00:00 +0000 UTC")


@pytest.mark.parametrize(
    ("queued_age", "eligible", "want_healthz", "want_livez"),
    [
        pytest.param(None, True, 200, 200, id="fresh"),
        pytest.param(TIMEOUT + 1, True, 503, 503, id="stale-and-no-attempt"),
        pytest.param(None, False, 503, 200, id="node-ineligible-only-fails-healthz"),
    ],
)
def test_routes_status(queued_age, eligible, want_healthz, want_livez) -> None:
    clock = ManualClock()
    h = health(clock, eligible=eligible)
    if queued_age is not None:
        h.queued_update()
        clock.advance(queued_age)
    routes = health_routes(h)
    assert routes("/healthz").status == want_healthz
    assert routes("/livez?verbose").status == want_livez


def test_unknown_path_is_404() -> None:
    assert health_routes(health(ManualClock()))("/metrics").status == 404


# --- healthCheckNodePort --------------------------------------------------------------------


def sp(
    name: str,
    *,
    hc_port: int | None = 30100,
    etp: TrafficPolicy = TrafficPolicy.LOCAL,
    local: int = 1,
    port_name: str = "http",
) -> ServicePlan:
    ref = ServiceRef("ns", name)
    port = ServicePort(
        key=ServicePortKey(ref, port_name, Protocol.TCP),
        port=80,
        cluster_ips=("10.96.0.10",),
        node_port=30080,
        external_traffic_policy=etp,
        health_check_node_port=hc_port,
    )
    eps = tuple(Endpoint(f"10.244.1.{i + 2}", 8080, node_name="n1") for i in range(local))
    return ServicePlan(port=port, internal=eps, external=eps, mode="none", local_endpoints=local)


def plan(*services: ServicePlan) -> NodePlan:
    return NodePlan(node="n1", services=tuple(services))


def test_health_checks_only_for_local_external_policy_with_a_port() -> None:
    checks = health_checks(plan(
        sp("a", hc_port=30100, local=2),
        sp("b", hc_port=None),
        sp("c", hc_port=30102, etp=TrafficPolicy.CLUSTER),
    ))
    assert checks == {30100: HealthCheck(ServiceRef("ns", "a"), 2)}


def test_health_check_of_multi_port_service_uses_its_best_port() -> None:
    checks = health_checks(plan(sp("a", local=0, port_name="a"), sp("a", local=3, port_name="b")))
    assert checks[30100].local_endpoints == 3


class FakeServer:
    def __init__(self, host, port, handler, log) -> None:
        self.port, self.handler, self.log = port, handler, log
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.log.append(("close", self.port))


class FakeListen:
    def __init__(self, busy: frozenset[int] = frozenset()) -> None:
        self.busy = busy
        self.servers: dict[int, FakeServer] = {}
        self.log: list[tuple[str, int]] = []

    def __call__(self, host, port, handler):
        if port in self.busy:
            raise OSError(98, "Address already in use")
        self.log.append(("open", port))
        self.servers[port] = FakeServer(host, port, handler, self.log)
        return self.servers[port]


def test_servers_follow_the_plan_and_counts_change_without_rebinding() -> None:
    listen = FakeListen()
    servers = ServiceHealthServers(health(ManualClock()), listen=listen)
    servers.sync(plan(sp("a", hc_port=30100, local=1), sp("b", hc_port=30101, local=0)))
    assert servers.ports == {30100, 30101}
    status, body = get(listen.servers[30100].handler, "/")
    assert (status, body["localEndpoints"]) == (200, 1)
    assert body["service"] == {"namespace": "ns", "name": "a"}
    assert listen.servers[30101].handler("/").status == 503

    servers.sync(plan(sp("a", hc_port=30100, local=0)))
    assert servers.ports == {30100}
    assert listen.log == [("open", 30100), ("open", 30101), ("close", 30101)]
    assert get(listen.servers[30100].handler, "/") == (503, {
        "service": {"namespace": "ns", "name": "a"},
        "localEndpoints": 0,
        "serviceProxyHealthy": True,
    })
    servers.close()
    assert listen.servers[30100].closed


def test_unhealthy_proxy_fails_service_health_checks_too() -> None:
    clock = ManualClock()
    h = health(clock)
    listen = FakeListen()
    servers = ServiceHealthServers(h, listen=listen)
    servers.sync(plan(sp("a", local=2)))
    h.queued_update()
    clock.advance(TIMEOUT)
    status, body = get(listen.servers[30100].handler, "/")
    assert (status, body["serviceProxyHealthy"]) == (503, False)


def test_port_that_cannot_be_bound_is_reported_and_retried() -> None:
    errors: list[int] = []
    listen = FakeListen(busy=frozenset({30100}))
    servers = ServiceHealthServers(
        health(ManualClock()), listen=listen, on_error=lambda port, exc: errors.append(port)
    )
    servers.sync(plan(sp("a")))
    assert (servers.ports, errors) == (frozenset(), [30100])
    listen.busy = frozenset()
    servers.sync(plan(sp("a")))
    assert servers.ports == {30100}


def test_serve_http_answers_on_loopback() -> None:
    server = serve_http("127.0.0.1", 0, lambda path: Response(503, f'"{path}"'.encode()))
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/x?y", timeout=5)
        assert err.value.code == 503
        assert json.loads(err.value.read()) == "/x?y"
        assert err.value.headers["Content-Type"] == "application/json"
    finally:
        server.close()


# --- systemd notification -------------------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_sends_one_datagram(tmp_path, abstract: bool) -> None:
    address = f"\0proxyd-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(5)
        env = {"NOTIFY_SOCKET": "@" + address[1:] if abstract else address,
               "WATCHDOG_USEC": "90000000", "WATCHDOG_PID": str(os.getpid())}
        notifier = SystemdNotifier(env)
        assert notifier.enabled and notifier.watchdog_interval == 90.0
        assert notifier.notify("READY=1", "STATUS=rules in sync")
        assert sock.recv(1024) == b"READY=1\nSTATUS=rules in sync"


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="not-under-systemd"),
        pytest.param({"NOTIFY_SOCKET": "/nonexistent/socket"}, id="socket-gone"),
    ],
)
def test_sd_notify_is_a_quiet_no_op_outside_systemd(env) -> None:
    assert SystemdNotifier(env).notify("READY=1") is False


def test_watchdog_meant_for_another_process_is_ignored() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert SystemdNotifier(env).watchdog_interval is None
