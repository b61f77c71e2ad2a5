"""Warning Events from plan warnings: classification, rate limits, posting off-thread."""

from __future__ import annotations

import threading

import pytest

from proxyd import topology
from proxyd.backends.ipvs import IpvsBackend
from proxyd.backends.ipvs_plan import IpvsOptions
from proxyd.errors import SourceError
from proxyd.events import (
    EventRecorder,
    ServiceWarning,
    backend_warnings,
    plan_warnings,
    warning_reason,
)
from proxyd.model import ServicePlan, ServiceRef, TrafficPolicy
from proxyd.runner import ManualClock
from tests.builders import ep, node, node_plan, snapshot, sp, svc
from tests.test_ipvs_backend import Clock, FakeKernel, FakeRunner
from tests.test_ipvs_backend import plan as ipvs_plan

A = ServiceRef("default", "a")
WEB = ServiceRef("default", "web")
B = ServiceRef("edge", "b")


class Sink:
    def __init__(self, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.bodies: list[tuple[str, dict]] = []
        self.fail = fail
        self.gate = gate

    def create(self, namespace: str, body: dict) -> None:
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise SourceError("API server unreachable")
        self.bodies.append((namespace, body))


def warned(ref: ServiceRef, port_name: str, *warnings: str) -> ServicePlan:
    """A plan of port ``port_name`` of ``ref`` that carries ``warnings``."""
    return sp(ref.name, namespace=ref.namespace, port_name=port_name, warnings=warnings)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("unknown IPVS scheduler 'fastest', using rr", "UnknownIPVSScheduler"),
        ("spec.topologyKeys ignored: externalTrafficPolicy=Local", "InvalidTopologyKeys"),
        ("node edge-1 is in no node pool (no label): scope narrowed to this node", "NodeNotInPool"),
        ("something new", "TopologyWarning"),
    ],
)
def test_warning_reason(message: str, reason: str) -> None:
    assert warning_reason(message) == reason


@pytest.mark.parametrize(
    ("service_fields", "nodes", "endpoints", "reason"),
    [
        pytest.param({"openyurt_scopes": ("bogus",)}, [node("n1")], [], "UnknownOpenYurtScope",
                     id="openyurt-unknown-value"),
        pytest.param({"topology_keys": ("*", "kubernetes.io/hostname")}, [node("n1")], [],
                     "InvalidTopologyKeys", id="topology-keys-star-not-last"),
        pytest.param({"topology_keys": ("kubernetes.io/hostname",),
                      "external_traffic_policy": TrafficPolicy.LOCAL},
                     [node("n1")], [], "InvalidTopologyKeys", id="topology-keys-with-etp-local"),
        pytest.param({"openyurt_scopes": ("openyurt.io/nodepool",)}, [node("n1")],
                     [ep("10.0.0.1", node_name="n1")], "NodeNotInPool", id="node-in-no-pool"),
        pytest.param({"openyurt_scopes": ("openyurt.io/nodepool",)}, [node("n1", pool="p")],
                     [ep("10.0.0.1", node_name="n1")], "NodePoolMembersUnknown",
                     id="pool-members-unknown"),
        pytest.param({}, [node("n1", zone="z1")],
                     [ep("10.0.0.1", hints_zones=frozenset({"z2"}))], "TopologyHintsIgnored",
                     id="hints-for-other-zone"),
    ],
)
def test_reasons_of_the_planners_actual_warnings(service_fields, nodes, endpoints, reason) -> None:
    view = topology.node_view(snapshot(*nodes), "n1")
    selection = topology.select(svc(**service_fields), endpoints, view)
    assert selection.warnings, "the planner no longer warns here"
    assert {warning_reason(w) for w in selection.warnings} == {reason}


def test_hint_warnings_are_not_posted() -> None:
    sink, outcomes = Sink(), []
    rec = recorder(sink, ManualClock(), outcomes)
    rec.start()
    hinted = warned(A, "http", "no ready endpoint is hinted for zone z")
    rec.record(plan_warnings(node_plan(hinted)))
    rec.close()
    assert sink.bodies == []


def test_ipvs_backend_warnings_name_their_service() -> None:
    result = IpvsBackend(FakeKernel(), FakeRunner(), clock=Clock()).sync(
        ipvs_plan(scheduler="fastest"), full=True)  # type: ignore[arg-type]
    about, other = backend_warnings(result.warnings)
    assert [(w.service, w.reason) for w in about] == [(WEB, "UnknownIPVSScheduler")]
    assert other == []


def test_backend_warnings_without_a_service_are_kept_apart() -> None:
    result = IpvsBackend(FakeKernel(), FakeRunner(), clock=Clock(),  # type: ignore[arg-type]
                         options=IpvsOptions(default_scheduler="fastest")).sync(
        ipvs_plan(), full=True)
    about, other = backend_warnings(result.warnings)
    assert about == []
    assert [reason for reason, _ in other] == ["UnknownIPVSScheduler"]


def test_plan_warnings_are_distinct_per_service() -> None:
    plan = node_plan(
        warned(A, "http", "spec.topologyKeys invalid"),
        warned(A, "https", "spec.topologyKeys invalid"),
        warned(B, "dns", "node n1 is in no node pool"),
        warned(B, "dns-tcp"),
    )
    assert set(plan_warnings(plan)) == {
        ServiceWarning(A, "InvalidTopologyKeys", "spec.topologyKeys invalid"),
        ServiceWarning(B, "NodeNotInPool", "node n1 is in no node pool"),
    }


def recorder(sink: Sink, clock: ManualClock, outcomes: list, **kwargs) -> EventRecorder:
    return EventRecorder(sink, clock, component="proxyd", node="n1",
                         on_outcome=lambda r, o: outcomes.append((r, o)), **kwargs)


def test_event_body_names_the_service_and_source() -> None:
    sink, clock, outcomes = Sink(), ManualClock(), []
    rec = recorder(sink, clock, outcomes)
    rec.start()
    rec.record(plan_warnings(node_plan(warned(B, "dns", "node n1 is in no node pool"))))
    rec.close()
    [(namespace, body)] = sink.bodies
    assert namespace == "edge"
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Service",
                                      "namespace": "edge", "name": "b"}
    assert (body["type"], body["reason"]) == ("Warning", "NodeNotInPool")
    assert body["metadata"] == {"generateName": "b.", "namespace": "edge"}
    assert body["source"] == {"component": "proxyd", "host": "n1"}
    assert body["firstTimestamp"] == "2023-11-14T22:30:00Z"
    assert outcomes == [("NodeNotInPool", "posted")]


def test_same_warning_repeats_only_after_the_interval() -> None:
    sink, clock, outcomes = Sink(), ManualClock(), []
    rec = recorder(sink, clock, outcomes, repeat_interval=600.0)
    rec.start()
    warning = ServiceWarning(A, "InvalidTopologyKeys", "x")
    rec.warn(warning)
    clock.advance(599)
    rec.warn(warning)
    clock.advance(1)
    rec.warn(warning)
    rec.close()
    assert len(sink.bodies) == 2


def test_token_bucket_suppresses_floods_and_refills() -> None:
    sink, clock, outcomes = Sink(), ManualClock(), []
    rec = recorder(sink, clock, outcomes, burst=3, per_second=0.5)
    rec.start()
    for i in range(5):
        rec.warn(ServiceWarning(A, "TopologyWarning", f"w{i}"))
    clock.advance(2.0)  # one token back
    rec.warn(ServiceWarning(A, "TopologyWarning", "w5"))
    rec.warn(ServiceWarning(A, "TopologyWarning", "w6"))
    rec.close()
    assert [b["message"] for _, b in sink.bodies] == ["w0", "w1", "w2", "w5"]
    assert outcomes.count(("TopologyWarning", "suppressed")) == 3


def test_suppressed_warning_is_tried_again_next_time() -> None:
    sink, clock, outcomes = Sink(), ManualClock(), []
    rec = recorder(sink, clock, outcomes, burst=1, per_second=0.1)
    rec.start()
    rec.warn(ServiceWarning(A, "TopologyWarning", "first"))
    rec.warn(ServiceWarning(A, "TopologyWarning", "second"))
    clock.advance(10)
    rec.warn(ServiceWarning(A, "TopologyWarning", "second"))
    rec.close()
    assert [b["message"] for _, b in sink.bodies] == ["first", "second"]


def test_api_failure_is_counted_not_raised() -> None:
    outcomes: list = []
    rec = recorder(Sink(fail=True), ManualClock(), outcomes)
    rec.start()
    rec.warn(ServiceWarning(A, "TopologyWarning", "x"))
    rec.close()
    assert outcomes == [("TopologyWarning", "failed")]


def test_full_queue_drops_instead_of_blocking_the_sync() -> None:
    gate = threading.Event()
    sink, outcomes = Sink(gate=gate), []
    rec = recorder(sink, ManualClock(), outcomes, queue_size=1)
    rec.start()
    for i in range(4):  # one in flight (blocked), one queued, the rest dropped
        rec.warn(ServiceWarning(A, "TopologyWarning", f"w{i}"))
    gate.set()
    rec.close()
    assert ("TopologyWarning", "dropped") in outcomes
    assert len(sink.bodies) + outcomes.count(("TopologyWarning", "dropped")) == 4
