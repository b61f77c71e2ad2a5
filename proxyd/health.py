"""Health of the proxier, served the way kube-proxy serves it.

Health means "how stale is the programmed state", not "is the process up": a change that
was queued and not applied within ``timeout`` (twice syncPeriod) makes ``/healthz`` answer
503 with kube-proxy's JSON body (``lastUpdated``, ``currentTime``, ``nodeEligible``).
Before the first successful sync nothing is known to be programmed, so ``/healthz`` is
503 then too (kube-proxy answers 200 while starting up; see docs/decisions.md), and, as
in kube-proxy, it is 503 while this node is being deleted (``nodeEligible`` false).
``/livez`` answers whether the sync loop is still *trying*: it stays 200 while the
backend keeps failing (restarting the pod would not fix a kernel that refuses rules, and
a restart loses nothing but time), and turns 503 only when work is pending and no sync
attempt has finished for ``timeout`` — a wedged loop, which a restart does fix.

For services with ``externalTrafficPolicy: Local`` the node also answers on the service's
``healthCheckNodePort`` with the number of local endpoints (503 at zero), so load
balancers only send traffic to nodes that can serve it locally.

Under systemd (``Type=notify``), :class:`SystemdNotifier` speaks the ``sd_notify``
datagram protocol itself (no libsystemd binding needed): READY after the first sync,
STATUS lines, and WATCHDOG pings that the daemon sends only while ``/livez`` would be
200, so a wedged loop gets restarted by systemd as it would by the kubelet.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from proxyd.model import NodePlan, ServiceRef, TrafficPolicy
from proxyd.runner import Clock

__all__ = [
    "HealthCheck",
    "HealthStatus",
    "HttpServer",
    "Listen",
    "ProxyHealth",
    "Response",
    "RunningServer",
    "ServiceHealthServers",
    "SystemdNotifier",
    "health_checks",
    "health_routes",
    "serve_http",
]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[str], Response]


class HttpServer(Protocol):
    def close(self) -> None: ...


class Listen(Protocol):
    """Opens a server on (host, port) answering GETs with ``handler(path)``."""

    def __call__(self, host: str, port: int, handler: Handler) -> HttpServer: ...


# --- proxier health ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """``healthy``: synced at least once and no change queued for longer than the
    timeout (the node's eligibility is separate, as in kube-proxy's ``IsHealthy``)."""

    healthy: bool
    live: bool
    node_eligible: bool
    last_updated: float | None
    current_time: float


class ProxyHealth:
    """Tracks the oldest queued-but-unapplied change, the last successful sync and the
    last finished sync attempt. Thread-safe: sources queue, the sync loop updates,
    HTTP threads read. ``node_eligible`` says whether this node may receive traffic
    (false while it is being deleted); it is asked on every status."""

    def __init__(
        self, clock: Clock, timeout: float, node_eligible: Callable[[], bool] = lambda: True
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._node_eligible = node_eligible
        self._lock = threading.Lock()
        self._oldest_pending: float | None = None
        self._last_attempt: float | None = None
        self._last_updated_wall: float | None = None

    def queued_update(self) -> None:
        """A change arrived that needs a sync (keeps the oldest such time)."""
        with self._lock:
            if self._oldest_pending is None:
                self._oldest_pending = self._clock.monotonic()

    def attempted(self) -> None:
        """A sync attempt finished, successfully or not."""
        with self._lock:
            self._last_attempt = self._clock.monotonic()

    def updated(self) -> None:
        """A sync succeeded: everything queued before it is applied."""
        with self._lock:
            self._oldest_pending = None
            self._last_attempt = self._clock.monotonic()
            self._last_updated_wall = self._clock.time()

    def status(self) -> HealthStatus:
        with self._lock:
            now = self._clock.monotonic()
            healthy = self._last_updated_wall is not None  # never synced: nothing known
            live = True
            if self._oldest_pending is not None:
                healthy = healthy and now - self._oldest_pending < self._timeout
                since = max(self._oldest_pending, self._last_attempt or self._oldest_pending)
                live = now - since < self._timeout
            return HealthStatus(
                healthy=healthy,
                live=live,
                node_eligible=self._node_eligible(),
                last_updated=self._last_updated_wall,
                current_time=self._clock.time(),
            )


def _go_time(epoch: float | None) -> str:
    """Go's ``time.Time.String()`` spelling, as in kube-proxy's body (zero time if None)."""
    if epoch is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    stamp = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f").rstrip("0")
    return f"{stamp.rstrip('.')} +0000 UTC"


def health_routes(health: ProxyHealth) -> Handler:
    """``/healthz`` (no sync yet, stale state or ineligible node → 503) and ``/livez``
    (wedged loop → 503), both with kube-proxy's body."""

    def handle(path: str) -> Response:
        route = path.split("?", 1)[0]
        if route not in ("/healthz", "/livez"):
            return Response(404, b"404 page not found\n", "text/plain; charset=utf-8")
        st = health.status()
        ok = st.healthy and st.node_eligible if route == "/healthz" else st.live
        body = {
            "lastUpdated": _go_time(st.last_updated),
            "currentTime": _go_time(st.current_time),
            "nodeEligible": st.node_eligible,
        }
        return Response(200 if ok else 503, json.dumps(body).encode())

    return handle


# --- healthCheckNodePort servers -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthCheck:
    service: ServiceRef
    local_endpoints: int


def health_checks(plan: NodePlan) -> dict[int, HealthCheck]:
    """healthCheckNodePort → what it answers, for eTP=Local services. A service with
    several ports counts the local endpoints of its best-served port; should two services
    claim one port (the API server prevents it), the first by key wins."""
    checks: dict[int, HealthCheck] = {}
    for sp in plan.services:
        port = sp.port.health_check_node_port
        if port is None or sp.port.external_traffic_policy is not TrafficPolicy.LOCAL:
            continue
        ref = sp.key.service
        seen = checks.get(port)
        if seen is None or (seen.service == ref and sp.local_endpoints > seen.local_endpoints):
            checks[port] = HealthCheck(ref, sp.local_endpoints)
    return checks


class ServiceHealthServers:
    """One HTTP server per healthCheckNodePort, reconciled from each new plan. Counts
    change in place (no rebind); a port that cannot be bound is retried on the next
    reconcile and reported through ``on_error``."""

    def __init__(
        self,
        health: ProxyHealth,
        *,
        host: str = "",
        listen: Listen | None = None,
        on_error: Callable[[int, OSError], None] = lambda port, exc: None,
    ) -> None:
        self._health = health
        self._host = host
        self._listen: Listen = listen if listen is not None else serve_http
        self._on_error = on_error
        self._lock = threading.Lock()
        self._checks: dict[int, HealthCheck] = {}
        self._servers: dict[int, HttpServer] = {}

    @property
    def ports(self) -> frozenset[int]:
        return frozenset(self._servers)

    def sync(self, plan: NodePlan) -> None:
        wanted = health_checks(plan)
        with self._lock:
            self._checks = wanted
        for port in sorted(self._servers.keys() - wanted.keys()):
            self._servers.pop(port).close()
        for port in sorted(wanted.keys() - self._servers.keys()):
            try:
                self._servers[port] = self._listen(self._host, port, self._handler(port))
            except OSError as exc:
                self._on_error(port, exc)

    def close(self) -> None:
        for port in sorted(self._servers):
            self._servers.pop(port).close()

    def _handler(self, port: int) -> Handler:
        def handle(path: str) -> Response:
            with self._lock:
                check = self._checks.get(port)
            if check is None:
                return Response(404, b"404 page not found\n", "text/plain; charset=utf-8")
            proxy_healthy = self._health.status().healthy
            body = {
                "service": {"namespace": check.service.namespace, "name": check.service.name},
                "localEndpoints": check.local_endpoints,
                "serviceProxyHealthy": proxy_healthy,
            }
            ok = check.local_endpoints > 0 and proxy_healthy
            return Response(200 if ok else 503, json.dumps(body).encode())

        return handle


# --- a minimal threaded HTTP server -----------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _DualStackServer(_Server6):
    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class RunningServer:
    """A server started by :func:`serve_http`; ``port`` is the bound port."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"http-{server.server_address[1]}", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve_http(host: str, port: int, handler: Handler) -> RunningServer:
    """Serve GETs on (host, port) from a background thread; ``host == ""`` listens on
    every IPv4 and IPv6 address when the kernel allows dual-stack sockets."""

    class _Handle(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            response = handler(self.path)
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(response.body)

        def log_message(self, format: str, *args: object) -> None:
            """Probes every few seconds would flood the log."""

    server: _Server
    if host == "" and socket.has_dualstack_ipv6():
        server = _DualStackServer(("::", port), _Handle)
    elif ":" in host:
        server = _Server6((host, port), _Handle)
    else:
        server = _Server((host or "0.0.0.0", port), _Handle)
    return RunningServer(server)


# --- systemd ------------------------------------------------------------------------------


class SystemdNotifier:
    """``sd_notify(3)`` over ``$NOTIFY_SOCKET``; every call is a no-op outside systemd
    (or when the socket is gone), never an error: notification is advisory."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval: float | None = (
            int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        )

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True if it was sent."""
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(lines).encode())
        except OSError:
            return False
        return True
