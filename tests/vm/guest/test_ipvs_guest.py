"""IPVS mode against a real IPVS kernel, with real packets between namespaces (VM only)."""

from __future__ import annotations

import collections
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NODES, ipvsadm, plan, service
from lab import C1_EXTRA, CLIENTS, CLIENTS6, NODE_IPS, PODS, connect, netns, udp_ask

from proxyd.backends.ipvs import IpvsBackend
from proxyd.backends.ipvs_plan import listing
from proxyd.model import NodePlan

VIP = "10.96.0.10"
VIP6 = "fd00:10:96::10"


def sync(backend: IpvsBackend, p: NodePlan, *, full: bool = False) -> None:
    result = backend.sync(p, full=full)
    assert result.ok, (result.error, result.detail)


def spread(n: int, ip: str = VIP, port: int = 80, client: str = "c1") -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        conn = connect(client, ip, port)
        seen[conn.pod] += 1
        conn.close()
    return seen


def normalized(text: str) -> list[str]:
    """ipvsadm -Ln without its header and connection counters, spaces collapsed."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] in ("IP", "Prot") or words[:2] == ["->", "RemoteAddress:Port"]:
            continue
        out.append(" ".join(words[:4] if words[0] == "->" else words))
    return out


def test_ipvsadm_shows_exactly_what_the_listing_predicted(backend: IpvsBackend) -> None:
    p = plan(
        service("web", VIP),
        service(
            "sticky",
            "10.96.0.11",
            annotations={"proxyd.io/ipvs-scheduler": "sh:fallback,port"},
            sessionAffinity="ClientIP",
        ),
        service("dns", "10.96.0.12", protocol="UDP", pods=("p2",)),
        service("np", "10.96.0.13", node_port=30080, pods=("p1",)),
        service("ext", "10.96.0.14", pods=("p3",), externalIPs=["10.250.0.10"]),
        service("empty", "10.96.0.15", pods=()),
    )
    sync(backend, p, full=True)
    assert normalized(ipvsadm()) == normalized(listing(p))


def test_rr_spreads_evenly_over_three_endpoints(backend: IpvsBackend) -> None:
    sync(backend, plan(service("web", VIP)), full=True)
    seen = spread(30)
    assert set(seen) == set(PODS)
    assert all(9 <= n <= 11 for n in seen.values()), seen


def test_lc_sends_a_new_connection_to_the_endpoint_with_fewest_active(backend: IpvsBackend) -> None:
    sync(
        backend,
        plan(service("web", VIP, annotations={"proxyd.io/ipvs-scheduler": "lc"})),
        full=True,
    )
    held = [connect("c1", VIP, 80) for _ in range(3)]
    assert {c.pod for c in held} == set(PODS)  # one each: lc fills the empty ones first
    try:
        for victim in ("p2", "p3", "p1"):
            conn = next(c for c in held if c.pod == victim)
            conn.close()
            held.remove(conn)
            time.sleep(0.2)  # the FIN reaches IPVS; the connection stops counting as active
            fresh = connect("c1", VIP, 80)
            assert fresh.pod == victim
            held.append(fresh)
    finally:
        for c in held:
            c.close()


def test_sh_pins_a_client_and_spreads_different_clients(backend: IpvsBackend) -> None:
    sync(
        backend,
        plan(service("web", VIP, annotations={"proxyd.io/ipvs-scheduler": "sh"})),
        full=True,
    )

    def pod_for(source: str) -> str:
        conn = connect("c1", VIP, 80, source=source)
        conn.close()
        return conn.pod

    assert len({pod_for(C1_EXTRA[0]) for _ in range(8)}) == 1
    by_client = {src: pod_for(src) for src in C1_EXTRA}
    assert len(set(by_client.values())) >= 2, by_client


def test_scheduler_change_updates_in_place_and_keeps_connections(backend: IpvsBackend) -> None:
    sync(backend, plan(service("web", VIP)), full=True)
    conn = connect("c1", VIP, 80)
    sync(backend, plan(service("web", VIP, annotations={"proxyd.io/ipvs-scheduler": "lc"})))
    assert f"TCP  {VIP}:80 lc" in ipvsadm()
    assert conn.echo(b"still") == b"still"
    conn.close()


def _hold_until(pod: str) -> list:
    """Open connections until one lands on ``pod``; returns them all (caller closes)."""
    held = []
    for _ in range(10):
        held.append(connect("c1", VIP, 80))
        if held[-1].pod == pod:
            return held
    raise AssertionError(f"no connection reached {pod}")


def test_removed_endpoint_drains_then_disappears(backend: IpvsBackend) -> None:
    sync(backend, plan(service("web", VIP)), full=True)
    held = _hold_until("p3")
    drained = held.pop()
    for c in held:
        c.close()
    sync(backend, plan(service("web", VIP, pods=("p1", "p2"))))
    assert f"-> {PODS['p3']}:8080 Masq 0" in normalized(ipvsadm())
    assert drained.echo(b"alive") == b"alive"
    assert "p3" not in spread(12)
    drained.close()
    deadline = time.monotonic() + 10
    while PODS["p3"] in ipvsadm() and time.monotonic() < deadline:
        time.sleep(0.3)
        sync(backend, plan(service("web", VIP, pods=("p1", "p2"))))
    assert PODS["p3"] not in ipvsadm()
    assert not backend.draining


def test_wrr_honours_the_weights_proxyd_sets(backend: IpvsBackend) -> None:
    wrr = {"proxyd.io/ipvs-scheduler": "wrr"}
    sync(backend, plan(service("web", VIP, annotations=wrr)), full=True)
    held = _hold_until("p3")
    sync(backend, plan(service("web", VIP, annotations=wrr, pods=("p1", "p2"))))  # p3 → weight 0
    seen = spread(20)
    assert seen["p3"] == 0 and abs(seen["p1"] - seen["p2"]) <= 1, seen
    for c in held:
        c.close()


def test_removed_udp_endpoint_goes_at_once(backend: IpvsBackend) -> None:
    sync(backend, plan(service("dns", VIP, protocol="UDP")), full=True)
    assert udp_ask("c1", VIP, 80)[0] in PODS
    sync(backend, plan(service("dns", VIP, protocol="UDP", pods=("p1",))))
    assert PODS["p3"] not in ipvsadm() and PODS["p2"] not in ipvsadm()


def test_restart_restores_weights_from_the_plan(backend: IpvsBackend) -> None:
    p = plan(service("web", VIP))
    sync(backend, p, full=True)
    subprocess.run(
        ["ipvsadm", "-e", "-t", f"{VIP}:80", "-r", f"{PODS['p1']}:8080", "-m", "-w", "0"],
        check=True,
    )
    sync(backend, p, full=True)  # a restart starts with a full sync
    assert normalized(ipvsadm()) == normalized(listing(p))


def test_dual_stack_cluster_ip_spreads_over_ipv6_endpoints(backend: IpvsBackend) -> None:
    p = plan(
        service("web", VIP, ipv6=VIP6, ipFamilyPolicy="RequireDualStack"),
        service("dns6", "fd00:10:96::12", protocol="UDP", pods=("p2",)),
    )
    sync(backend, p, full=True)
    assert normalized(ipvsadm()) == normalized(listing(p))
    seen = spread(30, VIP6)
    assert set(seen) == set(PODS) and all(9 <= n <= 11 for n in seen.values()), seen
    conn = connect("c1", VIP6, 80)
    assert conn.peer == CLIENTS6["c1"][0]  # IPv6 end to end, not masqueraded
    assert conn.echo(b"v6") == b"v6"
    conn.close()
    assert set(spread(6)) == set(PODS)  # the IPv4 cluster IP of the same service
    assert udp_ask("c1", "fd00:10:96::12", 80) == ("p2", CLIENTS6["c1"][0])


@pytest.mark.parametrize("protocol", ["TCP", "UDP"])
def test_load_balancer_source_ranges_admit_and_deny(backend: IpvsBackend, protocol: str) -> None:
    def lb(name: str, ip: str, lb_ip: str, source: str) -> list:
        return service(
            name,
            ip,
            pods=("p1",),
            protocol=protocol,
            type="LoadBalancer",
            loadBalancerSourceRanges=[source],
            status={"loadBalancer": {"ingress": [{"ip": lb_ip}]}},
        )

    def ask(client: str, ip: str) -> str:
        if protocol == "UDP":
            return udp_ask(client, ip, 80, timeout=1.0)[0]
        conn = connect(client, ip, 80, timeout=1.0)
        conn.close()
        return conn.pod

    c1_range = CLIENTS["c1"][0].rsplit(".", 1)[0] + ".0/24"
    p = plan(
        lb("lb-in", VIP, "192.0.2.20", c1_range),
        lb("lb-out", "10.96.0.11", "192.0.2.21", "198.51.100.0/24"),
    )
    sync(backend, p, full=True)
    assert ask("c1", "192.0.2.20") == "p1"
    for client, ip in (("c2", "192.0.2.20"), ("c1", "192.0.2.21")):
        with pytest.raises(TimeoutError):  # dropped: no answer, no connection
            ask(client, ip)
    assert ask("c2", VIP) == "p1"  # the ranges limit the load-balancer IP only


def test_load_balancer_source_range_of_everything_admits_every_client(
    backend: IpvsBackend,
) -> None:
    """0.0.0.0/0 is a valid source range (the API allows it) but no ipset net entry: the
    kernel refuses a /0 in hash:ip,port,net, which used to fail every sync."""
    svc = service(
        "lb-all",
        VIP,
        pods=("p1",),
        type="LoadBalancer",
        loadBalancerSourceRanges=["0.0.0.0/0"],
        status={"loadBalancer": {"ingress": [{"ip": "192.0.2.30"}]}},
    )
    sync(backend, plan(svc), full=True)
    for client in CLIENTS:
        conn = connect(client, "192.0.2.30", 80, timeout=1.0)
        assert conn.pod == "p1"
        conn.close()


def test_node_port_masquerades_and_local_policy_keeps_the_client_address(
    backend: IpvsBackend,
) -> None:
    sync(
        backend,
        plan(
            service("np", VIP, node_port=30080),
            service("local", "10.96.0.11", node_port=30081, externalTrafficPolicy="Local"),
        ),
        full=True,
    )
    cluster = connect("c1", NODE_IPS[0], 30080)
    assert cluster.peer != "10.255.1.2"  # masqueraded by the node
    cluster.close()
    local = [connect("c1", NODE_IPS[0], 30081) for _ in range(4)]
    assert {(c.pod, c.peer) for c in local} == {("p1", "10.255.1.2")}  # only p1 is on node-a
    for c in local:
        c.close()


def test_sctp_node_port_masquerades_and_local_policy_keeps_the_client_address(
    backend: IpvsBackend,
) -> None:
    """The kernel finds no port in an SCTP packet for a ``bitmap:port`` set (only TCP and
    UDP), so SCTP NodePorts need a ``hash:ip,port`` set, or the masquerade rule never fires
    and the pod sees the client."""
    client = CLIENTS["c1"][0]
    sync(
        backend,
        plan(
            service("np", VIP, node_port=30082, protocol="SCTP"),
            service(
                "local",
                "10.96.0.11",
                node_port=30083,
                protocol="SCTP",
                externalTrafficPolicy="Local",
            ),
        ),
        full=True,
    )
    direct = connect("c1", VIP, 80, source=client, sctp=True)  # SCTP through IPVS at all
    assert direct.peer == client and direct.echo(b"sctp") == b"sctp"
    direct.close()
    cluster = connect("c1", NODE_IPS[0], 30082, source=client, sctp=True)
    cluster.close()
    counters = subprocess.run(
        ["iptables-nft", "-t", "nat", "-nvL", "PROXYD-IPVS-NODE-PORT"],
        capture_output=True,
        text=True,
    ).stdout
    assert cluster.peer == "10.244.1.1", counters  # masqueraded to the node's pod-side address
    local = [connect("c1", NODE_IPS[0], 30083, source=client, sctp=True) for _ in range(3)]
    assert {(c.pod, c.peer) for c in local} == {("p1", client)}  # only p1 is on node-a
    for c in local:
        c.close()


def test_external_ip_reaches_external_endpoints(backend: IpvsBackend) -> None:
    sync(
        backend,
        plan(service("ext", VIP, externalIPs=["10.250.0.10"], externalTrafficPolicy="Local")),
        full=True,
    )
    assert set(spread(4, "10.250.0.10")) == {"p1"}
    assert set(spread(6)) == set(PODS)  # cluster IP traffic is not limited to local ones


def test_local_policy_without_local_endpoints_drops_external_traffic(backend: IpvsBackend) -> None:
    sync(
        backend,
        plan(service("np", VIP, node_port=30080, pods=("p2",), externalTrafficPolicy="Local")),
        full=True,
    )
    with pytest.raises(TimeoutError):
        connect("c1", NODE_IPS[0], 30080, timeout=1.0)
    assert set(spread(2)) == {"p2"}


def test_service_without_endpoints_is_rejected(backend: IpvsBackend) -> None:
    sync(backend, plan(service("empty", VIP, pods=())), full=True)
    with pytest.raises(ConnectionRefusedError):
        connect("c1", VIP, 80, timeout=3.0)


def test_topology_filtered_plan_keeps_traffic_in_the_pool(backend: IpvsBackend) -> None:
    scoped = {"openyurt.io/topologyKeys": "openyurt.io/nodepool"}
    sync(backend, plan(service("web", VIP, annotations=scoped)), full=True)
    assert set(spread(9)) == {"p1", "p2"}  # p3 is in pool west


def test_unknown_scheduler_falls_back_with_a_warning(backend: IpvsBackend) -> None:
    result = backend.sync(
        plan(service("web", VIP, annotations={"proxyd.io/ipvs-scheduler": "fastest"})), full=True
    )
    assert result.ok and [r for r, _ in result.warnings] == ["unknown_scheduler"]
    assert f"TCP  {VIP}:80 rr" in ipvsadm()


#: the node's ARP sysctls: the guest's root namespace is the node, and proxyd writes there
ARP_SYSCTLS = tuple(Path("/proc/sys/net/ipv4/conf/all", n) for n in ("arp_ignore", "arp_announce"))


@pytest.fixture
def arp_defaults() -> Iterator[None]:
    """The node starts with the kernel's defaults (answer ARP for any local address on any
    link) and gets its own values back afterwards."""
    saved = [p.read_text() for p in ARP_SYSCTLS]
    for p in ARP_SYSCTLS:
        p.write_text("0")
    yield
    for p, value in zip(ARP_SYSCTLS, saved, strict=True):
        p.write_text(value)


def arp_answered(client: str, ip: str) -> bool:
    """Whether one ARP request for ``ip`` from ``client``'s link gets a reply within 1 s
    (busybox arping exits 0 on a reply, 1 without)."""
    argv = ["busybox", "arping", "-c", "1", "-w", "1", "-I", "eth0", "-s", CLIENTS[client][0], ip]
    run = subprocess.run(
        ["ip", "netns", "exec", client, *argv], capture_output=True, text=True, timeout=30
    )
    assert run.returncode in (0, 1), (run.stdout, run.stderr)
    return run.returncode == 0


@pytest.mark.parametrize(
    ("backend", "strict"),
    [pytest.param({"strict_arp": True}, True, id="strict"), pytest.param({}, False, id="default")],
    indirect=["backend"],
)
def test_strict_arp_stops_the_node_answering_arp_for_service_addresses(
    arp_defaults: None, backend: IpvsBackend, strict: bool
) -> None:
    lb = "10.255.1.100"  # a MetalLB (L2) address on c1's own segment
    ingress = {"loadBalancer": {"ingress": [{"ip": lb}]}}
    sync(backend, plan(service("web", VIP, type="LoadBalancer", status=ingress)), full=True)
    # both addresses sit on proxyd-ipvs0; without strict ARP the node claims them on c1's link
    assert {ip for ip in (VIP, lb) if arp_answered("c1", ip)} == (set() if strict else {VIP, lb})
    assert arp_answered("c1", NODE_IPS[0])  # the node's own address on that link still answers
    assert [p.read_text().strip() for p in ARP_SYSCTLS] == (["1", "2"] if strict else ["0", "0"])
    assert set(spread(3)) == set(PODS)  # routed service traffic needs no ARP for the VIP


def test_foreign_virtual_servers_are_never_touched(backend: IpvsBackend) -> None:
    subprocess.run(["ipvsadm", "-A", "-t", "10.99.0.1:80", "-s", "wlc"], check=True)
    subprocess.run(["ipvsadm", "-A", "-t", f"{NODE_IPS[0]}:31000", "-s", "wlc"], check=True)
    try:
        sync(backend, plan(service("web", VIP, node_port=30080)), full=True)
        sync(backend, plan(), full=True)
        backend.cleanup()
        out = ipvsadm()
        assert "10.99.0.1:80 wlc" in out and f"{NODE_IPS[0]}:31000 wlc" in out
        assert VIP not in out and ":30080" not in out
    finally:
        subprocess.run(["ipvsadm", "-C"], check=True)


def test_apply_command_programs_what_plan_format_ipvs_prints(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from proxyd.cli import main

    docs = [
        *NODES,
        *service("web", VIP, annotations={"proxyd.io/ipvs-scheduler": "sh:port"}),
        *service("np", "10.96.0.11", node_port=30080, pods=("p1", "p2")),
    ]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    args = ["--manifests", str(path), "--node", "node-a"]
    real = IpvsBackend.real()  # both families, as apply uses: its cleanup removes it all
    try:
        assert main(["apply", "--proxy-mode", "ipvs", *args]) == 0
        assert main(["plan", "--format", "ipvs", *args]) == 0
        predicted = capsys.readouterr().out.split("\n", 1)[1]  # after apply's summary line
        assert "sh (sh-port)" in predicted
        assert normalized(ipvsadm()) == normalized(predicted)
        assert main(["apply", "--proxy-mode", "ipvs", "--ipvs-scheduler", "lc", *args]) == 0
        assert f"TCP  {NODE_IPS[0]}:30080 lc" in ipvsadm()
    finally:
        real.cleanup()


def _in(ns: str, *argv: str) -> str:
    run = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, (argv, run.stderr)
    return run.stdout


def _kernel_state(ns: str) -> dict[str, set[str]]:
    """Virtual servers, ipsets, iptables chains (nft and legacy, both families), links."""
    chains = {
        line[1:].split()[0]
        for tool in ("iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy")
        for line in _in(ns, f"{tool}-save").splitlines()
        if line.startswith(":")
    }
    servers = [w for w in map(str.split, _in(ns, "ipvsadm", "-Ln").splitlines()) if w]
    links = [line.split(":")[1] for line in _in(ns, "ip", "-o", "link").splitlines()]
    return {
        "vs": {" ".join(w[:2]) for w in servers if w[0] in ("TCP", "UDP", "SCTP")},
        "sets": set(_in(ns, "ipset", "list", "-n").split()),
        "chains": chains - {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"},
        "links": {name.strip().split("@")[0] for name in links},
    }


def test_cleanup_command_removes_proxyd_state_and_keeps_foreign_state(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    import yaml

    from proxyd.cli import main
    from proxyd.sandbox.netns import ip_batch

    ns = "pxvm-cleanup"
    manifest = tmp_path / "m.yaml"
    docs = [*NODES, *service("web", VIP), *service("np", "10.96.0.11", node_port=30080)]
    manifest.write_text(yaml.safe_dump_all(docs))
    ip_batch([f"netns add {ns}"])
    try:
        ip_batch(["link set lo up"], ns)
        with netns(ns):
            apply = ["apply", "--proxy-mode", "ipvs", "--manifests", str(manifest)]
            assert main([*apply, "--node", "node-a"]) == 0
        # foreign state next to proxyd's: someone else's, and kube-proxy's leftovers
        _in(ns, "ipvsadm", "-A", "-t", "10.99.0.1:80", "-s", "wlc")
        _in(ns, "ipvsadm", "-A", "-t", f"{NODE_IPS[0]}:31000", "-s", "wlc")
        _in(ns, "ipset", "create", "FOREIGN-SET", "hash:ip")
        _in(ns, "ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port")
        _in(ns, "iptables-nft", "-t", "nat", "-N", "FOREIGN-CHAIN")
        _in(ns, "iptables-nft", "-t", "nat", "-N", "KUBE-SERVICES")
        ip_batch(["link add kube-ipvs0 type dummy", "link add foreign0 type dummy"], ns)
        # kube-proxy's virtual servers: a service IP on kube-ipvs0, a NodePort on a node
        # address; its set also lists proxyd's NodePort (both serve it mid-migration); an
        # SCTP NodePort, whose set holds node address and port: the same port on the
        # other node address is not kube-proxy's
        ip_batch(
            [
                "addr add 10.96.0.50/32 dev kube-ipvs0",
                *(f"addr add {ip}/32 dev foreign0" for ip in NODE_IPS),
            ],
            ns,
        )
        _in(ns, "ipset", "create", "KUBE-NODE-PORT-TCP", "bitmap:port", "range", "0-65535")
        for port in ("30090", "30080"):
            _in(ns, "ipset", "add", "KUBE-NODE-PORT-TCP", port)
        _in(ns, "ipset", "create", "KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port")
        _in(ns, "ipset", "add", "KUBE-NODE-PORT-SCTP-HASH", f"{NODE_IPS[0]},sctp:30100")
        kube = {"TCP 10.96.0.50:443", f"TCP {NODE_IPS[0]}:30090", f"SCTP {NODE_IPS[0]}:30100"}
        flag = {"TCP": "-t", "SCTP": "--sctp-service"}
        for server in (*kube, f"SCTP {NODE_IPS[1]}:30100"):
            proto, address = server.split()
            _in(ns, "ipvsadm", "-A", flag[proto], address, "-s", "rr")
        mine = _kernel_state(ns)
        assert kube <= mine["vs"]
        assert {f"TCP {VIP}:80", f"TCP {NODE_IPS[0]}:30080"} <= mine["vs"]
        assert "proxyd-ipvs0" in mine["links"]
        assert any(s.startswith("PROXYD-") for s in mine["sets"])
        assert any(c.startswith("PROXYD-IPVS-") for c in mine["chains"])

        capsys.readouterr()
        with netns(ns):  # the migration step: kube-proxy's leftovers only
            assert main(["cleanup", "--kube-proxy-only"]) == 0
        assert "IPVS: kube-proxy's virtual servers: removed 3" in capsys.readouterr().out
        kept = _kernel_state(ns)
        assert kept == {
            "vs": mine["vs"] - kube,
            "sets": mine["sets"]
            - {"KUBE-CLUSTER-IP", "KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-SCTP-HASH"},
            "chains": mine["chains"] - {"KUBE-SERVICES"},
            "links": mine["links"] - {"kube-ipvs0"},
        }

        out = _in(ns, sys.executable, "-m", "proxyd", "cleanup")
        gone = _kernel_state(ns)
        assert gone == {
            "vs": {"TCP 10.99.0.1:80", f"TCP {NODE_IPS[0]}:31000", f"SCTP {NODE_IPS[1]}:30100"},
            "sets": {"FOREIGN-SET"},
            "chains": {c for c in kept["chains"] if not c.startswith("PROXYD-")},
            "links": kept["links"] - {"proxyd-ipvs0"},
        }, out
        assert "FOREIGN-CHAIN" in gone["chains"] and "foreign0" in gone["links"]
        assert "IPVS: proxyd's virtual servers removed" in out

        capsys.readouterr()
        with netns(ns):  # idempotent
            assert main(["cleanup"]) == 0
        assert _kernel_state(ns) == gone
        again = capsys.readouterr().out
        assert "ipsets: nothing to remove" in again and "devices: nothing to remove" in again
    finally:
        ip_batch([f"netns del {ns}"])
