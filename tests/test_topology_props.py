"""Properties of proxyd.topology and proxyd.plan that must hold for any input
(hypothesis; example counts kept modest for a shared 2-core machine)."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from proxyd.model import (
    ClusterSnapshot,
    Endpoint,
    EndpointSlice,
    Service,
    ServiceRef,
    TrafficPolicy,
)
from proxyd.plan import build_plan
from proxyd.topology import explain, select
from tests import builders
from tests.test_topology import HOST, REGION, ZONE, svc, view

SETTINGS = settings(max_examples=60, deadline=None)
NODE = view()  # this node n1 in pool p1 with n2; n3 and n4 in pool p2
NODES = ["n1", "n2", "n3", "n4", "n9", None]

policies = st.sampled_from([TrafficPolicy.CLUSTER, TrafficPolicy.LOCAL])
lb_ips = st.sampled_from([(), ("192.0.2.1",)])  # reachable from outside, or not
scope_values = ["kubernetes.io/hostname", "openyurt.io/nodepool", "kubernetes.io/zone", "*"]


@st.composite
def endpoint(draw: st.DrawFn, ip: str, nodes: list[str | None] = NODES) -> Endpoint:
    ready = draw(st.booleans())
    maybe_set = st.none() | st.frozensets(st.sampled_from(["z1", "z2", "n1", "n2"]), max_size=2)
    return Endpoint(
        ip=ip,
        port=8080,
        ready=ready,
        serving=ready or draw(st.booleans()),
        terminating=draw(st.booleans()),
        node_name=draw(st.sampled_from(nodes)),
        zone=draw(st.sampled_from([None, "z1", "z2"])),
        hints_zones=draw(maybe_set),
        hints_nodes=draw(maybe_set),
    )


@st.composite
def endpoints(draw: st.DrawFn, prefix: str = "e") -> list[Endpoint]:
    count = draw(st.integers(0, 8))
    return [draw(endpoint(f"{prefix}{i}")) for i in range(count)]


@st.composite
def services(draw: st.DrawFn, scopes: tuple[str, ...] | None = None) -> Service:
    if scopes is None:
        chain = st.lists(st.sampled_from([*scope_values, "bogus"]), max_size=3, unique=True)
        scopes = tuple(draw(chain))
    keys = st.lists(st.sampled_from([HOST, ZONE, REGION, "*"]), max_size=3, unique=True)
    return svc(
        openyurt_scopes=scopes,
        topology_keys=tuple(draw(keys)),
        internal_traffic_policy=draw(policies),
        external_traffic_policy=draw(policies),
        load_balancer_ips=draw(lb_ips),
    )


def usable(eps: list[Endpoint]) -> set[Endpoint]:
    ready = {e for e in eps if e.ready}
    return ready or {e for e in eps if e.serving and e.terminating}


@SETTINGS
@given(services(), endpoints())
def test_sets_are_subsets_of_the_service_endpoints(service: Service, eps: list[Endpoint]) -> None:
    sel = select(service, eps, NODE)
    assert set(sel.internal) <= set(eps)
    assert set(sel.external) <= set(eps)
    assert set(sel.cluster or ()) <= set(eps)


@SETTINGS
@given(endpoints())
def test_no_topology_config_means_all_usable_endpoints(eps: list[Endpoint]) -> None:
    plain = [
        Endpoint(e.ip, e.port, e.ready, e.serving, e.terminating, e.node_name, e.zone) for e in eps
    ]  # no hints
    sel = select(svc(), plain, NODE)
    assert set(sel.internal) == usable(plain)
    assert sel.external == sel.internal
    assert sel.mode == "none"


@SETTINGS
@given(
    services(scopes=("openyurt.io/nodepool",)),
    endpoints(),
    endpoint("other", nodes=["n3", "n4"]),
    st.integers(0, 8),
)
def test_endpoint_in_another_pool_never_changes_a_nodepool_plan(
    service: Service, eps: list[Endpoint], other: Endpoint, at: int
) -> None:
    grown = [*eps[:at], other, *eps[at:]]
    assert select(service, grown, NODE) == select(service, eps, NODE)


@SETTINGS
@given(services(), endpoints(), st.randoms(use_true_random=False))
def test_decision_ignores_endpoint_order(
    service: Service, eps: list[Endpoint], rnd: random.Random
) -> None:
    shuffled = list(eps)
    rnd.shuffle(shuffled)
    first, second = select(service, eps, NODE), select(service, shuffled, NODE)
    assert set(first.internal) == set(second.internal)
    assert set(first.external) == set(second.external)
    assert (first.cluster is None) == (second.cluster is None)
    assert set(first.cluster or ()) == set(second.cluster or ())
    assert (first.mode, first.local_endpoints) == (second.mode, second.local_endpoints)
    assert select(service, eps, NODE) == first


@SETTINGS
@given(services(), endpoints())
def test_explain_agrees_with_select(service: Service, eps: list[Endpoint]) -> None:
    result = explain(service, eps, NODE)
    assert result.selection == select(service, eps, NODE)
    for v in result.verdicts:
        assert v.internal == (v.endpoint in result.selection.internal)
        assert v.internal_why.startswith("yes" if v.internal else "no")
        assert v.external == (v.endpoint in result.selection.external)
        assert v.external_why.startswith("yes" if v.external else "no")
        assert v.cluster == (v.endpoint in (result.selection.cluster or ()))
        if result.selection.cluster is None:
            assert v.cluster_why is None
        else:
            assert v.cluster_why is not None
            assert v.cluster_why.startswith("yes" if v.cluster else "no")


@SETTINGS
@given(services(), endpoints())
def test_cluster_set_is_internal_under_internal_traffic_policy_cluster(
    service: Service, eps: list[Endpoint]
) -> None:
    """kube-proxy's "Cluster endpoints": exactly what ClusterIP traffic would get with
    iTP=Cluster (same scope, hints and fallback), present only with both policies Local
    on a port reachable from outside."""
    sel = select(service, eps, NODE)
    both_local = {service.internal_traffic_policy, service.external_traffic_policy} == {
        TrafficPolicy.LOCAL
    }
    assert (sel.cluster is not None) == (both_local and bool(service.load_balancer_ips))
    if sel.cluster is not None:
        as_cluster = replace(service, internal_traffic_policy=TrafficPolicy.CLUSTER)
        assert sel.cluster == select(as_cluster, eps, NODE).internal


# --- plan ---------------------------------------------------------------------------

REFS = [ServiceRef("default", name) for name in ("a", "b", "c", "d")]


@st.composite
def snapshots(draw: st.DrawFn) -> ClusterSnapshot:
    objects: list[Service | EndpointSlice] = []
    for ref in draw(st.lists(st.sampled_from(REFS), unique=True)):
        service = builders.svc(
            ref.name,
            cluster_ips=("10.96.0.1",),
            internal_traffic_policy=draw(policies),
            external_traffic_policy=draw(policies),
            load_balancer_ips=draw(lb_ips),
        )
        objects.append(service)
        for n in range(draw(st.integers(0, 2))):
            ips = draw(st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"])))
            endpoints = [
                builders.sep(
                    ip, ready=draw(st.booleans()), node_name=draw(st.sampled_from(["n1", "n2"]))
                )
                for ip in ips
            ]
            objects.append(builders.eps(ref.name, endpoints, name=f"{ref.name}-{n}"))
    return builders.snapshot(*objects)


def _changed(before: ClusterSnapshot, after: ClusterSnapshot) -> frozenset[ServiceRef]:
    """What the store's change tracking would report between two snapshots."""
    refs = {
        ref
        for ref in {*before.services, *after.services}
        if before.services.get(ref) != after.services.get(ref)
    }
    for key in {*before.slices, *after.slices}:
        old, new = before.slices.get(key), after.slices.get(key)
        if old != new:
            refs.update(s.service for s in (old, new) if s is not None)
    return frozenset(refs)


@SETTINGS
@given(snapshots(), snapshots())
def test_incremental_plan_equals_full_plan(before: ClusterSnapshot, after: ClusterSnapshot) -> None:
    previous = build_plan(before, "n1")
    partial = build_plan(after, "n1", previous=previous, changed=_changed(before, after))
    assert partial == build_plan(after, "n1")


@SETTINGS
@given(snapshots(), st.randoms(use_true_random=False))
def test_plan_is_deterministic(snap: ClusterSnapshot, rnd: random.Random) -> None:
    services_ = list(snap.services.items())
    slices = list(snap.slices.items())
    rnd.shuffle(services_)
    rnd.shuffle(slices)
    shuffled = ClusterSnapshot(dict(services_), dict(slices), {}, {})
    assert build_plan(shuffled, "n1") == build_plan(snap, "n1")
