"""iptables_render: golden payload, rule behaviours, partial sync, cleanup text.

Kernel-free: a small restore simulator (:class:`Tables`) applies payloads the way
``iptables-restore --noflush`` does, so partial syncs can be checked to land on the same
tables as full ones.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxyd.backends.iptables_render import (
    COMMENT_ENDPOINT_LIMIT,
    JUMPS,
    KUBE_PROXY,
    MAX_CHAIN_NAME,
    PROXYD,
    FamilyState,
    RenderOptions,
    chain_name,
    escape_comment,
    jump_target,
    localhost_nodeports,
    missing_jumps,
    parse_save,
    render,
    render_cleanup,
    render_service,
)
from proxyd.model import (
    Endpoint,
    IPFamily,
    NodePlan,
    Protocol,
    ServicePlan,
    TrafficPolicy,
)
from tests.builders import ep, node_plan, sp

V4, V6 = IPFamily.IPV4, IPFamily.IPV6
CIDR = RenderOptions(cluster_cidrs=("10.244.0.0/16", "fd00:10:244::/56"))


def lines(text: str, chain: str | None = None) -> list[str]:
    """Rule lines of ``text`` (those appending to ``chain`` when given)."""
    return [ln for ln in text.splitlines() if ln.startswith(f"-A {chain or ''}")]


# --- golden ---------------------------------------------------------------------------

# Chain names computed outside Python, with coreutils:
#   printf 'default\0web\0http\0TCP' | sha256sum | cut -d' ' -f1 | xxd -r -p | base32 | cut -c1-16
SVC_WEB = "PROXYD-SVC-CPPOUM3HC4PKIZHX"
EXT_WEB = "PROXYD-EXT-CPPOUM3HC4PKIZHX"
SEP_WEB_2 = "PROXYD-SEP-5C66M2BK6WKECIF4"  # ... TCP\0 10.244.1.2:8080
SEP_WEB_3 = "PROXYD-SEP-QOXCW3CLW3ZGKYDN"  # ... TCP\0 10.244.1.3:8080

GOLDEN_PLAN = node_plan(
    sp(internal=(ep("10.244.1.2"), ep("10.244.1.3")), node_port=30080),
    sp("dns", port_name="dns", protocol=Protocol.UDP, port=53, cluster_ips=("10.96.0.53",)),
)

# Written by hand from the layout in DESIGN §3 (kube-proxy's), not captured from the code.
GOLDEN = """\
*filter
:PROXYD-SERVICES - [0:0]
:PROXYD-EXTERNAL-SERVICES - [0:0]
:PROXYD-NODEPORTS - [0:0]
:PROXYD-PROXY-FIREWALL - [0:0]
:PROXYD-FORWARD - [0:0]
:PROXYD-FIREWALL - [0:0]
-A PROXYD-FORWARD -m conntrack --ctstate INVALID -j DROP
-A PROXYD-FORWARD -m comment --comment "proxyd forwarding rules" \
-m mark --mark 0x4000/0x4000 -j ACCEPT
-A PROXYD-FORWARD -m comment --comment "proxyd forwarding conntrack rule" \
-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A PROXYD-SERVICES -m comment --comment "default/dns:dns has no endpoints" \
-p udp -m udp -d 10.96.0.53 --dport 53 -j REJECT
COMMIT
*nat
:PROXYD-SERVICES - [0:0]
:PROXYD-NODEPORTS - [0:0]
:PROXYD-MARK-MASQ - [0:0]
:PROXYD-POSTROUTING - [0:0]
:PROXYD-SVC-CPPOUM3HC4PKIZHX - [0:0]
:PROXYD-EXT-CPPOUM3HC4PKIZHX - [0:0]
:PROXYD-SEP-5C66M2BK6WKECIF4 - [0:0]
:PROXYD-SEP-QOXCW3CLW3ZGKYDN - [0:0]
-A PROXYD-MARK-MASQ -j MARK --or-mark 0x4000
-A PROXYD-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A PROXYD-POSTROUTING -j MARK --xor-mark 0x4000
-A PROXYD-POSTROUTING -m comment --comment "proxyd service traffic requiring SNAT" \
-j MASQUERADE --random-fully
-A PROXYD-SERVICES -m comment --comment "default/web:http cluster IP" \
-p tcp -m tcp -d 10.96.0.10 --dport 80 -j PROXYD-SVC-CPPOUM3HC4PKIZHX
-A PROXYD-SERVICES -m comment \
--comment "proxyd service nodeports; NOTE: this must be the last rule in this chain" \
-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j PROXYD-NODEPORTS
-A PROXYD-NODEPORTS -m comment --comment "default/web:http" \
-p tcp -m tcp --dport 30080 -j PROXYD-EXT-CPPOUM3HC4PKIZHX
-A PROXYD-SVC-CPPOUM3HC4PKIZHX -m comment --comment "default/web:http cluster IP" \
-p tcp -m tcp -d 10.96.0.10 --dport 80 ! -s 10.244.0.0/16 -j PROXYD-MARK-MASQ
-A PROXYD-SVC-CPPOUM3HC4PKIZHX -m comment --comment "default/web:http -> 10.244.1.2:8080" \
-m statistic --mode random --probability 0.5000000000 -j PROXYD-SEP-5C66M2BK6WKECIF4
-A PROXYD-SVC-CPPOUM3HC4PKIZHX -m comment --comment "default/web:http -> 10.244.1.3:8080" \
-j PROXYD-SEP-QOXCW3CLW3ZGKYDN
-A PROXYD-EXT-CPPOUM3HC4PKIZHX -m comment \
--comment "masquerade traffic for default/web:http external destinations" -j PROXYD-MARK-MASQ
-A PROXYD-EXT-CPPOUM3HC4PKIZHX -j PROXYD-SVC-CPPOUM3HC4PKIZHX
-A PROXYD-SEP-5C66M2BK6WKECIF4 -m comment --comment "default/web:http" \
-s 10.244.1.2 -j PROXYD-MARK-MASQ
-A PROXYD-SEP-5C66M2BK6WKECIF4 -m comment --comment "default/web:http" \
-p tcp -j DNAT --to-destination 10.244.1.2:8080
-A PROXYD-SEP-QOXCW3CLW3ZGKYDN -m comment --comment "default/web:http" \
-s 10.244.1.3 -j PROXYD-MARK-MASQ
-A PROXYD-SEP-QOXCW3CLW3ZGKYDN -m comment --comment "default/web:http" \
-p tcp -j DNAT --to-destination 10.244.1.3:8080
COMMIT
"""


def test_golden_payload() -> None:
    payload = render(GOLDEN_PLAN, V4, RenderOptions(cluster_cidrs=("10.244.0.0/16",)))
    assert payload.text == GOLDEN
    assert payload.full
    assert payload.rules == {"filter": 4, "nat": 16}


def test_chain_names_are_pinned_and_fit_iptables() -> None:
    key = ("default", "web", "http", "TCP")
    assert chain_name("PROXYD-SVC-", *key) == SVC_WEB
    assert chain_name("PROXYD-SEP-", *key, "10.244.1.2:8080") == SEP_WEB_2
    longest = chain_name("PROXYD-SVC-", "n" * 63, "s" * 63, "p" * 15, "SCTP")
    assert len(longest) <= MAX_CHAIN_NAME
    assert chain_name("P-", "a", "bc") != chain_name("P-", "ab", "c")


# --- comments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "token"),
    [
        pytest.param("ns/web:http", '"ns/web:http"', id="plain"),
        pytest.param('say "hi"', '"say \\"hi\\""', id="double-quote"),
        pytest.param("a\\b", '"a\\\\b"', id="backslash"),
        pytest.param("line\nbreak", '"line?break"', id="control-character"),
        pytest.param("x" * 300, '"' + "x" * 255 + '"', id="cut-to-255"),
    ],
)
def test_escape_comment(text: str, token: str) -> None:
    assert escape_comment(text) == token
    assert shlex.split(token) == [shlex.split(token)[0]]  # one token for restore's parser


def test_comments_dropped_from_endpoint_rules_above_limit() -> None:
    n = COMMENT_ENDPOINT_LIMIT + 1
    many = [ep(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(n)]
    text = render(node_plan(sp(internal=many)), V4, CIDR).text
    per_endpoint = lines(text, "PROXYD-SVC-")[1:] + lines(text, "PROXYD-SEP-")
    assert len(per_endpoint) == 3 * n
    assert not [ln for ln in per_endpoint if "--comment" in ln]
    assert "--comment" in lines(text, "PROXYD-SERVICES")[0]
    few = render(node_plan(sp(internal=many[:COMMENT_ENDPOINT_LIMIT])), V4, CIDR).text
    assert all("--comment" in ln for ln in lines(few, "PROXYD-SEP-"))


# --- behaviours of one service port ------------------------------------------------------


def nat(s: ServicePlan, family: IPFamily = V4, options: RenderOptions = CIDR) -> list[str]:
    return list(render_service(s, family, options).rules)


def shared(s: ServicePlan, field: str, family: IPFamily = V4, **opts: Any) -> list[str]:
    return list(getattr(render_service(s, family, replace(CIDR, **opts)).shared, field))


def test_statistic_spreads_with_decreasing_probabilities() -> None:
    rules = [r for r in nat(sp(internal=[ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")]))]
    spread = [re.search(r"--probability (\S+)", r) for r in rules if "-j PROXYD-SEP-" in r]
    assert [m.group(1) if m else None for m in spread] == ["0.3333333333", "0.5000000000", None]


def test_session_affinity_checks_then_records_the_client() -> None:
    rules = nat(sp(internal=[ep("10.0.0.1"), ep("10.0.0.2")], session_affinity_timeout=600))
    checks = [r for r in rules if "--rcheck" in r]
    assert len(checks) == 2
    assert all("--seconds 600 --reap" in r for r in checks)
    first_check = rules.index(checks[0])
    first_spread = next(i for i, r in enumerate(rules) if "statistic" in r)
    assert first_check < first_spread
    dnat = [r for r in rules if "DNAT" in r]
    assert all(re.search(r"-m recent --name (PROXYD-SEP-\S+) --set", r) for r in dnat)
    assert {re.search(r"--name (\S+)", r).group(1) for r in dnat} == {  # type: ignore[union-attr]
        r.split()[1] for r in dnat
    }


def test_no_endpoints_rejects_cluster_ip_and_external_destinations() -> None:
    s = sp(node_port=30080, external_ips=("192.0.2.10",))
    assert nat(s) == []
    assert render_service(s, V4, CIDR).chains == ()
    (reject,) = shared(s, "filter_services")
    assert "-d 10.96.0.10 --dport 80 -j REJECT" in reject
    external = shared(s, "filter_external")
    assert len(external) == 2
    assert all(r.endswith("-j REJECT") for r in external)
    assert shared(s, "nat_services") == shared(s, "nat_nodeports") == []


def test_etp_local_without_local_endpoint_drops_external_traffic_only() -> None:
    s = sp(
        internal=[ep("10.244.2.2")],
        external=[],
        node_port=30080,
        external_ips=("192.0.2.10",),
        external_traffic_policy=TrafficPolicy.LOCAL,
    )
    assert shared(s, "filter_services") == []
    drops = shared(s, "filter_external")
    assert {r.split(" -j ")[-1] for r in drops} == {"DROP"}
    assert any("--dport 30080" in r for r in drops)
    assert any("-d 192.0.2.10 --dport 80" in r for r in drops)
    rules = nat(s)
    ext = chain_name("PROXYD-EXT-", "default", "web", "http", "TCP")
    # Pods and the node itself still reach the service through its external addresses.
    assert any(r.startswith(f"-A {ext}") and "-s 10.244.0.0/16 -j PROXYD-SVC-" in r for r in rules)
    assert not any(r.startswith(f"-A {ext} -j") for r in rules)


def test_etp_local_sends_external_traffic_to_local_endpoints_unmasqueraded() -> None:
    local, remote = ep("10.244.1.2"), ep("10.244.2.2")
    s = sp(
        internal=[local, remote],
        external=[local],
        node_port=30080,
        external_traffic_policy=TrafficPolicy.LOCAL,
    )
    rules = nat(s)
    ids = ("default", "web", "http", "TCP")
    svl, ext = chain_name("PROXYD-SVL-", *ids), chain_name("PROXYD-EXT-", *ids)
    assert f"-A {ext} -j {svl}" in rules
    svl_rules = [r for r in rules if r.startswith(f"-A {svl}")]
    assert len(svl_rules) == 1
    assert "MARK-MASQ" not in svl_rules[0]
    ext_masq = [r for r in rules if r.startswith(f"-A {ext}") and "MARK-MASQ" in r]
    assert ext_masq and all("--src-type LOCAL" in r for r in ext_masq)


def test_etp_cluster_masquerades_external_traffic() -> None:
    s = sp(internal=[ep("10.244.1.2")], node_port=30080)
    ext = chain_name("PROXYD-EXT-", "default", "web", "http", "TCP")
    ext_rules = [r for r in nat(s) if r.startswith(f"-A {ext}")]
    assert ext_rules[0].endswith("-j PROXYD-MARK-MASQ")
    assert ext_rules[-1] == f"-A {ext} -j {SVC_WEB}"


def test_internal_traffic_policy_local_uses_svl_for_cluster_ips() -> None:
    s = sp(internal=[ep("10.244.1.2")], internal_traffic_policy=TrafficPolicy.LOCAL)
    svl = chain_name("PROXYD-SVL-", "default", "web", "http", "TCP")
    assert shared(s, "nat_services")[0].endswith(f"-j {svl}")
    assert render_service(s, V4, CIDR).chains[0] == svl


def test_internal_traffic_policy_local_without_local_endpoint_rejects_cluster_ips() -> None:
    """Deliberate (docs/decisions.md): kube-proxy DROPs here, proxyd REJECTs; external
    destinations still reach the cluster-wide endpoints (eTP=Cluster)."""
    s = sp(
        internal=[],
        external=[ep("10.244.2.2")],
        node_port=30080,
        internal_traffic_policy=TrafficPolicy.LOCAL,
    )
    (reject,) = shared(s, "filter_services")
    assert reject.endswith("-d 10.96.0.10 --dport 80 -j REJECT")
    assert shared(s, "filter_external") == []
    assert shared(s, "nat_nodeports")[0].endswith(f"--dport 30080 -j {EXT_WEB}")
    assert f"-A {EXT_WEB} -j {SVC_WEB}" in nat(s)


SVL_WEB = chain_name("PROXYD-SVL-", "default", "web", "http", "TCP")
LOCAL_EP, REMOTE_EP = ep("10.244.1.2", node_name="n1"), ep("10.244.2.2", node_name="n2")


def both_local(local: list[Endpoint], cluster: list[Endpoint]) -> ServicePlan:
    """An LB service with both traffic policies Local, as the planner gives it."""
    plan = sp(
        internal=local,
        node_port=30080,
        load_balancer_ips=("192.0.2.20",),
        internal_traffic_policy=TrafficPolicy.LOCAL,
        external_traffic_policy=TrafficPolicy.LOCAL,
    )
    return replace(plan, cluster=tuple(cluster))


def spread(rules: list[str], chain: str) -> set[str]:
    """The SEP chains ``chain`` spreads over."""
    return {r.split(" -j ")[-1] for r in rules if r.startswith(f"-A {chain} ") and "SEP-" in r}


def sep_of(endpoint: Endpoint) -> str:
    return chain_name("PROXYD-SEP-", "default", "web", "http", "TCP", endpoint.addr)


def test_both_local_short_circuits_pods_and_node_to_the_cluster_set_in_svc() -> None:
    """kube-proxy writes KUBE-SVC (cluster endpoints) next to KUBE-SVL: its EXT chain sends
    pods and the node to the former, everything else to the latter."""
    s = both_local([LOCAL_EP], [LOCAL_EP, REMOTE_EP])
    rules = nat(s)
    assert spread(rules, SVC_WEB) == {sep_of(LOCAL_EP), sep_of(REMOTE_EP)}
    assert spread(rules, SVL_WEB) == {sep_of(LOCAL_EP)}
    ext = [r for r in rules if r.startswith(f"-A {EXT_WEB} ")]
    assert [r.split(" -j ")[-1] for r in ext] == [SVC_WEB, "PROXYD-MARK-MASQ", SVC_WEB, SVL_WEB]
    assert "-s 10.244.0.0/16" in ext[0] and "--src-type LOCAL" in ext[2]
    assert shared(s, "nat_services")[0].endswith(f"-d 10.96.0.10 --dport 80 -j {SVL_WEB}")
    assert set(render_service(s, V4, CIDR).chains) >= {SVC_WEB, SVL_WEB, EXT_WEB}


def test_both_local_without_local_endpoint_still_short_circuits_and_drops_the_rest() -> None:
    s = both_local([], [REMOTE_EP])
    rules = nat(s)
    assert spread(rules, SVC_WEB) == {sep_of(REMOTE_EP)}
    ext = [r for r in rules if r.startswith(f"-A {EXT_WEB} ")]
    assert [r.split(" -j ")[-1] for r in ext] == [SVC_WEB, "PROXYD-MARK-MASQ", SVC_WEB]
    assert shared(s, "nat_services")[-1].endswith(f"-d 192.0.2.20 --dport 80 -j {EXT_WEB}")
    assert shared(s, "nat_nodeports")[0].endswith(f"--dport 30080 -j {EXT_WEB}")
    drops = shared(s, "filter_external")
    assert len(drops) == 2 and all(r.endswith("-j DROP") for r in drops)
    assert all("has no local endpoints" in r for r in drops)
    (reject,) = shared(s, "filter_services")  # deliberate: REJECT, see docs/decisions.md
    assert reject.endswith("-d 10.96.0.10 --dport 80 -j REJECT")


def test_both_local_without_any_endpoint_rejects_everything() -> None:
    s = both_local([], [])
    assert nat(s) == [] and render_service(s, V4, CIDR).chains == ()
    rejects = [*shared(s, "filter_services"), *shared(s, "filter_external")]
    assert len(rejects) == 3 and all(r.endswith("-j REJECT") for r in rejects)


def test_cluster_set_of_a_cluster_ip_only_service_is_unused() -> None:
    s = both_local([LOCAL_EP], [LOCAL_EP, REMOTE_EP])
    s = replace(s, port=replace(s.port, node_port=None, load_balancer_ips=()))
    assert render_service(s, V4, CIDR).chains == (SVL_WEB, sep_of(LOCAL_EP))


def test_a_changed_cluster_set_alone_rewrites_the_service() -> None:
    first = render(node_plan(both_local([], [REMOTE_EP])), V4, CIDR)
    grown = both_local([], [REMOTE_EP, ep("10.244.3.2")])
    second = render(node_plan(grown), V4, CIDR, first.state)
    assert not second.full and second.written == {grown.key}
    assert (
        applied(first.text, second.text).own()
        == applied(render(node_plan(grown), V4, CIDR).text).own()
    )


@pytest.mark.parametrize(
    ("options", "masq"),
    [
        pytest.param(CIDR, "--dport 80 ! -s 10.244.0.0/16 -j PROXYD-MARK-MASQ", id="off-cluster"),
        pytest.param(
            RenderOptions(masquerade_all=True), "--dport 80 -j PROXYD-MARK-MASQ", id="all"
        ),
        pytest.param(RenderOptions(), None, id="no-cluster-cidr-no-masquerade"),
    ],
)
def test_cluster_ip_masquerade(options: RenderOptions, masq: str | None) -> None:
    rules = [r for r in nat(sp(internal=[ep("10.244.1.2")]), options=options)]
    marked = [r for r in rules if "cluster IP" in r and "MARK-MASQ" in r]
    assert [r.split(" -p tcp -m tcp -d 10.96.0.10 ")[1] for r in marked] == ([masq] if masq else [])


def test_hairpin_traffic_is_masqueraded_in_the_endpoint_chain() -> None:
    (masq,) = [r for r in nat(sp(internal=[ep("10.244.1.2")])) if "-s 10.244.1.2 " in r]
    assert masq.startswith("-A PROXYD-SEP-") and masq.endswith("-j PROXYD-MARK-MASQ")


def test_load_balancer_source_ranges_admit_via_fw_chain_and_drop_in_filter() -> None:
    s = sp(
        internal=[ep("10.244.1.2"), ep("fd00:10:244:1::2")],
        load_balancer_ips=("192.0.2.20", "2001:db8::20"),
        load_balancer_source_ranges=("203.0.113.0/24",),
        cluster_ips=("10.96.0.10", "fd00:10:96::10"),
    )
    fw = chain_name("PROXYD-FW-", "default", "web", "http", "TCP")
    ext = chain_name("PROXYD-EXT-", "default", "web", "http", "TCP")
    assert shared(s, "nat_services")[-1].endswith(f"-d 192.0.2.20 --dport 80 -j {fw}")
    assert [r for r in nat(s) if r.startswith(f"-A {fw}")] == [
        f'-A {fw} -m comment --comment "default/web:http loadbalancer IP"'
        f" -s 203.0.113.0/24 -j {ext}"
    ]
    (drop,) = shared(s, "filter_firewall")
    assert drop.startswith("-A PROXYD-PROXY-FIREWALL") and drop.endswith(
        "-d 192.0.2.20 --dport 80 -j DROP"
    )
    # IPv6: ranges of the other family admit nothing; the LB IP is still firewalled.
    assert [r for r in nat(s, V6) if r.startswith(f"-A {fw}")] == []
    assert shared(s, "filter_firewall", V6)[0].endswith("-d 2001:db8::20 --dport 80 -j DROP")


@pytest.mark.parametrize(
    ("addresses", "admitted"),
    [
        pytest.param(("203.0.113.7", "2001:db8::7"), True, id="ranges-hold-the-node"),
        pytest.param(("198.51.100.7",), False, id="ranges-miss-the-node"),
        pytest.param((), False, id="node-addresses-unknown"),
    ],
)
def test_source_ranges_holding_the_node_admit_its_own_lb_ip_source(
    addresses: tuple[str, ...], admitted: bool
) -> None:
    """kube-proxy: when the ranges hold the node IP, traffic whose source is the LB IP
    itself is admitted too (a node reaching an LB IP that is local to it)."""
    s = sp(
        internal=[ep("10.244.1.2")],
        load_balancer_ips=("192.0.2.20", "192.0.2.21"),
        load_balancer_source_ranges=("203.0.113.0/24",),
    )
    fw = chain_name("PROXYD-FW-", "default", "web", "http", "TCP")
    ext = chain_name("PROXYD-EXT-", "default", "web", "http", "TCP")
    text = render(node_plan(s, addresses=addresses), V4, CIDR).text
    sources = [r.split(" -s ")[1] for r in lines(text, fw)]
    own = [f"192.0.2.20 -j {ext}", f"192.0.2.21 -j {ext}"]
    assert sources == [f"203.0.113.0/24 -j {ext}", *(own if admitted else [])]


def test_changed_node_addresses_rerender_the_firewall_chain() -> None:
    s = sp(
        internal=[ep("10.244.1.2")],
        load_balancer_ips=("192.0.2.20",),
        load_balancer_source_ranges=("203.0.113.0/24",),
    )
    first = render(node_plan(s), V4, CIDR)
    moved = render(node_plan(s, addresses=("203.0.113.7",)), V4, CIDR, first.state)
    assert moved.full and "-s 192.0.2.20 -j PROXYD-EXT-" in moved.text
    assert render(node_plan(s, addresses=("203.0.113.7",)), V4, CIDR, moved.state).text == ""


def test_load_balancer_without_ranges_goes_straight_to_ext() -> None:
    s = sp(internal=[ep("10.244.1.2")], load_balancer_ips=("192.0.2.20",))
    ext = chain_name("PROXYD-EXT-", "default", "web", "http", "TCP")
    assert shared(s, "nat_services")[-1].endswith(f"-j {ext}")
    assert shared(s, "filter_firewall") == []


def test_nodeport_addresses_restrict_the_nodeport_jump() -> None:
    options = RenderOptions(nodeport_addresses=("10.255.0.0/16", "fd00::/8"))
    text = render(node_plan(sp(internal=[ep("10.244.1.2")], node_port=30080)), V4, options).text
    (jump,) = [r for r in lines(text, "PROXYD-SERVICES") if r.endswith("-j PROXYD-NODEPORTS")]
    assert "-d 10.255.0.0/16 -m addrtype --dst-type LOCAL" in jump


# --- localhost NodePorts (kube-proxy's iptables.localhostNodePorts) ---------------------

LOCALHOST = replace(CIDR, localhost_nodeports=True)
NODEPORT = sp(internal=[ep("10.244.1.2")], node_port=30080)
MARTIAN = (
    "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
)


def nodeport_jumps(options: RenderOptions, family: IPFamily = V4) -> set[str]:
    """The destination matches of the jumps to PROXYD-NODEPORTS."""
    text = render(node_plan(NODEPORT), family, options).text
    jumps = [r for r in lines(text, "PROXYD-SERVICES") if r.endswith(" -j PROXYD-NODEPORTS")]
    return {re.sub(r'^.*this chain" (.*) -j PROXYD-NODEPORTS$', r"\1", r) for r in jumps}


def test_localhost_nodeports_open_ipv4_loopback_only() -> None:
    assert nodeport_jumps(LOCALHOST) == {"-m addrtype --dst-type LOCAL"}
    assert nodeport_jumps(CIDR) == {"-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8"}
    for options in (CIDR, LOCALHOST):  # IPv6 loopback never: ::1 cannot be routed anywhere
        assert nodeport_jumps(options, V6) == {"-m addrtype --dst-type LOCAL ! -d ::1/128"}


def test_martian_guard_comes_with_localhost_nodeports_only() -> None:
    def guard(options: RenderOptions, family: IPFamily = V4) -> list[str]:
        return lines(render(node_plan(NODEPORT), family, options).text, "PROXYD-FIREWALL")

    (rule,) = guard(LOCALHOST)
    assert rule.startswith("-A PROXYD-FIREWALL ") and rule.endswith(MARTIAN)
    assert guard(CIDR) == []
    assert guard(LOCALHOST, V6) == []
    assert guard(replace(LOCALHOST, nodeport_addresses=("10.0.0.0/8",))) == []


def test_switching_localhost_nodeports_off_flushes_the_guard() -> None:
    on = render(node_plan(NODEPORT), V4, LOCALHOST, jumps=JUMPS)
    off = render(node_plan(NODEPORT), V4, CIDR, on.state)
    assert off.full  # other options: everything is rewritten
    tables = applied(on.text, off.text).tables
    assert tables["filter"]["PROXYD-FIREWALL"] == []
    assert any("! -d 127.0.0.0/8" in r for r in tables["nat"]["PROXYD-SERVICES"])


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        pytest.param((), True, id="all-addresses"),
        pytest.param(("0.0.0.0/0",), True, id="zero-cidr"),
        pytest.param(("127.0.0.1/32", "10.0.0.0/8"), True, id="inside-loopback"),
        pytest.param(("126.0.0.0/7",), True, id="around-loopback"),
        pytest.param(("10.0.0.0/8",), False, id="no-loopback"),
        pytest.param(("fd00::/8",), False, id="ipv6-only"),
    ],
)
def test_localhost_nodeports_need_loopback_among_the_nodeport_addresses(
    addresses: tuple[str, ...], expected: bool
) -> None:
    options = RenderOptions(nodeport_addresses=addresses, localhost_nodeports=True)
    assert localhost_nodeports(options) is expected
    assert localhost_nodeports(replace(options, localhost_nodeports=False)) is False


@pytest.mark.parametrize(
    ("addresses", "family", "loopback"),
    [
        pytest.param(("127.0.0.0/8", "10.0.0.0/8"), V4, "127.0.0.0/8", id="v4-inside"),
        pytest.param(("0.0.0.0/1", "192.168.0.0/16"), V4, "127.0.0.0/8", id="v4-around"),
        pytest.param(("::1/128", "fd00::/8"), V6, "::1/128", id="v6-inside"),
        pytest.param(("::/120",), V6, "::1/128", id="v6-around"),
    ],
)
def test_nodeport_cidrs_are_cut_around_an_excluded_loopback(
    addresses: tuple[str, ...], family: IPFamily, loopback: str
) -> None:
    """kube-proxy skips loopback node IPs in these CIDRs; one ``-d`` per rule, so proxyd
    answers on the rest of each CIDR through the CIDRs around loopback."""
    options = RenderOptions(nodeport_addresses=addresses)  # localhost NodePorts off
    jumps = nodeport_jumps(options, family)
    nets = {ipaddress.ip_network(j.split()[1]) for j in jumps}
    assert all(j.endswith("-m addrtype --dst-type LOCAL") for j in jumps)
    lo = ipaddress.ip_network(loopback)
    assert not any(net.overlaps(lo) for net in nets)
    wanted = [ipaddress.ip_network(a) for a in addresses if (":" in a) == (family is V6)]
    assert set(ipaddress.collapse_addresses([*nets, lo])) == set(
        ipaddress.collapse_addresses([*wanted, lo])
    )


def test_zero_cidr_means_every_local_address() -> None:
    options = RenderOptions(nodeport_addresses=("0.0.0.0/0", "10.0.0.0/8", "::/0"))
    assert nodeport_jumps(options) == {"-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8"}
    assert nodeport_jumps(options, V6) == {"-m addrtype --dst-type LOCAL ! -d ::1/128"}
    on = replace(options, localhost_nodeports=True)
    assert nodeport_jumps(on) == {"-m addrtype --dst-type LOCAL"}


def test_nodeport_without_endpoints_is_rejected_on_loopback_too_when_open() -> None:
    s = sp(internal=[], node_port=30080)
    (closed,) = shared(s, "filter_external")
    (opened,) = shared(s, "filter_external", localhost_nodeports=True)
    assert "! -d 127.0.0.0/8" in closed
    assert "127.0.0.0/8" not in opened and opened.endswith("--dport 30080 -j REJECT")


@pytest.mark.parametrize(
    ("protocol", "match"), [(Protocol.TCP, "tcp"), (Protocol.UDP, "udp"), (Protocol.SCTP, "sctp")]
)
def test_protocols(protocol: Protocol, match: str) -> None:
    s = sp(internal=[ep("10.244.1.2")], protocol=protocol, node_port=30080)
    assert f"-p {match} -m {match} -d 10.96.0.10 --dport 80" in shared(s, "nat_services")[0]
    assert f"-p {match} -m {match} --dport 30080" in shared(s, "nat_nodeports")[0]
    assert any(f"-p {match} -j DNAT" in r for r in nat(s))


def test_families_keep_their_own_addresses() -> None:
    dual = sp(
        internal=[ep("10.244.1.2"), ep("fd00:10:244:1::2")],
        cluster_ips=("10.96.0.10", "fd00:10:96::10"),
        external_ips=("192.0.2.10", "2001:db8::10"),
    )
    v4_only = sp("v4", internal=[ep("10.244.1.3")], cluster_ips=("10.96.0.11",))
    v6_text = render(node_plan(dual, v4_only), V6, CIDR).text
    v4_text = render(node_plan(dual, v4_only), V4, CIDR).text
    assert "--to-destination [fd00:10:244:1::2]:8080" in v6_text
    assert "-d 2001:db8::10 --dport 80" in v6_text
    assert not re.search(r"\b10\.(96|244)\.|192\.0\.2", v6_text)
    assert "default/v4" not in v6_text
    assert "! -d ::1/128" in v6_text
    assert "fd00" not in v4_text and "2001:db8" not in v4_text


def test_health_check_node_port_accepted_for_etp_local() -> None:
    s = sp(
        internal=[ep("10.244.1.2")],
        node_port=30080,
        external_traffic_policy=TrafficPolicy.LOCAL,
        health_check_node_port=32000,
    )
    (accept,) = shared(s, "filter_nodeports")
    assert accept.endswith("-p tcp -m tcp --dport 32000 -j ACCEPT")


def test_rendering_is_deterministic_whatever_the_endpoint_order() -> None:
    a, b = ep("10.244.1.2"), ep("10.244.1.3")
    assert render_service(sp(internal=[a, b]), V4, CIDR) == render_service(
        sp(internal=[b, a, b]), V4, CIDR
    )


# --- restore simulator ---------------------------------------------------------------------

BUILTIN = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


class Tables:
    """What ``iptables-restore --noflush`` does to the tables, strict like the kernel:
    appending to a missing chain, deleting a missing rule or a referenced chain fails."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, list[str]]] = {
            "filter": {c: [] for c in ("INPUT", "FORWARD", "OUTPUT")},
            "nat": {c: [] for c in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")},
        }

    def apply(self, text: str) -> None:
        work: dict[str, list[str]] = {}
        for line in text.splitlines():
            op, _, rest = line.partition(" ")
            if line.startswith("*"):
                name = line[1:]
                work = {c: list(r) for c, r in self.tables[name].items()}
            elif line == "COMMIT":
                for rules in work.values():
                    for rule in rules:
                        target = jump_target(rule)
                        assert target is None or not target.startswith("PROXYD") or target in work
                self.tables[name] = work
            elif line.startswith(":"):
                chain = line[1:].split()[0]
                if chain not in BUILTIN or chain not in work:  # built-ins are never flushed
                    work[chain] = []
            elif line == "-S":
                pass  # listing: changes nothing
            elif op == "-A":
                chain, _, rule = rest.partition(" ")
                work[chain].append(rule)
            elif op == "-I":
                chain, pos, rule = rest.split(" ", 2)
                work[chain].insert(int(pos) - 1, rule)
            elif op == "-D":
                chain, _, rule = rest.partition(" ")
                work[chain].remove(rule)
            elif op == "-X":
                assert not work[rest], f"deleting non-empty {rest}"
                assert not any(jump_target(r) == rest for rs in work.values() for r in rs)
                del work[rest]
            else:
                raise AssertionError(f"unexpected line {line!r}")

    def own(self) -> dict[tuple[str, str], list[str]]:
        return {
            (t, c): r
            for t, chains in self.tables.items()
            for c, r in chains.items()
            if c not in BUILTIN
        }


def applied(*texts: str) -> Tables:
    tables = Tables()
    for text in texts:
        tables.apply(text)
    return tables


# --- partial sync -------------------------------------------------------------------------

A = sp("a", internal=[ep("10.244.1.2"), ep("10.244.1.3")], cluster_ips=("10.96.0.1",))
B = sp("b", internal=[ep("10.244.1.4")], cluster_ips=("10.96.0.2",), node_port=30002)
C = sp("c", protocol=Protocol.UDP, internal=[ep("10.244.1.5")], cluster_ips=("10.96.0.3",))


def test_partial_sync_writes_only_the_changed_service() -> None:
    first = render(node_plan(A, B, C), V4, CIDR)
    a2 = replace(A, internal=(ep("10.244.1.2"), ep("10.244.1.9")), external=())
    second = render(node_plan(a2, B, C), V4, CIDR, first.state)
    assert not second.full
    assert second.written == {a2.key}
    svc_a = chain_name("PROXYD-SVC-", "default", "a", "http", "TCP")
    svc_b = chain_name("PROXYD-SVC-", "default", "b", "http", "TCP")
    gone = chain_name("PROXYD-SEP-", "default", "a", "http", "TCP", "10.244.1.3:8080")
    assert f":{svc_a} - [0:0]" in second.text
    assert svc_b not in second.text and "default/c" not in second.text
    assert f"-X {gone}" in second.text
    assert "*filter" not in second.text  # nothing changed there
    assert ":PROXYD-SERVICES" not in second.text  # cluster IP jump unchanged
    assert second.rules == render(node_plan(a2, B, C), V4, CIDR).rules
    assert (
        applied(first.text, second.text).own()
        == applied(render(node_plan(a2, B, C), V4, CIDR).text).own()
    )


def test_partial_sync_rewrites_shared_chain_when_its_lines_change() -> None:
    first = render(node_plan(A, B), V4, CIDR)
    b_empty = replace(B, internal=(), external=())
    second = render(node_plan(A, b_empty), V4, CIDR, first.state)
    assert "*filter\n:PROXYD-SERVICES - [0:0]" in second.text  # REJECT appears
    assert ":PROXYD-EXTERNAL-SERVICES - [0:0]" in second.text
    assert "*nat\n:PROXYD-SERVICES - [0:0]\n:PROXYD-NODEPORTS - [0:0]" in second.text
    assert ":PROXYD-FORWARD" not in second.text


def test_nothing_changed_writes_nothing() -> None:
    first = render(node_plan(A, B, C), V4, CIDR)
    again = render(node_plan(A, B, replace(C, mode="other reason")), V4, CIDR, first.state)
    assert again.text == "" and again.written == frozenset()
    assert again.rules == first.rules


def test_removed_service_chains_are_deleted() -> None:
    first = render(node_plan(A, B), V4, CIDR)
    second = render(node_plan(A), V4, CIDR, first.state)
    assert second.removed == {B.key}
    deleted = {ln[3:] for ln in second.text.splitlines() if ln.startswith("-X ")}
    assert deleted == set(render_service(B, V4, CIDR).chains)
    assert (
        applied(first.text, second.text).own()
        == applied(render(node_plan(A), V4, CIDR).text).own()
    )


def test_changed_options_force_a_full_render() -> None:
    first = render(node_plan(A), V4, CIDR)
    again = render(node_plan(A), V4, RenderOptions(masquerade_bit=15), first.state)
    assert again.full and "--or-mark 0x8000" in again.text


def test_full_render_deletes_stale_chains_found_in_the_kernel_only() -> None:
    stale = chain_name("PROXYD-SVC-", "default", "old", "http", "TCP")
    existing = {"nat": {stale, "KUBE-SVC-XYZ", "PROXYD-SERVICES"}, "filter": {"PROXYD-GONE-X"}}
    text = render(node_plan(A), V4, CIDR, existing=existing).text
    assert f"-X {stale}" in text
    assert "KUBE-SVC-XYZ" not in text
    assert "-X PROXYD-SERVICES" not in text
    assert "PROXYD-GONE-X" not in text  # not a prefix proxyd owns


def test_full_render_with_previous_state_deletes_its_chains() -> None:
    first = render(node_plan(A, B), V4, CIDR)
    full = render(node_plan(A), V4, CIDR, first.state, full=True)
    assert full.full and full.written == {A.key}
    assert (
        applied(first.text, full.text).own()
        == applied(render(node_plan(A), V4, CIDR).text).own()
    )


ENDPOINTS = [ep(f"10.244.1.{i}") for i in range(2, 7)] + [ep("fd00:10:244:1::2")]


@st.composite
def service_plans(draw: st.DrawFn) -> ServicePlan:
    name = draw(st.sampled_from(["a", "b", "c", "d"]))
    internal = draw(st.lists(st.sampled_from(ENDPOINTS), max_size=4))
    local = draw(st.booleans())
    external = draw(st.lists(st.sampled_from(internal), max_size=2)) if local and internal else []
    external = external if local else internal
    both_local = local and draw(st.booleans())  # internal is then the local set too
    plan = sp(
        name,
        internal=external if both_local else internal,
        external=external,
        protocol=draw(st.sampled_from(list(Protocol))),
        cluster_ips=("10.96.0.1", "fd00:10:96::1"),
        node_port=draw(st.sampled_from([None, 30001])),
        external_ips=draw(st.sampled_from([(), ("192.0.2.1",)])),
        load_balancer_ips=draw(st.sampled_from([(), ("192.0.2.2", "2001:db8::2")])),
        load_balancer_source_ranges=draw(st.sampled_from([(), ("198.51.100.0/24",)])),
        session_affinity_timeout=draw(st.sampled_from([None, 30])),
        external_traffic_policy=TrafficPolicy.LOCAL if local else TrafficPolicy.CLUSTER,
        internal_traffic_policy=TrafficPolicy.LOCAL if both_local else TrafficPolicy.CLUSTER,
    )
    return replace(plan, cluster=tuple(internal)) if both_local else plan


def plans_of(services: list[ServicePlan]) -> NodePlan:
    return node_plan(*{s.key: s for s in services}.values())


@settings(max_examples=150, deadline=None)
@given(
    before=st.lists(service_plans(), max_size=5),
    after=st.lists(service_plans(), max_size=5),
    family=st.sampled_from([V4, V6]),
)
def test_partial_sync_lands_on_the_same_tables_as_a_full_one(
    before: list[ServicePlan], after: list[ServicePlan], family: IPFamily
) -> None:
    old, new = plans_of(before), plans_of(after)
    first = render(old, family, CIDR, jumps=JUMPS)
    partial = render(new, family, CIDR, first.state)
    want = applied(render(new, family, CIDR).text).own()
    got = applied(first.text, partial.text)
    assert got.own() == want
    assert partial.rules == {
        t: sum(len(r) for (tt, _), r in want.items() if tt == t) for t in ("filter", "nat")
    }
    again = render(new, family, CIDR, partial.state)
    assert again.text == ""


# --- reading the kernel, jumps and cleanup -------------------------------------------------

SAVE = """\
# Generated by iptables-nft-save v1.8.9
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:PROXYD-SERVICES - [0:0]
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "proxyd service portals" \
-j PROXYD-SERVICES
-A PROXYD-SERVICES -d 10.96.0.1/32 -p tcp -j REJECT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAAA - [0:0]
:KUBE-MARK-DROP - [0:0]
:PROXYD-SERVICES - [0:0]
:PROXYD-SVC-BBBB - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m comment --comment "proxyd service portals" -j PROXYD-SERVICES
-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-AAAA
-A PROXYD-SERVICES -d 10.96.0.1/32 -j PROXYD-SVC-BBBB
COMMIT
"""


def test_parse_save_reads_chains_and_selected_rules() -> None:
    saved = parse_save(SAVE, rules_of=lambda c: c in BUILTIN)
    assert saved["nat"].chains >= {"PREROUTING", "KUBE-SVC-AAAA", "PROXYD-SVC-BBBB"}
    assert {c for c, _ in saved["nat"].rules} == {"PREROUTING"}
    listing = parse_save("-P OUTPUT ACCEPT\n-A OUTPUT -j PROXYD-SERVICES\n", "nat")
    assert listing["nat"].rules == (("OUTPUT", "-j PROXYD-SERVICES"),)


@pytest.mark.parametrize(
    ("rule", "target"),
    [
        ('-m comment --comment "x -j FAKE" -j PROXYD-SERVICES', "PROXYD-SERVICES"),
        ("-g KUBE-SVC-X", "KUBE-SVC-X"),
        ("-d 10.0.0.1/32 -p tcp", None),
    ],
)
def test_jump_target(rule: str, target: str | None) -> None:
    assert jump_target(rule) == target


def test_missing_jumps_are_those_without_a_rule_targeting_their_chain() -> None:
    missing = missing_jumps(parse_save(SAVE))
    present = {(j.table, j.chain, j.target) for j in JUMPS} - {
        (j.table, j.chain, j.target) for j in missing
    }
    assert present == {
        ("filter", "OUTPUT", "PROXYD-SERVICES"),
        ("nat", "PREROUTING", "PROXYD-SERVICES"),
    }


def test_jumps_are_inserted_first_in_declared_order() -> None:
    text = render(node_plan(A), V4, CIDR, jumps=JUMPS).text
    tables = applied(text).tables
    assert [jump_target(r) for r in tables["filter"]["INPUT"]] == [
        "PROXYD-FIREWALL",  # the martian guard first: nothing may ACCEPT before it
        "PROXYD-PROXY-FIREWALL",
        "PROXYD-NODEPORTS",
        "PROXYD-EXTERNAL-SERVICES",
    ]
    assert [jump_target(r) for r in tables["nat"]["POSTROUTING"]] == ["PROXYD-POSTROUTING"]


def test_cleanup_removes_own_chains_and_jumps_only() -> None:
    text = render_cleanup(parse_save(SAVE), PROXYD.owns)
    assert '-D PREROUTING -m comment --comment "proxyd service portals" -j PROXYD-SERVICES' in text
    assert "-X PROXYD-SVC-BBBB" in text and "-X PROXYD-SERVICES" in text
    assert "KUBE" not in text


def test_cleanup_of_kube_proxy_spares_the_kubelet_chains() -> None:
    text = render_cleanup(parse_save(SAVE), KUBE_PROXY.owns)
    deleted = {ln[3:] for ln in text.splitlines() if ln.startswith("-X ")}
    assert deleted == {"KUBE-SERVICES", "KUBE-SVC-AAAA"}
    assert (
        '-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in text
    )


def test_cleanup_applies_cleanly_and_is_idempotent() -> None:
    tables = applied(render(node_plan(A, B), V4, CIDR, jumps=JUMPS).text)
    dump = "\n".join(
        line
        for name, chains in tables.tables.items()
        for line in [
            f"*{name}",
            *(f":{c} - [0:0]" for c in chains),
            *(f"-A {c} {r}" for c, rs in chains.items() for r in rs),
            "COMMIT",
        ]
    )
    tables.apply(render_cleanup(parse_save(dump), PROXYD.owns))
    assert tables.own() == {}
    assert all(rules == [] for chains in tables.tables.values() for rules in chains.values())
    assert render_cleanup(parse_save("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"), PROXYD.owns) == ""


def test_large_nft_payload_opens_with_a_chain_less_listing() -> None:
    many = [
        sp(
            f"s{i}",
            internal=[ep(f"10.244.{i}.{j}") for j in range(10)],
            cluster_ips=(f"10.96.0.{i}",),
        )
        for i in range(100)
    ]
    text = render(node_plan(*many), V4, CIDR, jumps=JUMPS, nft=True).text
    nat = text.split("*nat\n", 1)[1].splitlines()
    assert nat[:4] == [
        "-S",
        ":PREROUTING ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
    ]
    assert "-S\n" not in text.split("*nat")[0]
    assert "-S\n" not in render(node_plan(*many), V4, CIDR, jumps=JUMPS).text  # legacy
    assert "-S\n" not in render(node_plan(*many[:5]), V4, CIDR, nft=True).text  # small
    assert (
        applied(text).own()
        == applied(render(node_plan(*many), V4, CIDR, jumps=JUMPS).text).own()
    )


def test_cleanup_of_many_chains_on_nft_opens_with_a_listing() -> None:
    chains = "".join(f":PROXYD-SEP-{i:016d} - [0:0]\n" for i in range(1001))
    saved = parse_save(f"*nat\n{chains}COMMIT\n")
    assert render_cleanup(saved, PROXYD.owns, nft=True).startswith("*nat\n-S\n:PROXYD-SEP-")
    assert render_cleanup(saved, PROXYD.owns).startswith("*nat\n:PROXYD-SEP-")


def test_family_state_lists_its_chains() -> None:
    state = render(node_plan(A), V4, CIDR).state
    assert isinstance(state, FamilyState)
    assert state.chains() == set(render_service(A, V4, CIDR).chains)
