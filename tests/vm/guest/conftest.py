"""Fixtures for IPVS tests inside the VM: the lab network, a backend, plan builders."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from lab import NODE_IPS, PODS, PODS6, Lab

from proxyd.backends.commands_runner import SubprocessRunner
from proxyd.backends.iptables import Variant
from proxyd.backends.ipvs import IpvsBackend
from proxyd.backends.ipvs_netlink import NetlinkIpvsClient
from proxyd.model import IPFamily, NodePlan
from proxyd.plan import build_plan
from proxyd.sources import translate
from tests import builders as b

#: p1 runs on this node (node-a, pool east), p2 on node-b (east), p3 on node-c (west)
PODNODES = {"p1": "node-a", "p2": "node-b", "p3": "node-c"}
NODES = (
    b.node_obj("node-a", pool="east", internal_ips=NODE_IPS),
    b.node_obj("node-b", pool="east"),
    b.node_obj("node-c", pool="west"),
)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not os.path.exists("/proc/net/ip_vs"):
        raise pytest.UsageError("no IPVS in this kernel: run these through tests/vm/run.sh")


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    lab = Lab()
    lab.build()
    yield lab
    lab.close()


@pytest.fixture
def backend(lab: Lab, request: pytest.FixtureRequest) -> Iterator[IpvsBackend]:
    """A dual-stack backend on the guest's root namespace (the node); indirect
    parametrization passes extra IpvsBackend keywords (e.g. ``strict_arp``)."""
    client = NetlinkIpvsClient()
    be = IpvsBackend(
        client,
        SubprocessRunner(),
        variant=Variant.NFT,
        families=tuple(IPFamily),  # a dual-stack node
        clock=time.monotonic,
        drain_timeout=60,
        **getattr(request, "param", {}),
    )
    yield be
    be.cleanup()
    client.close()


def service(
    name: str,
    ip: str,
    *,
    pods: tuple[str, ...] = ("p1", "p2", "p3"),
    annotations: dict[str, str] | None = None,
    node_port: int | None = None,
    protocol: str = "TCP",
    ipv6: str | None = None,
    **spec: Any,
) -> list[Any]:
    """Raw Service + EndpointSlice objects: port 80 (→ 8080) backed by ``pods``; one
    slice per family of the cluster IPs (``ip`` of either family, ``ipv6`` a second one:
    dual-stack)."""
    port = b.port_obj(80, protocol=protocol, **({"nodePort": node_port} if node_port else {}))
    svc = b.svc_obj(
        name,
        cluster_ip=ip,
        ports=[port],
        annotations=annotations,
        svc_type="NodePort" if node_port else None,
        **({"clusterIPs": [ip, ipv6]} if ipv6 else {}),
        **spec,
    )
    slices = [
        b.slice_obj(
            name,
            [b.ep_obj(addrs[p], node=PODNODES[p]) for p in pods],
            name=f"{name}-{family}",
            address_type=family,
            ports=[b.port_obj(8080, protocol=protocol)],
        )
        for family, addrs in (("IPv4", PODS), ("IPv6", PODS6))
        if any((":" in a) == (family == "IPv6") for a in (ip, ipv6) if a)
    ]
    return [svc, *slices]


def plan(*groups: list[Any]) -> NodePlan:
    """The real pipeline: translate raw objects, snapshot, plan for node-a."""
    objs = [translate.translate_object(o) for o in (*NODES, *(o for g in groups for o in g))]
    return build_plan(b.snapshot(*(o for o in objs if o is not None)), "node-a")


def ipvsadm() -> str:
    return subprocess.run(["ipvsadm", "-Ln"], capture_output=True, text=True, check=True).stdout
