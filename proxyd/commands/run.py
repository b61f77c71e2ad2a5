"""``proxyd run``: the daemon.

Informers (``proxyd.sources.kube``) write translated objects into a :class:`ClusterState`
whose change listener queues a sync on the bounded-frequency runner. Each sync checks out
the changes, re-plans the services they touch (all of them when a Node or NodePool
changed), hands the plan to the backend and reports what happened to metrics, health,
the healthCheckNodePort servers and Events. The runner loop runs on the main thread, so
SIGTERM lets the current sync finish (or aborts it if it runs on for long: a restore is
atomic, either applied or not), then the daemon stops with the rules left in place and
exits 0. Losing the API server never touches the rules: the informers retry and the node
keeps the last state.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import math
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from proxyd.backends import Backend, SyncResult
from proxyd.config import (
    DEFAULT_IPVS_INTERFACE,
    Config,
    IptablesBackendChoice,
    LogFormat,
    ProxyMode,
    interface_name,
    load_file,
    parse_bind_address,
    resolve,
)
from proxyd.errors import ProxydError, SourceError
from proxyd.events import EventRecorder, backend_warnings, plan_warnings
from proxyd.health import (
    HttpServer,
    ProxyHealth,
    Response,
    ServiceHealthServers,
    SystemdNotifier,
    health_routes,
    serve_http,
)
from proxyd.logging_setup import kv, setup
from proxyd.model import (
    ClusterSnapshot,
    IPFamily,
    NodeInfo,
    NodePlan,
    ServiceRef,
)
from proxyd.plan import build_plan
from proxyd.runner import Backoff, BoundedFrequencyRunner, Clock, SystemClock
from proxyd.store import ClusterState

if TYPE_CHECKING:  # prometheus_client and kubernetes load only when the daemon starts
    from prometheus_client import CollectorRegistry

    from proxyd.backends.commands_runner import CommandRunner
    from proxyd.backends.iptables import Variant
    from proxyd.metrics import Metrics
    from proxyd.sources.kube import InformerOptions

__all__ = ["Daemon", "Shutdown", "SyncAborted", "Syncer", "register"]

log = logging.getLogger("proxyd.run")

KUBERNETES_SERVICE = ServiceRef("default", "kubernetes")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="the daemon: watch the API server and keep this node's rules in sync",
        description="Watch Services, EndpointSlices, Nodes and NodePools and program this "
        "node's iptables or IPVS rules. Flags override the --config file.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML config (KubeProxyConfiguration names)")
    p.add_argument("--kubeconfig", dest="kubeconfig", metavar="FILE",
                   help="kubeconfig file (default: in-cluster service account)")
    p.add_argument("--hostname-override", "--node-name", dest="node_name", metavar="NAME",
                   help="this node's name (default: $NODE_NAME, else the host name)")
    p.add_argument("--proxy-mode", dest="proxy_mode", choices=[m.value for m in ProxyMode])
    p.add_argument("--ipvs-scheduler", dest="ipvs_scheduler", metavar="NAME",
                   help="default IPVS scheduler (rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, "
                   "nq, mh)")
    p.add_argument("--ipvs-interface", dest="ipvs_interface", metavar="NAME", type=interface_name,
                   help="IPVS mode: device holding the service addresses (default "
                   f"{DEFAULT_IPVS_INTERFACE}; kube-ipvs0 only when replacing kube-proxy)")
    p.add_argument("--ipvs-strict-arp", dest="ipvs_strict_arp",
                   action=argparse.BooleanOptionalAction,
                   help="IPVS mode: set arp_ignore=1 and arp_announce=2 (net.ipv4.conf.all) so "
                   "the node does not answer ARP for service addresses (MetalLB L2 needs it)")
    p.add_argument("--cluster-cidr", dest="cluster_cidr", metavar="CIDR[,CIDR]")
    p.add_argument("--nodeport-addresses", dest="nodeport_addresses", metavar="CIDR[,CIDR]",
                   help="addresses NodePorts answer on (default: all)")
    p.add_argument("--masquerade-all", dest="masquerade_all",
                   action=argparse.BooleanOptionalAction, help="SNAT all service traffic")
    p.add_argument("--iptables-localhost-nodeports", dest="localhost_nodeports",
                   action=argparse.BooleanOptionalAction,
                   help="iptables mode: IPv4 NodePorts also answer on 127.0.0.1 (default on, "
                   "as kube-proxy; sets net.ipv4.conf.all.route_localnet=1)")
    p.add_argument("--metrics-bind-address", dest="metrics_bind_address", metavar="IP:PORT",
                   help="default 127.0.0.1:10249; empty disables")
    p.add_argument("--healthz-bind-address", dest="healthz_bind_address", metavar="IP:PORT",
                   help="default 0.0.0.0:10256; empty disables")
    p.add_argument("--sync-period", dest="sync_period", metavar="DURATION",
                   help="full resync period (default 30s); /healthz fails after twice this")
    p.add_argument("--min-sync-period", dest="min_sync_period", metavar="DURATION",
                   help="minimum time between syncs (default 1s)")
    p.add_argument("--iptables-backend", dest="iptables_backend",
                   choices=[c.value for c in IptablesBackendChoice])
    p.add_argument("--proxy-name", dest="proxy_name", metavar="NAME",
                   help="value of service.kubernetes.io/service-proxy-name proxyd serves")
    p.add_argument("--log-format", dest="log_format", choices=[f.value for f in LogFormat])
    p.add_argument("--log-level", dest="log_level",
                   choices=("debug", "info", "warning", "error"))
    _conntrack_flags(p)
    p.set_defaults(handler=_run)


def _conntrack_flags(p: argparse.ArgumentParser) -> None:
    """kube-proxy's conntrack flags, same names and meaning: applied once at start."""
    p.add_argument("--conntrack-max-per-core", dest="conntrack_max_per_core", type=int,
                   metavar="N", help="nf_conntrack_max is N x CPUs (at most 1048576) but at "
                   "least --conntrack-min, only ever raised (default 32768; 0 leaves it alone)")
    p.add_argument("--conntrack-min", dest="conntrack_min", type=int, metavar="N",
                   help="lower bound of nf_conntrack_max (default 131072)")
    for flag, dest, default in (
        ("tcp-timeout-established", "conntrack_tcp_timeout_established", "24h; 0: leave"),
        ("tcp-timeout-close-wait", "conntrack_tcp_timeout_close_wait", "1h; 0: leave"),
        ("udp-timeout", "conntrack_udp_timeout", "0: leave"),
        ("udp-timeout-stream", "conntrack_udp_timeout_stream", "0: leave"),
    ):
        p.add_argument(f"--conntrack-{flag}", dest=dest, metavar="DURATION",
                       help=f"nf_conntrack_{flag.replace('-', '_')} (default {default} it "
                       "as it is)")
    p.add_argument("--conntrack-tcp-be-liberal", dest="conntrack_tcp_be_liberal",
                   action=argparse.BooleanOptionalAction,
                   help="set nf_conntrack_tcp_be_liberal=1 (default: leave it alone)")


def config_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[Config, list[str]]:
    """The resolved configuration and notes about ignored config-file fields. Every flag's
    ``dest`` is a :class:`Config` field; a flag not given is None and does not override."""
    file_values, notes = load_file(args.config) if args.config else ({}, [])
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
             if hasattr(args, f.name)}
    return resolve(file_values, flags, env=env), notes


def _run(args: argparse.Namespace) -> int:
    from proxyd.conntrack_tuning import WARNING_REASON, tune_at_start
    from proxyd.sources.kube import api_client

    cfg, notes = config_from_args(args, os.environ)
    setup(cfg.log_format, cfg.log_level)
    for note in notes:
        log.warning(note)
    # as kube-proxy, before any rule; a failure is only a warning, kept in proxyd_warnings
    tuning = tune_at_start(cfg)
    backend, cold = make_backend(cfg)
    daemon = Daemon(cfg, backend, client=api_client(cfg.kubeconfig), cold=cold,
                    standing_warnings=[WARNING_REASON] * len(tuning.warnings))
    _relax_gc_until(daemon.syncer.synced_once)
    shutdown = Shutdown(daemon)
    signal.signal(signal.SIGTERM, shutdown.on_signal)
    signal.signal(signal.SIGINT, shutdown.on_signal)
    try:
        daemon.run()
    except SyncAborted:
        log.info("sync aborted; rules as of the last completed restore left in place")
    return 0


#: Allocations between young-generation collections until the first sync is done. Listing
#: and planning 10,000 services allocates millions of objects that all stay alive; with
#: the default (700) the collector rescans the growing heap over and over (full
#: collections alone took about half a second of a cold start).
COLD_START_GC_THRESHOLD = 100_000


def _relax_gc_until(first_sync: threading.Event) -> None:
    """Collect rarely until ``first_sync`` is set, then freeze what is alive by then (the
    imported modules, the listed state, the first plan: long-lived, and acyclic where
    not) so later full collections only scan what came after, and restore the default
    thresholds. Frozen objects are still freed by reference counting."""
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], COLD_START_GC_THRESHOLD), *thresholds[1:])

    def settle() -> None:
        first_sync.wait()
        gc.freeze()
        gc.set_threshold(*thresholds)

    threading.Thread(target=settle, name="gc-settle", daemon=True).start()


class SyncAborted(BaseException):
    """Raised in the main thread to abandon a sync at shutdown. A BaseException, so no
    ``except Exception`` on the way swallows it; ``subprocess.run`` kills the
    iptables-restore in flight, whose table commit is atomic: the kernel keeps either
    the old or the new rules."""


class Shutdown:
    """SIGTERM/SIGINT: the sync in progress may finish for ``abort_after`` seconds (most
    take milliseconds; a full sync of a big node on nft can take a minute), then it is
    aborted so the process exits 0 before the kubelet or systemd resorts to SIGKILL.
    A second signal during a sync aborts at once."""

    def __init__(self, daemon: Daemon, abort_after: float = 20.0) -> None:
        self._daemon = daemon
        self._abort_after = abort_after
        self._requested = False

    def on_signal(self, signum: int, _frame: object) -> None:
        if self._requested:
            if self._daemon.syncer.busy:
                raise SyncAborted
            return
        self._requested = True
        log.info("received %s: stopping after the current sync", signal.Signals(signum).name)
        self._daemon.stop()
        timer = threading.Timer(self._abort_after, self._interrupt)
        timer.daemon = True
        timer.start()

    def _interrupt(self) -> None:
        """A real signal to the main thread: it interrupts a blocking wait (a simulated
        one would only be seen once the restore finished)."""
        main = threading.main_thread().ident
        if main is not None and self._daemon.syncer.busy:
            log.warning("sync still running %.0fs after the stop request: aborting it",
                        self._abort_after)
            signal.pthread_kill(main, signal.SIGTERM)


def make_backend(cfg: Config) -> tuple[Backend, bool]:
    """The backend ``--proxy-mode`` asks for, configured from ``cfg``, and whether the
    kernel holds none of proxyd's state yet (a cold node: see :meth:`Syncer.prime`)."""
    from proxyd.backends import build_backend
    from proxyd.backends.commands_runner import SubprocessRunner

    backend, variant = build_backend(cfg)
    log.info("backend", extra=kv(mode=cfg.proxy_mode.value, iptables=variant.value))
    if cfg.proxy_mode is ProxyMode.IPVS:
        from proxyd.backends.ipvs_netlink import has_link

        return backend, not has_link(cfg.ipvs_interface)
    return backend, _iptables_cold(SubprocessRunner(), variant)


def _iptables_cold(runner: CommandRunner, variant: Variant) -> bool:
    """Whether the nat table holds no proxyd chain yet (a cold node, not a restart); when
    it cannot be read, assume it does (priming is then skipped, which is safe). Warns
    about another service proxy programming the same node (DESIGN §6)."""
    from proxyd.backends.iptables import tool
    from proxyd.backends.iptables_render import KUBE_PROXY, PROXYD, parse_save

    run = runner.run([tool(variant, IPFamily.IPV4, "save"), "-t", "nat"])
    nat = parse_save(run.stdout, "nat", rules_of=lambda chain: False).get("nat")
    chains = nat.chains if nat is not None else frozenset()
    for name, owns in (("kube-proxy", KUBE_PROXY.owns),
                       ("Cilium", lambda c: c.startswith("CILIUM_"))):
        if any(owns(c) for c in chains):
            log.warning("%s rules are present on this node: both proxies will program "
                        "services (docs/deploy.md, 'Replacing kube-proxy')", name)
    return run.ok and not any(PROXYD.owns(c) for c in chains)


# --- one sync -------------------------------------------------------------------------------


class Syncer:
    """What the runner runs: changes → plan → backend → metrics, health, events.

    Full syncs (every rule rewritten, stale ones removed) happen first, after any
    failure, when this node's own Node object changed, and once ``sync_period`` has passed
    since the last full one; otherwise the backend writes only what differs. A Node or
    NodePool change re-plans every service (topology may differ for any of them); other
    changes re-plan only the services they touch, so a periodic full sync costs one
    restore, not a re-plan.
    """

    def __init__(
        self,
        *,
        state: ClusterState,
        backend: Backend,
        node_name: str,
        proxy_name: str,
        clock: Clock,
        sync_period: float,
        metrics: Metrics,
        health: ProxyHealth,
        backoff: Backoff,
        retry_after: Callable[[float], None],
        service_health: ServiceHealthServers | None = None,
        events: EventRecorder | None = None,
        standing_warnings: Sequence[str] = (),
    ) -> None:
        self._state = state
        self._backend = backend
        self._node_name = node_name
        self._proxy_name = proxy_name
        self._clock = clock
        self._sync_period = sync_period
        self._metrics = metrics
        self._health = health
        self._backoff = backoff
        self._retry_after = retry_after
        self._service_health = service_health
        self._events = events
        self._started_wall = clock.time()
        self._need_full = True
        self._last_full = -math.inf
        self._plan: NodePlan | None = None
        self._node: NodeInfo | None = None
        self._triggers: dict[ServiceRef, float] = {}
        self._unattributed: set[tuple[str, str]] = set()
        # reasons of problems found at start that no sync clears (conntrack tuning)
        self._standing_warnings = tuple(standing_warnings)
        self.synced_once = threading.Event()
        self.busy = False
        """True while a sync (or the cold-start priming) is talking to the backend."""

    def sync(self) -> None:
        """One sync; an unexpected exception (a bug, not bad input: that is rejected
        earlier) counts as a failed full sync and is retried with backoff, everything
        re-planned because the changes it checked out are gone with it. The daemon stays
        up, keeps its watches and the rules already programmed, and says so."""
        start = self._clock.monotonic()
        try:
            self._sync(start)
        except Exception as exc:  # the loop must outlive a bug in one sync
            log.exception("sync crashed: %r; everything is re-planned on the retry", exc)
            self._plan = None  # its checked-out changes are lost: plan from scratch
            result = SyncResult(ok=False, full=True, error=f"internal error: {exc!r}")
            self._metrics.observe_sync(full=True, ok=False, finished_at=self._clock.time(),
                                       duration=self._clock.monotonic() - start, rules={})
            self._failed(True, result)

    def _sync(self, start: float) -> None:
        changes = self._state.checkout()
        for ref, at in changes.trigger_times.items():
            self._triggers[ref] = min(at, self._triggers.get(ref, at))
        snapshot = self._state.snapshot()
        pending_services, pending_endpoints = self._state.pending()
        self._metrics.set_pending(services=pending_services, endpoints=pending_endpoints)
        node = snapshot.nodes.get(self._node_name)
        full = self._full_due(node, start)
        previous = self._plan
        changed = None if changes.topology or previous is None else changes.changed_services
        plan = build_plan(snapshot, self._node_name, proxy_name=self._proxy_name,
                          previous=previous, changed=changed)
        self._plan, self._node = plan, node
        result = self._apply(plan, full)
        done = self._clock.monotonic()
        self._metrics.observe_sync(full=full, ok=result.ok, duration=done - start,
                                   finished_at=self._clock.time(), rules=result.rules)
        if result.ok:
            self._succeeded(plan, full, start, done, result)
        else:
            self._failed(full, result)
        self._report_plan(snapshot, changed, previous, plan)

    def _full_due(self, node: NodeInfo | None, now: float) -> bool:
        return (
            self._need_full
            or node != self._node
            or now - self._last_full >= self._sync_period
        )

    def _report_plan(
        self,
        snapshot: ClusterSnapshot,
        changed: frozenset[ServiceRef] | None,
        previous: NodePlan | None,
        plan: NodePlan,
    ) -> None:
        """What the plan decided (gauges, mode-change log lines), after the data path was
        written: counting endpoints is not on the way to programmed rules."""
        self._metrics.observe_plan(plan)
        if previous is not None:
            _log_mode_changes(previous, plan)

    def prime(self, refs: frozenset[ServiceRef]) -> bool:
        """Cold start (DESIGN §6): program ``refs`` (``default/kubernetes``) and the static
        chains (masquerade) alone, as soon as they and their EndpointSlices are known,
        so pods reach the API server before thousands of other services are listed and
        written. Only for a kernel without proxyd state: the full sync that follows
        removes what it does not know. False when the services are not known yet."""
        snapshot = self._state.snapshot()
        services = {ref: snapshot.services[ref] for ref in refs if ref in snapshot.services}
        slices = {k: v for k, v in snapshot.slices.items() if v.service in services}
        if not services or not slices:
            return False
        partial = ClusterSnapshot(services, slices, snapshot.nodes, snapshot.pools)
        plan = build_plan(partial, self._node_name, proxy_name=self._proxy_name)
        result = self._apply(plan, True)
        log.info("cold start: programmed %s first", ", ".join(sorted(map(str, services))),
                 extra=kv(ok=result.ok, error=result.error))
        return True

    def _apply(self, plan: NodePlan, full: bool) -> SyncResult:
        self.busy = True
        try:
            return self._backend.sync(plan, full=full)
        except ProxydError as exc:  # backends return failures as values; a raise is one too
            return SyncResult(ok=False, full=full, error=str(exc))
        finally:
            self.busy = False

    def _succeeded(
        self, plan: NodePlan, full: bool, start: float, done: float, result: SyncResult
    ) -> None:
        if full:
            self._need_full = False
            self._last_full = done  # the period runs from the end: a slow full sync is
            # followed by syncPeriod of partial ones, not by another full one at once
        self._backoff.reset()
        self._health.updated()
        self._metrics.observe_programming(self._triggers.values(), now=self._clock.time(),
                                          started=self._started_wall)
        self._triggers = {}
        if self._service_health is not None:
            self._service_health.sync(plan)
        self._report_warnings(plan, result)
        log.log(logging.INFO if full else logging.DEBUG, "synced", extra=kv(
            full=full, seconds=round(done - start, 3), service_ports=len(plan.services),
            written=len(result.written), removed=len(result.removed)))
        self.synced_once.set()

    def _report_warnings(self, plan: NodePlan, result: SyncResult) -> None:
        """Planner and backend warnings → Events (on their Service), the warnings gauge,
        and one log line per configuration problem when the set of them changes."""
        about_services, unattributed = backend_warnings(result.warnings)
        warnings = [*plan_warnings(plan), *about_services]
        self._metrics.set_warnings([w.reason for w in warnings] + [r for r, _ in unattributed]
                                   + list(self._standing_warnings))
        if self._events is not None:
            self._events.record(warnings)
        if set(unattributed) != self._unattributed:
            self._unattributed = set(unattributed)
            for reason, message in sorted(self._unattributed):
                log.warning("%s", message, extra=kv(reason=reason))

    def _failed(self, full: bool, result: SyncResult) -> None:
        self._need_full = True
        self._health.attempted()
        delay = self._backoff.next()
        self._retry_after(delay)
        log.error("sync failed: %s", result.error, extra=kv(
            full=full, retry_in=delay, detail=result.detail or None))


def _log_mode_changes(previous: NodePlan, plan: NodePlan) -> None:
    """One line per service port whose topology mode changed (DESIGN §6: operators must
    be able to see the decision)."""
    before = {sp.key: sp.mode for sp in previous.services}
    for sp in plan.services:
        was = before.get(sp.key)
        if was is not None and was != sp.mode:
            log.info("service port topology mode changed", extra=kv(
                service_port=str(sp.key), mode=sp.mode, previous=was, reason=sp.reason))


# --- the daemon -----------------------------------------------------------------------------


class Daemon:
    """Everything ``proxyd run`` wires together; :meth:`run` blocks until :meth:`stop`.

    ``client`` is a ``kubernetes.client.ApiClient``; tests and benchmarks pass a fake
    backend and informer options, the command passes the real ones.
    """

    def __init__(
        self,
        cfg: Config,
        backend: Backend,
        *,
        client: Any,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        cold: bool = False,
        informer_options: InformerOptions | None = None,
        notifier: SystemdNotifier | None = None,
        standing_warnings: Sequence[str] = (),
    ) -> None:
        from proxyd.events import KubeEventSink
        from proxyd.metrics import Metrics
        from proxyd.sources.kube import InformerOptions, KubeSources

        self.cfg = cfg
        self._cold = cold
        self.clock: Clock = clock or SystemClock()
        self.registry = _with_process_metrics(registry)
        self.metrics = Metrics(self.registry, restore_based=cfg.proxy_mode is ProxyMode.IPTABLES)
        self.health = ProxyHealth(self.clock, 2 * cfg.sync_period,
                                  node_eligible=self._node_eligible)
        self._notifier = notifier if notifier is not None else SystemdNotifier()
        self._stop = threading.Event()
        self.state = ClusterState(on_change=self._queued)
        self.service_health = ServiceHealthServers(self.health, on_error=_health_port_failed)
        self.events = EventRecorder(KubeEventSink(client), self.clock, component="proxyd",
                                    node=cfg.node_name, on_outcome=self.metrics.event)
        self._backoff = Backoff(max(cfg.min_sync_period, 1.0), cfg.sync_period)
        self.runner: BoundedFrequencyRunner
        self.syncer = Syncer(
            state=self.state, backend=backend, node_name=cfg.node_name,
            proxy_name=cfg.proxy_name, clock=self.clock, sync_period=cfg.sync_period,
            metrics=self.metrics, health=self.health, backoff=self._backoff,
            retry_after=lambda s: self.runner.retry_after(s),
            service_health=self.service_health, events=self.events,
            standing_warnings=standing_warnings,
        )
        self.runner = BoundedFrequencyRunner(
            self.syncer.sync, min_interval=cfg.min_sync_period, max_interval=cfg.sync_period,
            clock=self.clock, burst=2,
        )
        options = informer_options or InformerOptions()
        self.sources = KubeSources(
            client, self.state,
            options=dataclasses.replace(options, proxy_name=cfg.proxy_name),
            on_reject=self.metrics.object_rejected,
            on_watch_restart=self.metrics.watch_restart,
        )
        self._servers: list[HttpServer] = []
        self.ports: dict[str, int] = {}
        """Bound port of each server started (``healthz``, ``metrics``): for port 0."""

    # --- lifecycle -----------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current sync (signal-safe)."""
        self._stop.set()
        self.runner.wake()

    def run(self) -> None:
        cfg = self.cfg
        log.info("starting", extra=kv(node=cfg.node_name, mode=cfg.proxy_mode.value,
                                       proxy_name=cfg.proxy_name))
        self._serve()
        self.events.start()
        self.sources.start()
        watchdog = threading.Thread(target=self._watchdog, name="watchdog", daemon=True)
        watchdog.start()
        try:
            if self._wait_for_informers():
                services, endpoints = self.state.pending()
                log.info("informers listed", extra=kv(services=services, endpoint_slices=endpoints))
                if self._cold:  # listed faster than the first look: still first
                    self.syncer.prime(frozenset({KUBERNETES_SERVICE}))
                self.runner.request()
                self.runner.loop(self._stop)
        finally:
            self._notifier.notify("STOPPING=1", "STATUS=stopping; rules left in place")
            self.sources.stop()
            self.events.close()
            self.service_health.close()
            for server in self._servers:
                server.close()
            log.info("stopped; rules left in place")

    def _wait_for_informers(self) -> bool:
        """Block until every informer listed once (False: stopped first); on a cold
        node, program the API server's service as soon as it is known."""
        waited = 0.0
        while not self.sources.has_synced():
            if self._cold:
                self._cold = not self.syncer.prime(frozenset({KUBERNETES_SERVICE}))
            if self.clock.wait(self._stop, 0.05):
                return False
            waited += 0.05
            if waited >= 10.0:
                waited = 0.0
                log.info("waiting for the API server: informers have not listed yet")
                self._notifier.notify("STATUS=waiting for the API server")
        return not self._stop.is_set()

    def _node_eligible(self) -> bool:
        """kube-proxy's ``nodeEligible``: false once this node is being deleted; true
        while its Node object is not known yet."""
        node = self.state.node(self.cfg.node_name)
        return node is None or not node.being_deleted

    def _queued(self, kind: str) -> None:
        self.health.queued_update()
        self.metrics.queued(at=self.clock.time(),
                            service_events=int(kind == "service"),
                            endpoint_events=int(kind == "slice"))
        services, endpoints = self.state.pending()
        self.metrics.set_pending(services=services, endpoints=endpoints)
        self.runner.request()

    def _serve(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        def metrics_routes(path: str) -> Response:
            route = path.split("?", 1)[0]
            if route == "/metrics":
                return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
            if route == "/proxyMode":
                return Response(200, self.cfg.proxy_mode.value.encode(), "text/plain")
            return Response(404, b"404 page not found\n", "text/plain; charset=utf-8")

        for name, text, routes in (
            ("healthz", self.cfg.healthz_bind_address, health_routes(self.health)),
            ("metrics", self.cfg.metrics_bind_address, metrics_routes),
        ):
            bind = parse_bind_address(text, where=f"{name}BindAddress")
            if bind is None:
                continue
            try:
                server = serve_http(bind[0], bind[1], routes)
            except OSError as exc:
                raise SourceError(f"{name} server on {text}: {exc.strerror or exc}") from exc
            self._servers.append(server)
            self.ports[name] = server.port
            log.info("serving %s", name, extra=kv(address=f"{bind[0]}:{server.port}"))

    def _watchdog(self) -> None:
        """READY once the first sync succeeded; WATCHDOG pings while the loop is live."""
        interval = self._notifier.watchdog_interval
        ready = False
        while not self._stop.is_set():
            if not ready and self.syncer.synced_once.is_set():
                ready = self._notifier.notify("READY=1", "STATUS=rules in sync")
            if interval is not None and self.health.status().live:
                self._notifier.notify("WATCHDOG=1")
            pause = interval / 2 if interval is not None else 1.0
            # until READY is out, look often: units ordered after proxyd wait for it
            self.clock.wait(self._stop, pause if ready else min(pause, 0.1))


def _with_process_metrics(registry: CollectorRegistry | None) -> CollectorRegistry:
    """``registry`` (a new one if None) with the usual process_* / python_* metrics
    (RSS, CPU, file descriptors, GC), as every Prometheus client exports them."""
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
        disable_created_metrics,
    )

    disable_created_metrics()  # type: ignore[no-untyped-call]  # kube-proxy has no *_created
    registry = registry if registry is not None else CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def _health_port_failed(port: int, exc: OSError) -> None:
    log.warning("cannot serve healthCheckNodePort %d: %s (retried next sync)", port, exc)
