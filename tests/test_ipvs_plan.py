"""The pure IPVS planner: virtual/real servers, sets, schedulers, listing, rule text."""

from __future__ import annotations

import re
from typing import Any

import pytest

from proxyd.backends.ipvs_plan import (
    CHAINS,
    SCHEDULERS,
    IpvsOptions,
    RealServer,
    VirtualServer,
    VsKey,
    desired_state,
    jumps,
    listing,
    parse_scheduler,
    restore_text,
    set_specs,
)
from proxyd.model import (
    Endpoint,
    IPFamily,
    Protocol,
    ServicePlan,
    TrafficPolicy,
)
from tests.builders import ep, node_plan, sp

NODE = "node-a"
TWO = (ep("10.244.1.2"), ep("10.244.1.3"))


def splan(name: str = "web", *, internal: tuple[Endpoint, ...] = TWO, **fields: Any) -> ServicePlan:
    """One service port's plan, with two endpoints unless told otherwise."""
    return sp(name, internal=internal, **fields)


def vs(ip: str, port: int = 80, proto: Protocol = Protocol.TCP) -> VsKey:
    return VsKey(proto, ip, port)


def reals(state: Any, key: VsKey) -> set[str]:
    return {f"{r.address}:{r.port}" for r in state.services[key].reals}


def test_cluster_ip_gets_a_virtual_server_with_internal_endpoints_bound_and_in_set() -> None:
    state = desired_state(node_plan(splan()))
    svc = state.services[vs("10.96.0.10")]
    assert svc.server == VirtualServer(vs("10.96.0.10"), "rr", frozenset(), 0)
    assert set(svc.reals) == {RealServer("10.244.1.2", 8080), RealServer("10.244.1.3", 8080)}
    assert state.addresses == {"10.96.0.10"}
    assert state.sets["PROXYD-CLUSTER-IP"] == {"10.96.0.10,tcp:80"}
    assert not state.warnings


def test_node_port_gets_a_virtual_server_per_node_address_with_external_endpoints() -> None:
    s = splan(node_port=30080, internal=(ep("10.244.1.2"),), external=(ep("10.244.1.3"),))
    state = desired_state(node_plan(s, addresses=("192.168.1.5", "10.0.0.5")))
    assert set(state.services) == {
        vs("10.96.0.10"),
        vs("192.168.1.5", 30080),
        vs("10.0.0.5", 30080),
    }
    assert reals(state, vs("10.0.0.5", 30080)) == {"10.244.1.3:8080"}
    assert reals(state, vs("10.96.0.10")) == {"10.244.1.2:8080"}
    assert state.sets["PROXYD-NODE-PORT-TCP"] == {"30080"}
    assert "192.168.1.5" not in state.addresses  # node addresses are never bound


def test_nodeport_addresses_limit_which_node_addresses_serve() -> None:
    s = splan(node_port=30080)
    state = desired_state(
        node_plan(s, addresses=("192.168.1.5", "10.0.0.5")),
        IpvsOptions(nodeport_addresses=("10.0.0.0/8",)),
    )
    assert {k for k in state.services if k.port == 30080} == {vs("10.0.0.5", 30080)}


@pytest.mark.parametrize(
    ("policy", "ext_set", "lb_set"),
    [
        pytest.param(
            TrafficPolicy.CLUSTER, "PROXYD-EXTERNAL-IP", "PROXYD-LOAD-BALANCER", id="cluster"
        ),
        pytest.param(
            TrafficPolicy.LOCAL,
            "PROXYD-EXTERNAL-IP-LOCAL",
            "PROXYD-LOAD-BALANCER-LOCAL",
            id="local",
        ),
    ],
)
def test_external_and_lb_ips_use_external_endpoints_and_policy_sets(
    policy: TrafficPolicy, ext_set: str, lb_set: str
) -> None:
    s = splan(
        external=(ep("10.244.1.3"),),
        external_ips=("203.0.113.7",),
        load_balancer_ips=("198.51.100.9",),
        external_traffic_policy=policy,
    )
    state = desired_state(node_plan(s))
    assert reals(state, vs("203.0.113.7")) == {"10.244.1.3:8080"}
    assert reals(state, vs("198.51.100.9")) == {"10.244.1.3:8080"}
    assert state.addresses == {"10.96.0.10", "203.0.113.7", "198.51.100.9"}
    assert state.sets[ext_set] == {"203.0.113.7,tcp:80"}
    assert state.sets[lb_set] == {"198.51.100.9,tcp:80"}


def test_lb_source_ranges_fill_the_firewall_sets_per_family() -> None:
    s = splan(
        load_balancer_ips=("198.51.100.9",), load_balancer_source_ranges=("10.1.0.0/16", "fd00::/8")
    )
    state = desired_state(node_plan(s))
    assert state.sets["PROXYD-LB-FW"] == {"198.51.100.9,tcp:80"}
    assert state.sets["PROXYD-LB-SOURCE-CIDR"] == {"198.51.100.9,tcp:80,10.1.0.0/16"}


def test_session_affinity_becomes_persistence() -> None:
    state = desired_state(node_plan(splan(session_affinity_timeout=10800)))
    assert state.services[vs("10.96.0.10")].server.persistence == 10800


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_kernel_scheduler_is_accepted(name: str) -> None:
    state = desired_state(node_plan(splan(ipvs_scheduler=name)))
    assert state.services[vs("10.96.0.10")].server.scheduler == name
    assert not state.warnings


@pytest.mark.parametrize(
    ("value", "want", "problems"),
    [
        pytest.param("sh", ("sh", set()), 0, id="plain"),
        pytest.param(" SH ", ("sh", set()), 0, id="case-and-space"),
        pytest.param("sh:fallback,port", ("sh", {"fallback", "port"}), 0, id="sh-flags"),
        pytest.param("mh:flag-1", ("mh", {"fallback"}), 0, id="kube-router-flag"),
        pytest.param("mh:mh-port", ("mh", {"port"}), 0, id="ipvsadm-flag"),
        pytest.param("rr:port", ("rr", set()), 1, id="flags-on-rr-dropped"),
        pytest.param("sh:sticky", ("sh", set()), 1, id="unknown-flag-dropped"),
        pytest.param("fastest", ("", set()), 1, id="unknown-scheduler"),
    ],
)
def test_parse_scheduler(value: str, want: tuple[str, set[str]], problems: int) -> None:
    name, flags, found = parse_scheduler(value)
    assert (name, set(flags), len(found)) == (*want, problems)


def test_unknown_scheduler_falls_back_to_the_default_with_a_warning() -> None:
    s = splan(ipvs_scheduler="fastest")
    state = desired_state(node_plan(s), IpvsOptions(default_scheduler="lc"))
    assert state.services[vs("10.96.0.10")].server.scheduler == "lc"
    assert [(w.key, w.reason) for w in state.warnings] == [(s.key, "unknown_scheduler")]


def test_unknown_default_scheduler_falls_back_to_rr_with_a_warning() -> None:
    state = desired_state(node_plan(splan()), IpvsOptions(default_scheduler="nope"))
    assert state.services[vs("10.96.0.10")].server.scheduler == "rr"
    assert [(w.key, w.reason) for w in state.warnings] == [(None, "unknown_scheduler")]


def test_service_without_endpoints_keeps_its_virtual_server_and_is_rejected() -> None:
    state = desired_state(node_plan(splan(internal=(), node_port=30080), addresses=("10.0.0.5",)))
    assert state.services[vs("10.96.0.10")].reals == ()
    assert state.sets["PROXYD-NO-ENDPOINTS"] == {"10.96.0.10,tcp:80", "10.0.0.5,tcp:30080"}
    assert state.sets["PROXYD-NO-LOCAL-ENDPOINTS"] == set()


def test_local_policy_without_local_endpoints_drops_only_external_traffic() -> None:
    s = splan(external=(), node_port=30080, external_traffic_policy=TrafficPolicy.LOCAL)
    state = desired_state(node_plan(s, addresses=("10.0.0.5",)))
    assert state.sets["PROXYD-NO-LOCAL-ENDPOINTS"] == {"10.0.0.5,tcp:30080"}
    assert state.sets["PROXYD-NO-ENDPOINTS"] == set()
    assert state.sets["PROXYD-NODE-PORT-LOCAL-TCP"] == {"30080"}


def test_sctp_node_ports_are_node_address_and_port_members_of_per_family_hash_sets() -> None:
    """The kernel reads no port from an SCTP packet for a bitmap:port set (TCP and UDP
    only): SCTP NodePorts go in hash:ip,port sets of node address and port."""
    specs = {s.name: (s.kind, s.family) for s in set_specs()}
    for local in ("", "LOCAL-"):
        assert specs[f"PROXYD-NODE-PORT-{local}SCTP"] == ("hash:ip,port", IPFamily.IPV4)
        assert specs[f"PROXYD-6-NODE-PORT-{local}SCTP"] == ("hash:ip,port", IPFamily.IPV6)
        assert specs[f"PROXYD-NODE-PORT-{local}TCP"] == ("bitmap:port", None)
        assert specs[f"PROXYD-NODE-PORT-{local}UDP"] == ("bitmap:port", None)
    nodes = ("192.168.1.5", "10.0.0.5", "fd00::5")
    cluster = splan("a", protocol=Protocol.SCTP, node_port=30080)
    local = splan(
        "b",
        cluster_ips=("10.96.0.11",),
        protocol=Protocol.SCTP,
        node_port=30081,
        external_traffic_policy=TrafficPolicy.LOCAL,
    )
    state = desired_state(node_plan(cluster, local, addresses=nodes))
    assert {s.server.scheduler for s in state.services.values()} == {"rr"}
    sets = state.sets
    assert sets["PROXYD-NODE-PORT-SCTP"] == {"192.168.1.5,sctp:30080", "10.0.0.5,sctp:30080"}
    assert sets["PROXYD-6-NODE-PORT-SCTP"] == {"fd00::5,sctp:30080"}
    assert sets["PROXYD-NODE-PORT-LOCAL-SCTP"] == {
        "192.168.1.5,sctp:30081",
        "10.0.0.5,sctp:30081",
    }
    assert sets["PROXYD-6-NODE-PORT-LOCAL-SCTP"] == {"fd00::5,sctp:30081"}


@pytest.mark.parametrize("fam", list(IPFamily))
def test_node_port_rules_match_sctp_by_address_and_port_and_tcp_udp_by_port(
    fam: IPFamily,
) -> None:
    six = "6-" if fam is IPFamily.IPV6 else ""
    text = restore_text(fam, IpvsOptions())
    matches = {
        (m["proto"], m["set"], m["dims"])
        for m in re.finditer(
            r"-p (?P<proto>\S+) -m set --match-set (?P<set>\S+) (?P<dims>\S+)", text
        )
    }
    assert matches == {
        *(
            (p, f"PROXYD-NODE-PORT-{local}{p.upper()}", "dst")
            for p in ("tcp", "udp")
            for local in ("", "LOCAL-")
        ),
        *(("sctp", f"PROXYD-{six}NODE-PORT-{local}SCTP", "dst,dst") for local in ("", "LOCAL-")),
    }
    families = {s.name: s.family for s in set_specs()}
    assert {families[n] for n in re.findall(r"--match-set (\S+)", text)} <= {fam, None}


def test_endpoints_on_this_node_are_hairpin_masqueraded() -> None:
    s = splan(internal=(ep("10.244.1.2", node_name=NODE), ep("10.244.2.2", node_name="b")))
    sets = desired_state(node_plan(s)).sets
    assert sets["PROXYD-LOOP-BACK"] == {"10.244.1.2,tcp:8080,10.244.1.2"}


def test_dual_stack_keeps_families_apart() -> None:
    s = splan(
        cluster_ips=("10.96.0.10", "fd00::10"),
        internal=(ep("10.244.1.2"), ep("fd00:244::2")),
        protocol=Protocol.UDP,
        port=53,
    )
    state = desired_state(node_plan(s))
    assert reals(state, vs("fd00::10", 53, Protocol.UDP)) == {"fd00:244::2:8080"}
    assert reals(state, vs("10.96.0.10", 53, Protocol.UDP)) == {"10.244.1.2:8080"}
    assert state.sets["PROXYD-6-CLUSTER-IP"] == {"fd00::10,udp:53"}


def test_second_claim_of_a_virtual_server_is_a_conflict_warning() -> None:
    a = splan("a", external_ips=("203.0.113.7",))
    b = splan("b", cluster_ips=("10.96.0.11",), external_ips=("203.0.113.7",))
    state = desired_state(node_plan(a, b))
    assert state.services[vs("203.0.113.7")].owner == a.key
    assert [(w.key, w.reason) for w in state.warnings] == [(b.key, "conflict")]


def test_listing_is_ipvsadm_shaped_and_sorted_like_ipvsadm() -> None:
    plan = node_plan(
        splan("dns", protocol=Protocol.UDP, port=53, internal=(ep("10.244.1.9", 53),)),
        splan("b", cluster_ips=("10.96.0.9",), internal=(ep("10.244.1.10"), ep("10.244.1.9"))),
        splan("a", ipvs_scheduler="sh:port", session_affinity_timeout=60, internal=()),
    )
    assert listing(plan) == (
        "TCP  10.96.0.9:80 rr\n"
        "  -> 10.244.1.9:8080              Masq    1\n"
        "  -> 10.244.1.10:8080             Masq    1\n"
        "TCP  10.96.0.10:80 sh (sh-port) persistent 60\n"
        "UDP  10.96.0.10:53 rr\n"
        "  -> 10.244.1.9:53                Masq    1\n"
    )
    assert listing(desired_state(plan)) == listing(plan)
    assert listing(node_plan()) == ""


def test_set_names_fit_the_kernel_limit_and_every_rule_set_exists() -> None:
    names = {s.name for s in set_specs()}
    assert all(len(n) <= 31 for n in names)
    for fam in IPFamily:
        used = set(re.findall(r"--match-set (\S+)", restore_text(fam, IpvsOptions())))
        assert used <= names
    assert set(desired_state(node_plan()).sets) == names


def test_restore_text_declares_only_own_chains_and_inserts_only_missing_jumps() -> None:
    opts = IpvsOptions(cluster_cidrs=("10.244.0.0/16",))
    text = restore_text(IPFamily.IPV4, opts, missing=jumps()[:1])
    declared = set(re.findall(r"^:(\S+)", text, re.M))
    assert declared == {c for cs in CHAINS.values() for c in cs}
    assert len(re.findall(r"^-I ", text, re.M)) == 1
    assert "! -s 10.244.0.0/16 -m set --match-set PROXYD-CLUSTER-IP dst,dst" in text
    v6 = restore_text(IPFamily.IPV6, opts)
    assert "PROXYD-6-NO-ENDPOINTS" in v6 and "icmp6-port-unreachable" in v6
    assert "10.244.0.0/16" not in v6
    assert "-j MARK --or-mark 0x4000" in text


def test_missing_jumps_end_up_in_declared_order_firewall_before_node_port_accept() -> None:
    chains: dict[str, list[str]] = {}
    for line in restore_text(IPFamily.IPV4, IpvsOptions(), missing=jumps()).splitlines():
        if line.startswith("-I "):
            chain, target = line.split()[1], line.split()[-1]
            chains.setdefault(chain, []).insert(0, target)  # what "-I CHAIN 1" does
    assert chains["INPUT"] == ["PROXYD-IPVS-FIREWALL", "PROXYD-IPVS-NODE-PORT"]


def test_plan_command_prints_the_ipvs_listing(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from proxyd.cli import main
    from tests import builders as b

    docs = [
        b.node_obj("node-a", internal_ips=("192.168.1.5",)),
        b.svc_obj("web", ports=[b.port_obj(80, nodePort=30080)], svc_type="NodePort"),
        b.slice_obj("web", [b.ep_obj("10.244.1.2", node="node-a")]),
    ]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    assert main(["plan", "--manifests", str(path), "--node", "node-a", "--format", "ipvs"]) == 0
    assert capsys.readouterr().out.split("\n") == [
        "TCP  10.96.0.10:80 rr",
        "  -> 10.244.1.2:8080              Masq    1",
        "TCP  192.168.1.5:30080 rr",
        "  -> 10.244.1.2:8080              Masq    1",
        "",
    ]
