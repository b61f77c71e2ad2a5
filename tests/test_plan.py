"""proxyd.plan: joins, port matching, dedupe, skipped services, dual-stack, ordering and
incremental planning (which must equal a full plan)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from proxyd.model import (
    AddressType,
    ClusterSnapshot,
    EndpointPort,
    EndpointSlice,
    NodePlan,
    Protocol,
    Service,
    ServicePlan,
    ServiceRef,
    ServiceType,
    TrafficPolicy,
)
from proxyd.plan import build_plan
from tests.builders import eps, node, port_spec, sep, snapshot, svc

TCP, UDP = Protocol.TCP, Protocol.UDP


def internal(plan: NodePlan) -> dict[str, set[str]]:
    return {str(sp.key): {e.addr for e in sp.internal} for sp in plan.services}


def test_slices_join_their_service_only() -> None:
    snap = snapshot(svc("a"), svc("b"), eps("a", ["10.0.0.1"]), eps("b", ["10.0.0.2"]))
    assert internal(build_plan(snap, "n1")) == {
        "default/a:http/TCP": {"10.0.0.1:8080"},
        "default/b:http/TCP": {"10.0.0.2:8080"},
    }


def test_same_name_in_other_namespace_is_another_service() -> None:
    snap = snapshot(svc("a", "x"), eps("a", ["10.0.0.1"], namespace="y"))
    assert internal(build_plan(snap, "n1")) == {"x/a:http/TCP": set()}


def test_many_slices_of_one_service_all_count() -> None:
    snap = snapshot(
        svc("a"), eps("a", ["10.0.0.1"], name="a-1"), eps("a", ["10.0.0.2"], name="a-2")
    )
    assert internal(build_plan(snap, "n1"))["default/a:http/TCP"] == {
        "10.0.0.1:8080",
        "10.0.0.2:8080",
    }


@pytest.mark.parametrize(
    ("slice_port", "want"),
    [
        pytest.param(EndpointPort("http", TCP, 8080), {"10.0.0.1:8080"}, id="name-and-protocol"),
        pytest.param(EndpointPort("http", UDP, 8080), set(), id="other-protocol-ignored"),
        pytest.param(EndpointPort("web", TCP, 8080), set(), id="other-name-ignored"),
    ],
)
def test_slice_port_matches_by_name_and_protocol(slice_port: EndpointPort, want: set[str]) -> None:
    snap = snapshot(svc("a"), eps("a", ["10.0.0.1"], ports=[slice_port]))
    assert internal(build_plan(snap, "n1"))["default/a:http/TCP"] == want


def test_each_port_gets_its_own_target_port() -> None:
    dns = svc("dns", ports=[port_spec(53, "dns", UDP), port_spec(53, "dns-tcp", TCP)])
    ports = [EndpointPort("dns", UDP, 5353), EndpointPort("dns-tcp", TCP, 5354)]
    snap = snapshot(dns, eps("dns", ["10.0.0.1"], ports=ports))
    assert internal(build_plan(snap, "n1")) == {
        "default/dns:dns-tcp/TCP": {"10.0.0.1:5354"},
        "default/dns:dns/UDP": {"10.0.0.1:5353"},
    }


def test_same_ip_port_in_two_slices_counts_once() -> None:
    snap = snapshot(
        svc("a"), eps("a", ["10.0.0.1"], name="a-1"), eps("a", ["10.0.0.1"], name="a-2")
    )
    (sp,) = build_plan(snap, "n1").services
    assert [e.addr for e in sp.internal] == ["10.0.0.1:8080"]


@pytest.mark.parametrize("stale_first", [True, False], ids=["stale-first", "stale-last"])
def test_duplicate_keeps_the_ready_copy(stale_first: bool) -> None:
    stale = eps("a", [sep("10.0.0.1", ready=False)], name="a-1" if stale_first else "a-2")
    fresh = eps("a", ["10.0.0.1"], name="a-2" if stale_first else "a-1")
    (sp,) = build_plan(snapshot(svc("a"), stale, fresh), "n1").services
    assert [(e.addr, e.ready) for e in sp.internal] == [("10.0.0.1:8080", True)]


def test_duplicate_tie_goes_to_first_slice_by_name() -> None:
    first = eps("a", [sep("10.0.0.1", node_name="n1")], name="a-1")
    second = eps("a", [sep("10.0.0.1", node_name="n2")], name="a-2")
    for order in ((first, second), (second, first)):
        (sp,) = build_plan(snapshot(svc("a"), *order), "n1").services
        assert [e.node_name for e in sp.internal] == ["n1"]


def test_fqdn_slices_are_ignored() -> None:
    snap = snapshot(
        svc("a"),
        eps("a", ["10.0.0.1"], name="a-1"),
        eps("a", ["db.example.com"], name="a-2", address_type=AddressType.FQDN),
    )
    assert internal(build_plan(snap, "n1"))["default/a:http/TCP"] == {"10.0.0.1:8080"}


@pytest.mark.parametrize(
    "service",
    [
        pytest.param(svc("a", headless=True, cluster_ips=()), id="headless"),
        pytest.param(svc("a", type=ServiceType.EXTERNAL_NAME), id="external-name"),
        pytest.param(svc("a", proxy_name="kube-proxy"), id="other-proxy-name"),
    ],
)
def test_services_proxyd_leaves_alone(service: Service) -> None:
    snap = snapshot(service, eps("a", ["10.0.0.1"]))
    assert build_plan(snap, "n1").services == ()


def test_own_proxy_name_is_programmed() -> None:
    snap = snapshot(svc("a", proxy_name="edge-proxy"))
    assert len(build_plan(snap, "n1", proxy_name="edge-proxy").services) == 1
    assert build_plan(snap, "n1").services == ()


def test_dual_stack_service_gets_both_families() -> None:
    snap = snapshot(
        svc("a", cluster_ips=("10.96.0.10", "fd00:96::10")),
        eps("a", ["10.0.0.1"], name="a-v4"),
        eps("a", ["fd00::1"], name="a-v6", address_type=AddressType.IPV6),
    )
    (sp,) = build_plan(snap, "n1").services
    assert sp.port.cluster_ips == ("10.96.0.10", "fd00:96::10")
    assert {e.addr for e in sp.internal} == {"10.0.0.1:8080", "[fd00::1]:8080"}


def test_service_fields_are_flattened_into_each_port() -> None:
    service = svc(
        "a",
        ports=[port_spec(80, node_port=30080)],
        type=ServiceType.LOAD_BALANCER,
        external_ips=("192.0.2.1",),
        load_balancer_ips=("198.51.100.1",),
        load_balancer_source_ranges=("203.0.113.0/24",),
        session_affinity_timeout=600,
        external_traffic_policy=TrafficPolicy.LOCAL,
        health_check_node_port=31000,
        ipvs_scheduler="wrr",
    )
    (sp,) = build_plan(snapshot(service), "n1").services
    port = sp.port
    assert (port.port, port.node_port) == (80, 30080)
    assert port.external_ips == ("192.0.2.1",)
    assert port.load_balancer_ips == ("198.51.100.1",)
    assert port.load_balancer_source_ranges == ("203.0.113.0/24",)
    assert port.session_affinity_timeout == 600
    assert port.external_traffic_policy is TrafficPolicy.LOCAL
    assert port.health_check_node_port == 31000
    assert port.ipvs_scheduler == "wrr"


def test_topology_decides_the_sets() -> None:
    snap = snapshot(
        svc("a", internal_traffic_policy=TrafficPolicy.LOCAL),
        eps("a", [sep("10.0.0.1", node_name="n1"), sep("10.0.0.2", node_name="n2")]),
    )
    (sp,) = build_plan(snap, "n1").services
    assert ({e.ip for e in sp.internal}, sp.mode) == ({"10.0.0.1"}, "internalTrafficPolicy:Local")
    assert {e.ip for e in sp.external} == {"10.0.0.1", "10.0.0.2"}
    assert sp.local_endpoints == 1


def test_output_is_sorted() -> None:
    ports = [port_spec(1, "z"), port_spec(2, "a", UDP), port_spec(3, "a", TCP)]
    ips = ["10.0.0.3", "10.0.0.1", "10.0.0.2"]
    snap = snapshot(svc("b", ports=ports), svc("a", "kube-system"), svc("c"), eps("c", ips))
    plan = build_plan(snap, "n1")
    assert [str(sp.key) for sp in plan.services] == [
        "default/b:a/TCP",
        "default/b:a/UDP",
        "default/b:z/TCP",
        "default/c:http/TCP",
        "kube-system/a:http/TCP",
    ]
    assert [e.ip for e in plan.services[3].internal] == sorted(ips)


def test_trigger_time_is_latest_of_the_service_slices() -> None:
    snap = snapshot(
        svc("a"),
        svc("b"),
        eps("a", name="a-1", trigger_time=10.0),
        eps("a", name="a-2", trigger_time=20.0),
        eps("b"),
    )
    assert [sp.trigger_time for sp in build_plan(snap, "n1").services] == [20.0, None]


def test_node_addresses_come_from_the_node() -> None:
    snap = snapshot(node("n1", addresses=("192.168.0.1", "fd00::1")))
    assert build_plan(snap, "n1").node_addresses == ("192.168.0.1", "fd00::1")
    assert build_plan(snap, "n2").node_addresses == ()


# --- incremental ------------------------------------------------------------------

A, B, C, D = (ServiceRef("default", n) for n in "abcd")
BASE = snapshot(
    svc("a"),
    svc("b"),
    svc("c"),
    svc("h", headless=True, cluster_ips=()),
    eps("a", ["10.0.0.1"]),
    eps("b", ["10.0.0.2"]),
    eps("c", ["10.0.0.3"]),
)


def _with(**changes: Any) -> ClusterSnapshot:
    return replace(BASE, **changes)


def _slice_of_b(*ips: str) -> dict[tuple[str, str], EndpointSlice]:
    new = eps("b", ips)
    return {**BASE.slices, (new.namespace, new.name): new}


INCREMENTAL = [
    pytest.param(_with(slices=_slice_of_b("10.0.0.9")), {B}, id="endpoint-changed"),
    pytest.param(
        _with(services={**BASE.services, B: svc("b", ports=[port_spec(9, "grpc")])}),
        {B},
        id="service-port-changed",
    ),
    pytest.param(
        _with(services={k: v for k, v in BASE.services.items() if k != B}),
        {B},
        id="service-deleted",
    ),
    pytest.param(
        snapshot(*BASE.services.values(), *BASE.slices.values(), svc("d"), eps("d", ["10.0.0.4"])),
        {D},
        id="service-added",
    ),
    pytest.param(
        _with(services={**BASE.services, C: svc("c", headless=True, cluster_ips=())}),
        {C},
        id="service-became-headless",
    ),
]


@pytest.mark.parametrize(("after", "changed"), INCREMENTAL)
def test_incremental_equals_full(after: ClusterSnapshot, changed: set[ServiceRef]) -> None:
    previous = build_plan(BASE, "n1")
    partial = build_plan(after, "n1", previous=previous, changed=frozenset(changed))
    assert partial == build_plan(after, "n1")


def test_incremental_reuses_unchanged_plans() -> None:
    previous = build_plan(BASE, "n1")
    partial = build_plan(
        _with(slices=_slice_of_b()), "n1", previous=previous, changed=frozenset({B})
    )
    reused: dict[ServiceRef, ServicePlan] = {sp.key.service: sp for sp in previous.services}
    assert [sp is reused[sp.key.service] for sp in partial.services] == [True, False, True]


def test_deleted_service_never_survives_incremental_planning() -> None:
    previous = build_plan(BASE, "n1")
    after = _with(services={k: v for k, v in BASE.services.items() if k != B})
    partial = build_plan(after, "n1", previous=previous, changed=frozenset())
    assert B not in {sp.key.service for sp in partial.services}


def test_previous_plan_of_another_node_is_not_reused() -> None:
    snap = snapshot(
        svc("a", internal_traffic_policy=TrafficPolicy.LOCAL),
        eps("a", [sep("10.0.0.1", node_name="n2")]),
    )
    other = build_plan(snap, "n2")
    assert build_plan(snap, "n1", previous=other, changed=frozenset()) == build_plan(snap, "n1")


def test_same_snapshot_same_plan_whatever_the_insertion_order() -> None:
    shuffled = ClusterSnapshot(
        services=dict(reversed(list(BASE.services.items()))),
        slices=dict(reversed(list(BASE.slices.items()))),
        nodes={},
        pools={},
    )
    assert build_plan(shuffled, "n1") == build_plan(BASE, "n1")


def test_candidates_count_distinct_endpoints_before_topology() -> None:
    snap = snapshot(
        svc("a", internal_traffic_policy=TrafficPolicy.LOCAL),
        eps("a", [sep("10.0.0.1", node_name="n1"), sep("10.0.0.2", node_name="n2")], name="a-1"),
        eps("a", [sep("10.0.0.2", node_name="n2")], name="a-2"),  # the same endpoint again
        node("n1"),
        node("n2"),
    )
    (plan,) = build_plan(snap, "n1").services
    assert {e.addr for e in plan.internal} == {"10.0.0.1:8080"}
    assert plan.candidates == 2


# --- the cluster-wide set (short circuit with both policies Local) ------------------

LOCAL = TrafficPolicy.LOCAL
SPLIT = [sep("10.0.0.1", node_name="n1"), sep("10.0.0.2", node_name="n2")]


def _addrs(sp: ServicePlan) -> tuple[set[str], set[str], set[str] | None]:
    cluster = None if sp.cluster is None else {e.ip for e in sp.cluster}
    return {e.ip for e in sp.internal}, {e.ip for e in sp.external}, cluster


@pytest.mark.parametrize(
    ("service", "want"),
    [
        pytest.param(
            svc("a", internal_traffic_policy=LOCAL),
            ({"10.0.0.1"}, {"10.0.0.1", "10.0.0.2"}, None),
            id="itp-local-cluster-ip-only-no-cluster-set",
        ),
        pytest.param(
            svc("a", internal_traffic_policy=LOCAL, external_traffic_policy=LOCAL),
            ({"10.0.0.1"}, {"10.0.0.1"}, None),
            id="both-local-cluster-ip-only-no-cluster-set",
        ),
        pytest.param(
            svc(
                "a",
                type=ServiceType.NODE_PORT,
                ports=[port_spec(node_port=30080)],
                internal_traffic_policy=LOCAL,
            ),
            ({"10.0.0.1"}, {"10.0.0.1", "10.0.0.2"}, None),
            id="itp-local-etp-cluster-nodeport-external-is-cluster-wide",
        ),
        pytest.param(
            svc(
                "a",
                type=ServiceType.LOAD_BALANCER,
                load_balancer_ips=("192.0.2.1",),
                internal_traffic_policy=LOCAL,
                external_traffic_policy=LOCAL,
            ),
            ({"10.0.0.1"}, {"10.0.0.1"}, {"10.0.0.1", "10.0.0.2"}),
            id="both-local-lb-cluster-set-present",
        ),
    ],
)
def test_cluster_set_only_where_no_other_set_is_cluster_wide(
    service: Service, want: tuple[set[str], set[str], set[str] | None]
) -> None:
    (sp,) = build_plan(snapshot(service, eps("a", SPLIT)), "n1").services
    assert _addrs(sp) == want


def test_cluster_set_follows_the_port_node_port() -> None:
    """kube-proxy decides "reachable from outside" per port: a NodePort, or the service's
    external / LB IPs."""
    ports = [port_spec(80, "http", node_port=30080), port_spec(81, "admin")]
    slice_ports = [EndpointPort("http", TCP, 8080), EndpointPort("admin", TCP, 8081)]
    snap = snapshot(
        svc("a", ports=ports, internal_traffic_policy=LOCAL, external_traffic_policy=LOCAL),
        eps("a", SPLIT, ports=slice_ports),
    )
    admin, http = build_plan(snap, "n1").services
    assert (admin.key.port_name, admin.cluster) == ("admin", None)
    assert _addrs(http) == ({"10.0.0.1"}, {"10.0.0.1"}, {"10.0.0.1", "10.0.0.2"})


BOTH_LOCAL_LB = svc(
    "e",
    type=ServiceType.LOAD_BALANCER,
    load_balancer_ips=("192.0.2.1",),
    internal_traffic_policy=LOCAL,
    external_traffic_policy=LOCAL,
)


def test_incremental_planning_carries_the_cluster_set() -> None:
    e_ref = BOTH_LOCAL_LB.ref
    before = snapshot(*BASE.services.values(), *BASE.slices.values(), BOTH_LOCAL_LB)
    grown = replace(before, slices={**before.slices, ("default", "e-abcde"): eps("e", SPLIT)})
    previous = build_plan(before, "n1")
    assert _addrs(previous.services[-1]) == (set(), set(), set())
    partial = build_plan(grown, "n1", previous=previous, changed=frozenset({e_ref}))
    assert partial == build_plan(grown, "n1")
    assert _addrs(partial.services[-1]) == ({"10.0.0.1"}, {"10.0.0.1"}, {"10.0.0.1", "10.0.0.2"})
    again = build_plan(grown, "n1", previous=partial, changed=frozenset({A}))
    assert again.services[-1] is partial.services[-1]
