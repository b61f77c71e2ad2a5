"""``proxyd demo``: a small OpenYurt edge cluster in network namespaces, checked on real packets.

The cluster follows OpenYurt's service-topology walkthrough: a ``beijing`` cloud pool and
``hangzhou``/``shanghai`` edge pools, two zones, and services for every topology mode
proxyd implements. Each node is a network namespace running the real ``proxyd run``
against the in-repo fake API server; each pod is a namespace with an echo server that
answers with its pod name. The demo sends requests from a client pod on every node to
every service and compares who answered with a hand-written expectation.

The expectations are literal tables below, written from DESIGN §2 and never computed by
proxyd's topology code: breaking proxyd's filtering makes rows fail. A
:class:`Scenario` is plain data, so a test can serve different objects (for example with
every topology setting removed) while keeping the same expectations.

The module is split the usual way: the scenario, the API objects, the checks and the
tables are pure; :func:`run_demo` orchestrates against a :class:`Cluster` protocol; the
real cluster (namespaces, processes, sockets) is :class:`NetnsCluster`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar
from typing import Protocol as TypingProtocol

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from proxyd.errors import ProxydError
from proxyd.model import Protocol, TrafficPolicy
from proxyd.runner import Clock
from proxyd.sandbox.netns import Netns, ip_batch, run_ip

__all__ = [
    "DEFAULT_SCENARIO",
    "Check",
    "Cluster",
    "DemoNode",
    "DemoPod",
    "DemoPool",
    "DemoReport",
    "DemoService",
    "Expectations",
    "Layout",
    "NetnsCluster",
    "Observation",
    "Phase",
    "Probe",
    "Scenario",
    "Step",
    "Via",
    "api_objects",
    "apply_step",
    "cleanup_sandboxes",
    "describe",
    "endpoint_slice_object",
    "in_netns",
    "new_run_id",
    "probes_for",
    "remove_namespaces",
    "render_checks",
    "run_demo",
    "settle",
    "touched_services",
]

_NAMESPACE = "default"
_ECHO_TCP_PORT = 9376  # serve_hostname's port, as in the walkthrough
_ECHO_UDP_PORT = 5353
_POD_CIDR = "10.244.{index}.0/24"
_UNDERLAY_PREFIX = "172.30.0"


# ───────────────────────────── scenario (plain data) ─────────────────────────────


@dataclass(frozen=True, slots=True)
class DemoPool:
    name: str
    type: str  # OpenYurt NodePool spec.type: Cloud or Edge


@dataclass(frozen=True, slots=True)
class DemoNode:
    """A node; ``index`` picks its pod CIDR (10.244.<index>.0/24) and underlay address."""

    name: str
    pool: str
    zone: str
    index: int


@dataclass(frozen=True, slots=True)
class DemoPod:
    """A pod of ``app`` scheduled on ``node``; its echo server answers with ``name``."""

    name: str
    app: str
    node: str


@dataclass(frozen=True, slots=True)
class DemoService:
    """A Service selecting the pods of ``app`` and the topology settings it is served with.

    ``mode`` is the label shown in the tables. ``zone_hints`` makes the EndpointSlice
    carry ``hints.forZones`` = the endpoint's own zone, as the EndpointSlice controller
    does with ``service.kubernetes.io/topology-mode: Auto``.
    """

    name: str
    app: str
    cluster_ip: str
    mode: str
    protocol: Protocol = Protocol.TCP
    port: int = 80
    annotations: tuple[tuple[str, str], ...] = ()
    topology_keys: tuple[str, ...] = ()
    zone_hints: bool = False
    node_port: int | None = None
    health_check_node_port: int | None = None
    external_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER

    @property
    def target_port(self) -> int:
        return _ECHO_UDP_PORT if self.protocol is Protocol.UDP else _ECHO_TCP_PORT


class Via(StrEnum):
    """How a probe reaches the service: ClusterIP from a client pod on the node, or the
    node's NodePort from a host outside the cluster."""

    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"


@dataclass(frozen=True, slots=True, order=True)
class Probe:
    """One row of a table: requests to ``service`` from (or, for NodePort, to) ``node``."""

    service: str
    node: str
    via: Via = Via.CLUSTER_IP


Expectations = Mapping[Probe, frozenset[str]]


@dataclass(frozen=True, slots=True)
class Step:
    """A live change: pods started/killed (their endpoints follow) and the expectations
    that change because of it (every other row keeps its previous expectation)."""

    title: str
    add: tuple[DemoPod, ...] = ()
    remove: tuple[str, ...] = ()
    expect: Expectations = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scenario:
    pools: tuple[DemoPool, ...]
    nodes: tuple[DemoNode, ...]
    pods: tuple[DemoPod, ...]
    services: tuple[DemoService, ...]
    expect: Expectations
    steps: tuple[Step, ...] = ()

    def node(self, name: str) -> DemoNode:
        return next(n for n in self.nodes if n.name == name)

    def service(self, name: str) -> DemoService:
        return next(s for s in self.services if s.name == name)

    def all_pods(self) -> tuple[DemoPod, ...]:
        """Every pod that ever exists (initial ones, then those the steps add)."""
        return self.pods + tuple(p for step in self.steps for p in step.add)


_OPENYURT = "openyurt.io/topologyKeys"
_HOSTNAME = "kubernetes.io/hostname"
_ZONE = "topology.kubernetes.io/zone"
_NODES = ("bj-1", "hz-1", "hz-2", "sh-1", "sh-2")


def _rows(
    service: str, by_node: Mapping[str, Iterable[str]], via: Via = Via.CLUSTER_IP
) -> dict[Probe, frozenset[str]]:
    return {Probe(service, node, via): frozenset(pods) for node, pods in by_node.items()}


def _everywhere(pods: Iterable[str]) -> dict[str, frozenset[str]]:
    return dict.fromkeys(_NODES, frozenset(pods))


_UD1_HZ = {"ud1-hz-a", "ud1-hz-b"}
_UD1_SH = {"ud1-sh-a", "ud1-sh-b"}
_EAST_HINTS = {"hints-hz", "hints-sh"}
_KEYS_ALL = {"keys-hz", "keys-sh"}

DEFAULT_SCENARIO = Scenario(
    pools=(
        DemoPool("beijing", "Cloud"), DemoPool("hangzhou", "Edge"), DemoPool("shanghai", "Edge"),
    ),
    nodes=(
        DemoNode("bj-1", "beijing", "cn-north", 1),
        DemoNode("hz-1", "hangzhou", "cn-east", 2),
        DemoNode("hz-2", "hangzhou", "cn-east", 3),
        DemoNode("sh-1", "shanghai", "cn-east", 4),
        DemoNode("sh-2", "shanghai", "cn-east", 5),
    ),
    pods=(
        DemoPod("ud1-hz-a", "ud1", "hz-1"),
        DemoPod("ud1-hz-b", "ud1", "hz-2"),
        DemoPod("ud1-sh-a", "ud1", "sh-1"),
        DemoPod("ud1-sh-b", "ud1", "sh-2"),
        DemoPod("local-bj", "local", "bj-1"),
        DemoPod("local-hz1", "local", "hz-1"),
        DemoPod("local-sh1", "local", "sh-1"),
        DemoPod("local-sh2", "local", "sh-2"),
        DemoPod("hints-bj", "hints", "bj-1"),
        DemoPod("hints-hz", "hints", "hz-2"),
        DemoPod("hints-sh", "hints", "sh-1"),
        DemoPod("keys-hz", "keys", "hz-1"),
        DemoPod("keys-sh", "keys", "sh-2"),
        DemoPod("web-bj", "web", "bj-1"),
        DemoPod("web-sh-a", "web", "sh-1"),
        DemoPod("web-sh-b", "web", "sh-1"),
        DemoPod("dns-bj", "dns", "bj-1"),
        DemoPod("dns-hz", "dns", "hz-2"),
        DemoPod("dns-sh", "dns", "sh-2"),
        DemoPod("plain-bj", "plain", "bj-1"),
        DemoPod("plain-hz", "plain", "hz-1"),
        DemoPod("plain-sh", "plain", "sh-2"),
    ),
    services=(
        DemoService(
            "svc-ud1", "ud1", "10.96.1.1", "openyurt: nodepool",
            annotations=((_OPENYURT, "openyurt.io/nodepool"),),
        ),
        DemoService(
            "svc-local", "local", "10.96.1.2", "openyurt: hostname",
            annotations=((_OPENYURT, _HOSTNAME),),
        ),
        DemoService(
            "svc-hints", "hints", "10.96.1.3", "zone hints",
            annotations=(("service.kubernetes.io/topology-mode", "Auto"),), zone_hints=True,
        ),
        DemoService(
            "svc-keys", "keys", "10.96.1.4", "topologyKeys: host, zone, *",
            topology_keys=(_HOSTNAME, _ZONE, "*"),
        ),
        DemoService(
            "svc-web", "web", "10.96.1.5", "NodePort, eTP=Local",
            node_port=30080, health_check_node_port=32080,
            external_traffic_policy=TrafficPolicy.LOCAL,
        ),
        DemoService(
            "svc-dns", "dns", "10.96.1.6", "UDP, openyurt: nodepool", protocol=Protocol.UDP,
            port=53, annotations=((_OPENYURT, "openyurt.io/nodepool"),),
        ),
        DemoService("svc-plain", "plain", "10.96.1.7", "no topology"),
    ),
    # Written by hand from DESIGN §2; NOT derived from proxyd.topology.
    expect={
        # The walkthrough's svc-ud1: traffic stays in the client's pool; beijing has none.
        **_rows("svc-ud1", {
            "bj-1": set(), "hz-1": _UD1_HZ, "hz-2": _UD1_HZ, "sh-1": _UD1_SH, "sh-2": _UD1_SH,
        }),
        # Same node only; hz-2 has no such pod, so its traffic is rejected.
        **_rows("svc-local", {
            "bj-1": {"local-bj"}, "hz-1": {"local-hz1"}, "hz-2": set(),
            "sh-1": {"local-sh1"}, "sh-2": {"local-sh2"},
        }),
        # Every endpoint is hinted for its own zone: cn-north keeps hints-bj, cn-east the rest.
        **_rows("svc-hints", {
            "bj-1": {"hints-bj"}, "hz-1": _EAST_HINTS, "hz-2": _EAST_HINTS,
            "sh-1": _EAST_HINTS, "sh-2": _EAST_HINTS,
        }),
        # hostname first (hz-1, sh-2 have one), then zone (cn-east), then "*" (bj-1).
        **_rows("svc-keys", {
            "bj-1": _KEYS_ALL, "hz-1": {"keys-hz"}, "hz-2": _KEYS_ALL,
            "sh-1": _KEYS_ALL, "sh-2": {"keys-sh"},
        }),
        # eTP=Local limits only external traffic: ClusterIP reaches every pod ...
        **_rows("svc-web", _everywhere({"web-bj", "web-sh-a", "web-sh-b"})),
        # ... while a NodePort only answers on nodes with a local pod (others drop).
        **_rows("svc-web", {
            "bj-1": {"web-bj"}, "hz-1": set(), "hz-2": set(),
            "sh-1": {"web-sh-a", "web-sh-b"}, "sh-2": set(),
        }, Via.NODE_PORT),
        **_rows("svc-dns", {
            "bj-1": {"dns-bj"}, "hz-1": {"dns-hz"}, "hz-2": {"dns-hz"},
            "sh-1": {"dns-sh"}, "sh-2": {"dns-sh"},
        }),
        # Control: without topology every node reaches every pod, across pools.
        **_rows("svc-plain", _everywhere({"plain-bj", "plain-hz", "plain-sh"})),
    },
    steps=(
        Step(
            "scale ud1 in pool beijing 0 → 1, kill local-hz1 (last svc-local pod on hz-1)",
            add=(DemoPod("ud1-bj-a", "ud1", "bj-1"),),
            remove=("local-hz1",),
            expect={
                Probe("svc-ud1", "bj-1"): frozenset({"ud1-bj-a"}),
                Probe("svc-local", "hz-1"): frozenset(),
            },
        ),
    ),
)  # fmt: skip


# ───────────────────────────── names and addresses ─────────────────────────────


@dataclass(frozen=True, slots=True)
class Layout:
    """Namespace names and addresses of one sandbox run.

    Every namespace is ``pxd-<run_id>-<what>`` (at most 15 characters) so concurrent runs
    never collide and a kept sandbox is easy to find. Nodes sit on an underlay bridge
    (172.30.0.0/24, the fake API server at .1, an outside host at .2); node N routes
    10.244.N.0/24 to its pods over point-to-point veths, so every packet between pods
    crosses a node's netfilter hooks (no bridge shortcut that would skip un-DNAT).
    """

    run_id: str
    scenario: Scenario

    def __post_init__(self) -> None:
        longest = max((self.node_netns(n.name) + "c" for n in self.scenario.nodes), key=len)
        if len(longest) > 15:
            raise ValueError(f"namespace name {longest!r} is longer than 15 characters")

    @property
    def prefix(self) -> str:
        return f"pxd-{self.run_id}-"

    @property
    def underlay_netns(self) -> str:
        return self.prefix + "ul"

    @property
    def outside_netns(self) -> str:
        return self.prefix + "ext"

    @property
    def api_ip(self) -> str:
        return f"{_UNDERLAY_PREFIX}.1"

    @property
    def outside_ip(self) -> str:
        return f"{_UNDERLAY_PREFIX}.2"

    def node_netns(self, node: str) -> str:
        return self.prefix + node.replace("-", "")

    def client_netns(self, node: str) -> str:
        return self.node_netns(node) + "c"

    def pod_netns(self, pod: str) -> str:
        return f"{self.prefix}p{self._pod_index(pod):02d}"

    def pod_veth(self, pod: str) -> str:
        """The node-side end of a pod's veth."""
        return f"vp{self._pod_index(pod):02d}"

    def node_ip(self, node: str) -> str:
        return f"{_UNDERLAY_PREFIX}.{10 + self.scenario.node(node).index}"

    def gateway(self, node: str) -> str:
        return f"10.244.{self.scenario.node(node).index}.1"

    def client_ip(self, node: str) -> str:
        return f"10.244.{self.scenario.node(node).index}.2"

    def pod_ip(self, pod: str) -> str:
        pods = self.scenario.all_pods()
        node = next(p.node for p in pods if p.name == pod)
        rank = [p.name for p in pods if p.node == node].index(pod)
        return f"10.244.{self.scenario.node(node).index}.{10 + rank}"

    def pod_cidr(self, node: str) -> str:
        return _POD_CIDR.format(index=self.scenario.node(node).index)

    def _pod_index(self, pod: str) -> int:
        return [p.name for p in self.scenario.all_pods()].index(pod)


# ───────────────────────────── API objects (pure) ─────────────────────────────


def _node_object(node: DemoNode, layout: Layout) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                _HOSTNAME: node.name,
                _ZONE: node.zone,
                "apps.openyurt.io/desired-nodepool": node.pool,
                "apps.openyurt.io/nodepool": node.pool,
            },
        },
        "spec": {"podCIDR": layout.pod_cidr(node.name)},
        "status": {"addresses": [{"type": "InternalIP", "address": layout.node_ip(node.name)}]},
    }


def _pool_object(pool: DemoPool, scenario: Scenario) -> dict[str, Any]:
    return {
        "apiVersion": "apps.openyurt.io/v1beta1",
        "kind": "NodePool",
        "metadata": {"name": pool.name},
        "spec": {"type": pool.type},
        "status": {"nodes": sorted(n.name for n in scenario.nodes if n.pool == pool.name)},
    }


def _service_object(svc: DemoService) -> dict[str, Any]:
    port: dict[str, Any] = {
        "name": "echo",
        "protocol": str(svc.protocol),
        "port": svc.port,
        "targetPort": svc.target_port,
    }
    spec: dict[str, Any] = {
        "type": "ClusterIP",
        "clusterIP": svc.cluster_ip,
        "clusterIPs": [svc.cluster_ip],
        "ipFamilies": ["IPv4"],
        "selector": {"app": svc.app},
        "ports": [port],
    }
    if svc.node_port is not None:
        port["nodePort"] = svc.node_port
        spec["type"] = "NodePort"
        spec["externalTrafficPolicy"] = str(svc.external_traffic_policy)
        if svc.health_check_node_port is not None:
            spec["healthCheckNodePort"] = svc.health_check_node_port
    if svc.topology_keys:
        spec["topologyKeys"] = list(svc.topology_keys)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc.name,
            "namespace": _NAMESPACE,
            "annotations": dict(svc.annotations),
            "labels": {"app": svc.app},
        },
        "spec": spec,
    }


def endpoint_slice_object(
    svc: DemoService, pods: Iterable[DemoPod], layout: Layout
) -> dict[str, Any]:
    """The EndpointSlice the controller would write for ``svc`` given the running ``pods``."""
    endpoints = []
    for pod in sorted((p for p in pods if p.app == svc.app), key=lambda p: p.name):
        zone = layout.scenario.node(pod.node).zone
        endpoint: dict[str, Any] = {
            "addresses": [layout.pod_ip(pod.name)],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": pod.node,
            "zone": zone,
            "targetRef": {"kind": "Pod", "namespace": _NAMESPACE, "name": pod.name},
        }
        if svc.zone_hints:
            endpoint["hints"] = {"forZones": [{"name": zone}]}
        endpoints.append(endpoint)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc.name}-demo",
            "namespace": _NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": svc.name,
                "endpointslice.kubernetes.io/managed-by": "proxyd-demo",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "echo", "protocol": str(svc.protocol), "port": svc.target_port}],
        "endpoints": endpoints,
    }


def api_objects(layout: Layout, pods: Iterable[DemoPod]) -> list[dict[str, Any]]:
    """Every object the fake API server serves when ``pods`` are running."""
    scenario = layout.scenario
    running = tuple(pods)
    return [
        *(_pool_object(pool, scenario) for pool in scenario.pools),
        *(_node_object(node, layout) for node in scenario.nodes),
        *(_service_object(svc) for svc in scenario.services),
        *(endpoint_slice_object(svc, running, layout) for svc in scenario.services),
    ]


def apply_step(pods: Sequence[DemoPod], step: Step) -> tuple[DemoPod, ...]:
    """The pods running after ``step``."""
    return tuple(p for p in pods if p.name not in step.remove) + step.add


def touched_services(scenario: Scenario, step: Step) -> tuple[DemoService, ...]:
    """Services whose endpoints ``step`` changes (their slices must be rewritten)."""
    apps = {p.app for p in step.add} | {p.app for p in scenario.all_pods() if p.name in step.remove}
    return tuple(s for s in scenario.services if s.app in apps)


# ───────────────────────────── checks (pure) ─────────────────────────────


@dataclass(frozen=True, slots=True)
class Observation:
    """What ``attempts`` requests of one probe got back: answers per pod name, and the
    requests that got none per cause (``refused``, ``timeout``, ``unreachable``…)."""

    answers: tuple[tuple[str, int], ...] = ()
    failures: tuple[tuple[str, int], ...] = ()

    @property
    def answered(self) -> frozenset[str]:
        return frozenset(pod for pod, _ in self.answers)


@dataclass(frozen=True, slots=True)
class Check:
    """One table row. It passes when exactly the expected pods answered and, if any were
    expected, every request was answered (a request lost to a dead endpoint is a fail)."""

    probe: Probe
    expected: frozenset[str]
    observed: Observation

    @property
    def passed(self) -> bool:
        if self.observed.answered != self.expected:
            return False
        return not self.expected or not self.observed.failures


@dataclass(frozen=True, slots=True)
class Phase:
    title: str
    checks: tuple[Check, ...]

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)


@dataclass(frozen=True, slots=True)
class DemoReport:
    phases: tuple[Phase, ...]
    seconds: float

    @property
    def passed(self) -> bool:
        return all(not phase.failed for phase in self.phases)


def probes_for(scenario: Scenario, services: Iterable[DemoService]) -> tuple[Probe, ...]:
    """Every row for ``services``: ClusterIP from each node, plus NodePort on each node."""
    rows: list[Probe] = []
    for svc in services:
        vias = (Via.CLUSTER_IP, Via.NODE_PORT) if svc.node_port is not None else (Via.CLUSTER_IP,)
        rows.extend(Probe(svc.name, node.name, via) for via in vias for node in scenario.nodes)
    return tuple(rows)


def _pause(clock: Clock, seconds: float) -> None:
    clock.wait(threading.Event(), seconds)


_ProbeFn = Callable[[Sequence[Probe]], Mapping[Probe, Observation]]


def settle(
    probes: Sequence[Probe],
    expect: Expectations,
    probe: _ProbeFn,
    clock: Clock,
    *,
    within: float,
    interval: float = 0.5,
) -> tuple[Check, ...]:
    """Probe until every row passes or ``within`` seconds went by; the last observation
    of each row is the result. Proxies need a moment to see a change, so a row gets
    re-probed while it fails; a row never passes on an old observation."""
    deadline = clock.monotonic() + within
    latest: dict[Probe, Check] = {}
    pending = list(probes)
    while True:
        for row, seen in probe(pending).items():
            latest[row] = Check(row, expect[row], seen)
        pending = [row for row in pending if not latest[row].passed]
        if not pending or clock.monotonic() >= deadline:
            return tuple(latest[row] for row in probes)
        _pause(clock, interval)


# ───────────────────────────── tables (pure) ─────────────────────────────


def _where(scenario: Scenario, probe: Probe, svc: DemoService) -> Text:
    node = scenario.node(probe.node)
    if probe.via is Via.NODE_PORT:
        return Text.assemble("outside → ", (node.name, "bold"), (f":{svc.node_port}", "dim"))
    return Text.assemble((node.name, "bold"), (f" {node.pool}/{node.zone}", "dim"))


def _answered_cell(check: Check) -> Text:
    """One line per pod that answered (red if it should not have), then lost requests."""
    lines = [
        Text.assemble((pod, "green" if pod in check.expected else "bold red"), (f" {count}", "dim"))
        for pod, count in check.observed.answers
    ]
    lines += [
        Text(f"{cause} {count}", style="yellow" if check.expected else "dim")
        for cause, count in check.observed.failures
    ]
    return Text("\n").join(lines)


def _expected_cell(check: Check) -> Text:
    """One line per expected pod (yellow if it did not answer), or why none is expected."""
    if not check.expected:
        return Text("none: dropped" if check.probe.via is Via.NODE_PORT else "none: rejected",
                    style="dim")  # fmt: skip
    return Text("\n").join(
        Text(pod, style="" if pod in check.observed.answered else "yellow")
        for pod in sorted(check.expected)
    )


def render_checks(
    scenario: Scenario, title: str, checks: Sequence[Check], *, before: Expectations | None = None
) -> Table:
    """The table of one phase, grouped by service. With ``before``, rows whose expectation
    changed are flagged, so the reader sees which rows the live change is about."""
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)
    table.add_column("service")
    table.add_column("from")
    table.add_column("answered by (requests)")
    table.add_column("expected")
    table.add_column("", justify="center")
    for name in dict.fromkeys(c.probe.service for c in checks):
        svc = scenario.service(name)
        head = Text.assemble(
            (svc.name, "bold"),
            (f"\n{svc.mode}", "cyan"),
            (f"\n{svc.cluster_ip}:{svc.port}/{svc.protocol}", "dim"),
        )
        for i, check in enumerate(c for c in checks if c.probe.service == name):
            where = _where(scenario, check.probe, svc)
            if before is not None and before.get(check.probe) != check.expected:
                where.append("\n◀ changed", style="magenta")
            mark = Text("✔", style="bold green") if check.passed else Text("✘", style="bold red")
            table.add_row(
                head if i == 0 else "",
                where,
                _answered_cell(check),
                _expected_cell(check),
                mark,
            )
        table.add_section()
    failed = sum(1 for c in checks if not c.passed)
    table.caption = f"{len(checks) - failed}/{len(checks)} rows as expected" + (
        f", [bold red]{failed} failed[/]" if failed else " [green]✔[/]"
    )
    table.caption_justify = "left"
    return table


# ───────────────────────────── orchestration ─────────────────────────────

_Obj = dict[str, Any]


class Cluster(TypingProtocol):
    """The sandbox the demo drives; :class:`NetnsCluster` is the real one."""

    def build(self, pods: Sequence[DemoPod], objects: Sequence[_Obj]) -> None:
        """Network, pods, API server serving ``objects``, one proxyd per node; returns
        once every proxyd answers its health check."""

    def start_pods(self, pods: Sequence[DemoPod]) -> None: ...

    def stop_pods(self, names: Sequence[str]) -> None: ...

    def publish(self, objects: Sequence[_Obj]) -> None:
        """Create or replace ``objects`` in the API server."""

    def probe(self, probes: Sequence[Probe]) -> Mapping[Probe, Observation]: ...

    def hints(self) -> list[tuple[str, str]]:
        """(what for, command) pairs to explore a kept sandbox and to remove it."""

    def close(self) -> None:
        """Remove everything: processes, namespaces, files. Idempotent."""


def describe(scenario: Scenario) -> str:
    """One line per pool: its nodes and their zones (the cluster at a glance)."""
    return "\n".join(
        f"  {pool.name:<9} {pool.type.lower():<5} "
        + "  ".join(f"{n.name} ({n.zone})" for n in scenario.nodes if n.pool == pool.name)
        for pool in scenario.pools
    )


def run_demo(
    scenario: Scenario,
    layout: Layout,
    cluster: Cluster,
    console: Console,
    clock: Clock,
    *,
    keep: bool = False,
    settle_within: float = 20.0,
) -> DemoReport:
    """Build the sandbox, check every row, apply each live step and check again. The
    sandbox is removed on the way out whatever happens, unless ``keep``."""
    started = clock.monotonic()
    phases: list[Phase] = []
    expect = dict(scenario.expect)

    def check(title: str, services: Sequence[DemoService], before: Expectations | None) -> None:
        since = clock.monotonic()
        checks = settle(
            probes_for(scenario, services), expect, cluster.probe, clock, within=settle_within
        )
        phases.append(Phase(title, checks))
        console.print(render_checks(scenario, title, checks, before=before))
        if before is not None and not phases[-1].failed:
            waited = clock.monotonic() - since
            console.print(f"[green]the data path followed within {waited:.1f} s[/]")

    pods = scenario.pods
    try:
        console.print(
            f"[bold]proxyd demo[/]: {len(scenario.nodes)} nodes, {len(pods)} pods, "
            f"{len(scenario.services)} services, one [bold]proxyd run[/] per node\n"
            + describe(scenario)
        )
        cluster.build(pods, api_objects(layout, pods))
        check(
            "ClusterIP from a client pod on every node, NodePort from outside",
            scenario.services,
            None,
        )
        for step in scenario.steps:
            console.print(f"\n[bold]live change:[/] {step.title}")
            before = dict(expect)
            pods = apply_step(pods, step)
            touched = touched_services(scenario, step)
            cluster.start_pods(step.add)
            cluster.stop_pods(step.remove)
            cluster.publish([endpoint_slice_object(svc, pods, layout) for svc in touched])
            expect.update(step.expect)
            check("after the change", touched, before)
    finally:
        if keep:
            console.print("\n[bold]sandbox kept[/] — explore it:")
            for why, command in cluster.hints():
                console.print(f"  [dim]# {why}[/]")
                console.print(f"  {command}", highlight=False, markup=False, soft_wrap=True)
        else:
            cluster.close()
    report = DemoReport(tuple(phases), clock.monotonic() - started)
    if report.passed:
        console.print(f"\n[bold green]all rows pass[/] in {report.seconds:.1f} s")
    else:
        console.print(
            f"\n[bold red]rows failed[/] in {report.seconds:.1f} s"
            + ("" if keep else " (run with --keep to look at the rules and logs)")
        )
    return report


# ───────────────────────────── the real sandbox ─────────────────────────────

_CLONE_NEWNET = 0x40000000
_API_PORT = 6443
_HEALTHZ_PORT = 10256
_ATTEMPTS = 40  # per row: with 3 pods the chance one is never picked is 3·(2/3)^40 ≈ 2e-7
_PROBE_TIMEOUT = 0.8
_STOP_GRACE = 3.0
_ECHO = (sys.executable, "-m", "proxyd.sandbox.netns", "serve")  # the shared echo server
_POD_LIFETIME = 7 * 24 * 3600  # a kept sandbox's pods answer for a week
_T = TypeVar("_T")


def _enter_netns(name: str) -> None:
    """Move the calling thread (only) into network namespace ``name``."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(jobs: Sequence[tuple[str, Callable[[], _T]]]) -> list[_T]:
    """Run each ``(netns, fn)`` on its own thread inside that namespace, all at once.

    A thread's network namespace is its own and a socket stays in the namespace it was
    created in, so one process can connect, serve HTTP requests and write sysctls in any
    namespace without a helper process. Each thread ends with its job: none ever goes
    back to a pool while in a foreign namespace.
    """
    results: dict[int, _T] = {}
    errors: list[BaseException] = []

    def work(i: int, netns: str, fn: Callable[[], _T]) -> None:
        try:
            _enter_netns(netns)
            results[i] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(i, ns, fn), name=f"netns:{ns}", daemon=True)
        for i, (ns, fn) in enumerate(jobs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(jobs))]


def _failure_cause(err: int) -> str:
    return {
        errno.ECONNREFUSED: "refused",
        errno.ETIMEDOUT: "timeout",
        errno.EHOSTUNREACH: "unreachable",
        errno.ENETUNREACH: "unreachable",
        errno.ECONNRESET: "reset",
    }.get(err, errno.errorcode.get(err, str(err)).lower())


def _probe(ip: str, port: int, protocol: Protocol, attempts: int, timeout: float) -> Observation:
    """``attempts`` concurrent requests, each on a new socket (a new conntrack entry, so
    the proxy load-balances each one): TCP connect + read, or UDP send + read."""
    answers: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    with selectors.DefaultSelector() as selector:
        for _ in range(attempts):
            kind = socket.SOCK_DGRAM if protocol is Protocol.UDP else socket.SOCK_STREAM
            sock = socket.socket(socket.AF_INET, kind)
            sock.setblocking(False)
            try:
                if kind == socket.SOCK_DGRAM:
                    sock.connect((ip, port))
                    sock.send(b"who?\n")
                elif (err := sock.connect_ex((ip, port))) not in (0, errno.EINPROGRESS):
                    raise OSError(err, os.strerror(err))
            except OSError as exc:
                failures[_failure_cause(exc.errno or 0)] += 1
                sock.close()
                continue
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                sock = key.fileobj  # type: ignore[assignment]
                selector.unregister(sock)
                try:
                    if err := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        raise OSError(err, os.strerror(err))
                    data = sock.recv(256)
                except OSError as exc:
                    failures[_failure_cause(exc.errno or 0)] += 1
                else:
                    answer = data.decode(errors="replace").split()  # "POD SOURCE-IP"
                    if answer:
                        answers[answer[0]] += 1
                    else:
                        failures["closed"] += 1
                sock.close()
        for key in list(selector.get_map().values()):
            failures["timeout"] += 1
            selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
    return Observation(tuple(sorted(answers.items())), tuple(sorted(failures.items())))


_NODE_SYSCTLS = (
    ("net/ipv4/ip_forward", "1"),
    # A REJECTed request is answered with an ICMP error; the default rate limit would
    # turn most of a burst of probes into timeouts.
    ("net/ipv4/icmp_ratelimit", "0"),
)


def _tune_node() -> None:
    """Sysctls of a node namespace (written from a thread inside it)."""
    for key, value in _NODE_SYSCTLS:
        Path("/proc/sys", key).write_text(value + "\n")


def _http(url: str, body: bytes | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _synced(code: int, body: bytes) -> bool:
    """A /healthz answer from a proxy that is healthy and has programmed rules once
    (kube-proxy's body: ``lastUpdated`` is Go's zero time until the first sync)."""
    try:
        last = json.loads(body).get("lastUpdated", "")
    except ValueError:
        return False
    return code == 200 and isinstance(last, str) and not last.startswith("0001-")


def _namespaces() -> list[str]:
    return [line.split()[0] for line in run_ip(["netns", "list"]).splitlines() if line.strip()]


def remove_namespaces(names: Iterable[str]) -> None:
    """Kill whatever still runs in each namespace, then delete it. Tolerates names that
    are already gone, so it serves both a normal teardown and ``--cleanup``."""
    existing = set(_namespaces())
    doomed = [name for name in names if name in existing]
    for name in doomed:
        for pid in run_ip(["netns", "pids", name], check=False).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    if doomed:
        batch = "".join(f"netns del {name}\n" for name in doomed)
        run_ip(["-force", "-b", "-"], batch, check=False)


def new_run_id() -> str:
    """Four hex digits no existing namespace uses (``pxd-<id>-*``)."""
    taken = {name.split("-")[1] for name in _namespaces() if name.startswith("pxd-")}
    while (run_id := secrets.token_hex(2)) in taken:
        continue
    return run_id


def cleanup_sandboxes(tmpdir: Path, run_id: str | None = None) -> list[str]:
    """Remove every demo sandbox (kept with ``--keep`` or left by a killed run), or only
    run ``run_id``'s; returns the namespaces removed."""
    prefix = f"pxd-{run_id}-" if run_id else "pxd-"
    names = [name for name in _namespaces() if name.startswith(prefix)]
    remove_namespaces(names)
    for workdir in tmpdir.glob(f"proxyd-demo-{run_id or '*'}"):
        shutil.rmtree(workdir, ignore_errors=True)
    return names


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM/SIGHUP while tearing down, so a second Ctrl-C cannot leave half a
    sandbox behind; a signal that came meanwhile is raised again afterwards. (Python runs
    signal handlers on the main thread only, whichever thread the kernel picked.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, remember) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


class NetnsCluster:
    """The sandbox made of network namespaces and processes (see :class:`Layout`).

    Processes run in their own session (Ctrl-C reaches only the demo, which then stops
    them in order) and survive the demo only with ``--keep``.
    """

    def __init__(
        self,
        layout: Layout,
        console: Console,
        clock: Clock,
        workdir: Path,
        *,
        startup_timeout: float = 45.0,
    ) -> None:
        self._layout = layout
        self._scenario = layout.scenario
        self._console = console
        self._clock = clock
        self._workdir = workdir
        self._startup_timeout = startup_timeout
        self._namespaces: list[str] = []
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(
                p
                for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH"))
                if p
            ),
        )

    @property
    def pids(self) -> tuple[int, ...]:
        """Every process the sandbox started (for tests that check nothing is left)."""
        return tuple(proc.pid for proc in self._procs.values())

    @property
    def kubeconfig(self) -> Path:
        return self._workdir / "kubeconfig"

    # --- building -----------------------------------------------------------------------

    def build(self, pods: Sequence[DemoPod], objects: Sequence[_Obj]) -> None:
        lay, nodes = self._layout, self._scenario.nodes
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._console.print(f"  network namespaces [cyan]{lay.prefix}*[/] (underlay, nodes, pods)")
        self._add_namespaces(
            [lay.underlay_netns, lay.outside_netns]
            + [lay.node_netns(n.name) for n in nodes]
            + [lay.client_netns(n.name) for n in nodes]
        )
        underlay = [
            "link set lo up",
            "link add ul0 type bridge",
            "link set ul0 up",
            f"addr add {lay.api_ip}/24 dev ul0",
        ]
        for netns, end in [(lay.outside_netns, "u-ext")] + [
            (lay.node_netns(n.name), "u-" + n.name.replace("-", "")) for n in nodes
        ]:
            underlay += [
                f"link add {end} type veth peer name eth0 netns {netns}",
                f"link set {end} master ul0",
                f"link set {end} up",
            ]
        ip_batch(underlay, lay.underlay_netns)
        ip_batch(
            ["link set lo up", "link set eth0 up", f"addr add {lay.outside_ip}/24 dev eth0"],
            lay.outside_netns,
        )
        for node in nodes:
            others = [n for n in nodes if n != node]
            ip_batch(
                [
                    "link set lo up",
                    "link set eth0 up",
                    f"addr add {lay.node_ip(node.name)}/24 dev eth0",
                    f"route add default via {lay.api_ip}",  # a node has a default route
                    *(
                        f"route add {lay.pod_cidr(o.name)} via {lay.node_ip(o.name)}"
                        for o in others
                    ),
                    *self._veth(
                        node.name, "vcl", lay.client_netns(node.name), lay.client_ip(node.name)
                    ),
                ],
                lay.node_netns(node.name),
            )
            self._pod_side(lay.client_netns(node.name), node.name, lay.client_ip(node.name))
        in_netns([(lay.node_netns(n.name), _tune_node) for n in nodes])
        self.start_pods(pods)
        self._start_api(objects)
        self._start_proxies()

    def _add_namespaces(self, names: Sequence[str]) -> None:
        self._namespaces.extend(names)  # recorded first: a failure half-way is cleaned up too
        ip_batch([f"netns add {name}" for name in names])

    def _veth(self, node: str, end: str, netns: str, ip: str) -> list[str]:
        """Node-side commands for a point-to-point veth to a pod at ``ip``."""
        gateway = self._layout.gateway(node)
        return [
            f"link add {end} type veth peer name eth0 netns {netns}",
            f"link set {end} up",
            f"addr add {gateway}/32 peer {ip} dev {end}",
        ]

    def _pod_side(self, netns: str, node: str, ip: str) -> None:
        gateway = self._layout.gateway(node)
        ip_batch(
            [
                "link set lo up",
                "link set eth0 up",
                f"addr add {ip}/32 peer {gateway} dev eth0",
                f"route add default via {gateway}",
            ],
            netns,
        )

    def start_pods(self, pods: Sequence[DemoPod]) -> None:
        lay = self._layout
        if not pods:
            return
        self._add_namespaces([lay.pod_netns(p.name) for p in pods])
        for on in dict.fromkeys(p.node for p in pods):
            ip_batch(
                [
                    line
                    for p in pods
                    if p.node == on
                    for line in self._veth(
                        on, lay.pod_veth(p.name), lay.pod_netns(p.name), lay.pod_ip(p.name)
                    )
                ],
                lay.node_netns(on),
            )
        for pod in pods:
            self._pod_side(lay.pod_netns(pod.name), pod.node, lay.pod_ip(pod.name))
        started = [
            self._spawn(
                f"pod:{p.name}",
                lay.pod_netns(p.name),
                [
                    *_ECHO,
                    p.name,
                    "--tcp",
                    str(_ECHO_TCP_PORT),
                    "--udp",
                    str(_ECHO_UDP_PORT),
                    "--lifetime",
                    str(_POD_LIFETIME),
                ],
                pipe=True,
            )
            for p in pods
        ]
        for proc, pod in zip(started, pods, strict=True):
            self._read_line(proc, f"pod {pod.name}")

    def stop_pods(self, names: Sequence[str]) -> None:
        for name in names:
            self._stop([self._procs.pop(f"pod:{name}")])
            netns = self._layout.pod_netns(name)
            remove_namespaces([netns])
            self._namespaces.remove(netns)

    def _start_api(self, objects: Sequence[_Obj]) -> None:
        lay = self._layout
        self._console.print(f"  fake API server on [cyan]{lay.api_ip}:{_API_PORT}[/]")
        path = self._workdir / "objects.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))
        proc = self._spawn(
            "api",
            lay.underlay_netns,
            [
                sys.executable,
                "-m",
                "proxyd.sandbox.fakeapi",
                "--host",
                lay.api_ip,
                "--port",
                str(_API_PORT),
                "--objects",
                str(path),
                "--kubeconfig",
                str(self.kubeconfig),
            ],
            pipe=True,
        )
        self._read_line(proc, "fake API server")

    def _start_proxies(self) -> None:
        nodes = self._scenario.nodes
        self._console.print(f"  [bold]proxyd run[/] on {len(nodes)} nodes, waiting for first sync")
        for node in nodes:
            self._spawn(
                f"proxyd:{node.name}",
                self._layout.node_netns(node.name),
                [
                    sys.executable,
                    "-m",
                    "proxyd",
                    "run",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--node-name",
                    node.name,
                    "--cluster-cidr",
                    "10.244.0.0/16",
                    "--metrics-bind-address",
                    "127.0.0.1:10249",
                    "--healthz-bind-address",
                    f"0.0.0.0:{_HEALTHZ_PORT}",
                ],
            )
        self._wait_healthy([n.name for n in nodes])

    def _wait_healthy(self, nodes: Sequence[str]) -> None:
        """Until each node's proxyd says on /healthz that it is healthy and has synced."""
        waiting = sorted(nodes)
        deadline = self._clock.monotonic() + self._startup_timeout
        url = f"http://127.0.0.1:{_HEALTHZ_PORT}/healthz"
        while waiting:
            for name in waiting:
                proc = self._procs[f"proxyd:{name}"]
                if proc.poll() is not None:
                    raise ProxydError(
                        f"proxyd on {name} exited ({proc.returncode}): "
                        f"{self._log_tail(f'proxyd:{name}')}"
                    )
            answers = in_netns(
                [(self._layout.node_netns(name), functools.partial(_http, url)) for name in waiting]
            )
            waiting = [
                name
                for name, (code, body) in zip(waiting, answers, strict=True)
                if not _synced(code, body)
            ]
            if waiting and self._clock.monotonic() > deadline:
                raise ProxydError(
                    f"proxyd not healthy within {self._startup_timeout:.0f} s on "
                    f"{', '.join(waiting)} (logs in {self._workdir})"
                )
            if waiting:
                _pause(self._clock, 0.2)

    # --- processes ----------------------------------------------------------------------

    def _spawn(
        self, key: str, netns: str, argv: Sequence[str], *, pipe: bool = False
    ) -> subprocess.Popen[bytes]:
        log = self._workdir / f"{key.replace(':', '-')}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                Netns(netns).argv(*argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else err,
                stderr=err,
                env=self._env,
                start_new_session=True,
            )
        self._procs[key] = proc
        return proc

    def _read_line(self, proc: subprocess.Popen[bytes], what: str) -> str:
        """The first line ``proc`` prints (its "ready" signal); then the pipe is closed."""
        assert proc.stdout is not None
        with proc.stdout, selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            line = proc.stdout.readline() if selector.select(self._startup_timeout) else b""
        if not line:
            key = next(k for k, p in self._procs.items() if p is proc)
            raise ProxydError(f"{what} did not start: {self._log_tail(key)}")
        return line.decode()

    def _log_tail(self, key: str, lines: int = 5) -> str:
        path = self._workdir / f"{key.replace(':', '-')}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"

    def _stop(self, procs: Iterable[subprocess.Popen[bytes]]) -> None:
        running = [p for p in procs if p.poll() is None]
        for proc in running:
            proc.terminate()
        deadline = self._clock.monotonic() + _STOP_GRACE
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - self._clock.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # --- using it -----------------------------------------------------------------------

    def publish(self, objects: Sequence[_Obj]) -> None:
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}).encode()
        url = f"http://{self._layout.api_ip}:{_API_PORT}/_control/objects"
        [(code, text)] = in_netns(
            [(self._layout.underlay_netns, functools.partial(_http, url, body))]
        )
        if code != 200:
            raise ProxydError(f"fake API server refused objects ({code}): {text[:200]!r}")

    def probe(self, probes: Sequence[Probe]) -> Mapping[Probe, Observation]:
        by_source: dict[str, list[Probe]] = {}
        for row in probes:
            source = (
                self._layout.outside_netns
                if row.via is Via.NODE_PORT
                else self._layout.client_netns(row.node)
            )
            by_source.setdefault(source, []).append(row)
        results = in_netns(
            [
                (source, functools.partial(self._probe_rows, rows))
                for source, rows in by_source.items()
            ]
        )
        return {row: seen for part in results for row, seen in part.items()}

    def _probe_rows(self, rows: Sequence[Probe]) -> dict[Probe, Observation]:
        out = {}
        for row in rows:
            svc = self._scenario.service(row.service)
            if row.via is Via.NODE_PORT:
                assert svc.node_port is not None
                ip, port = self._layout.node_ip(row.node), svc.node_port
            else:
                ip, port = svc.cluster_ip, svc.port
            out[row] = _probe(ip, port, svc.protocol, _ATTEMPTS, _PROBE_TIMEOUT)
        return out

    def hints(self) -> list[tuple[str, str]]:
        lay, node = self._layout, self._scenario.nodes[1].name
        svc = self._scenario.services[0]
        proxyd = shutil.which("proxyd") or f"{sys.executable} -m proxyd"
        api = f"ip netns exec {lay.underlay_netns} {proxyd}"
        return [
            (f"{node}'s rules", f"ip netns exec {lay.node_netns(node)} iptables-save -t nat"),
            (
                f"ask {svc.name} from the client pod on {node} (answers: pod name, source IP)",
                f"ip netns exec {lay.client_netns(node)} "
                f"bash -c 'cat </dev/tcp/{svc.cluster_ip}/{svc.port}'",
            ),
            (
                f"why {node} uses the endpoints it does",
                f"{api} explain {_NAMESPACE}/{svc.name} --node {node} "
                f"--kubeconfig {self.kubeconfig}",
            ),
            (f"proxyd's log on {node} (one per node)", f"less {self._workdir}/proxyd-{node}.log"),
            ("every namespace of this sandbox", f"ip netns list | grep {lay.prefix}"),
            ("remove the sandbox", f"{proxyd} demo --cleanup"),
        ]

    def close(self) -> None:
        with _signals_deferred():
            self._stop(self._procs.values())
            remove_namespaces(self._namespaces)
            self._namespaces.clear()
            shutil.rmtree(self._workdir, ignore_errors=True)
