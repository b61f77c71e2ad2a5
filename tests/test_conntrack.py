"""conntrack: which UDP entries a plan change makes stale, and how they are deleted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from proxyd.backends.commands_runner import CompletedRun
from proxyd.backends.conntrack import ConntrackCleaner, StaleFlow, stale_udp_flows
from proxyd.errors import BackendError
from proxyd.model import IPFamily, Protocol, ServicePlan
from tests.builders import ep, sp

V4, V6 = IPFamily.IPV4, IPFamily.IPV6
A, B = ep("10.244.1.2", 53), ep("10.244.1.3", 53)
DNS = sp(
    "dns",
    protocol=Protocol.UDP,
    port=53,
    internal=[A, B],
    cluster_ips=("10.96.0.53", "fd00:10:96::53"),
    external_ips=("192.0.2.53",),
    node_port=30053,
)


def flows(before: Sequence[ServicePlan], after: Sequence[ServicePlan]) -> set[StaleFlow]:
    return set(stale_udp_flows({s.key: s for s in before}, {s.key: s for s in after}))


def without_b(s: ServicePlan) -> ServicePlan:
    return replace(s, internal=(A,), external=(A,))


def test_endpoint_leaving_deletes_its_flows_per_service_address_and_node_port() -> None:
    assert flows([DNS], [without_b(DNS)]) == {
        StaleFlow(V4, "10.96.0.53", 53, B.ip),
        StaleFlow(V4, "192.0.2.53", 53, B.ip),
        StaleFlow(V4, None, 30053, B.ip),
    }


def test_endpoint_leaving_the_short_circuit_set_deletes_its_flows() -> None:
    """Both traffic policies Local: B is reached only through ``cluster`` (this node's pods
    to the external IP), so its going must clean those flows too."""
    local_only = replace(DNS, internal=(A,), external=(A,), cluster=(A, B))
    assert StaleFlow(V4, "192.0.2.53", 53, B.ip) in flows([local_only], [without_b(DNS)])


def test_a_destination_the_port_loses_drops_its_flows_even_to_kept_endpoints() -> None:
    """A Service recreated with a new cluster IP over the same pods: the old address may
    go to another service, so entries to it must not keep steering clients here."""
    moved = replace(DNS, port=replace(DNS.port, cluster_ips=("10.96.0.54", "fd00:10:96::53"),
                                      node_port=30054))
    assert flows([DNS], [moved]) == {
        StaleFlow(V4, "10.96.0.53", 53, A.ip),
        StaleFlow(V4, "10.96.0.53", 53, B.ip),
        StaleFlow(V4, None, 30053, A.ip),
        StaleFlow(V4, None, 30053, B.ip),
    }


def test_service_losing_all_endpoints_deletes_flows_to_each_of_them() -> None:
    empty = replace(DNS, internal=(), external=())
    assert {f.reply_src for f in flows([DNS], [empty])} == {A.ip, B.ip}
    assert {f.reply_src for f in flows([DNS], [])} == {A.ip, B.ip}


def test_service_getting_its_first_endpoint_deletes_un_natted_flows_to_its_addresses() -> None:
    empty = replace(DNS, internal=(), external=())
    assert flows([empty], [DNS]) == {
        StaleFlow(V4, "10.96.0.53", 53, "10.96.0.53"),
        StaleFlow(V6, "fd00:10:96::53", 53, "fd00:10:96::53"),
        StaleFlow(V4, "192.0.2.53", 53, "192.0.2.53"),
    }


def test_ipv6_endpoint_only_pairs_with_ipv6_addresses() -> None:
    v6 = ep("fd00:10:244:1::2", 53)
    dual = replace(DNS, internal=(A, v6), external=(A, v6))
    assert flows([dual], [without_b(DNS)]) == {
        StaleFlow(V6, "fd00:10:96::53", 53, v6.ip),
        StaleFlow(V6, None, 30053, v6.ip),
    }


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param([DNS], [DNS], id="unchanged"),
        pytest.param([DNS], [replace(DNS, external=(A,))], id="endpoint-still-used-internally"),
        pytest.param([sp(internal=[A, B])], [sp(internal=[A])], id="tcp-has-no-stale-entries"),
    ],
)
def test_nothing_to_delete(before: list[ServicePlan], after: list[ServicePlan]) -> None:
    assert flows(before, after) == set()


def test_keys_limit_the_services_looked_at() -> None:
    other = replace(DNS, port=replace(DNS.port, key=replace(DNS.key, port_name="other")))
    got = stale_udp_flows(
        {DNS.key: DNS, other.key: other},
        {DNS.key: without_b(DNS), other.key: without_b(other)},
        keys=[other.key],
    )
    assert {f.reply_src for f in got} == {B.ip} and len(got) == 3


def test_argv_names_the_address_and_port_never_flushes() -> None:
    assert StaleFlow(V6, None, 30053, "fd00::2").argv() == [
        "conntrack", "-D", "-f", "ipv6", "-p", "udp",
        "--orig-port-dst", "30053", "--reply-src", "fd00::2",
    ]  # fmt: skip


class Runner:
    def __init__(self, *results: CompletedRun | BackendError) -> None:
        self.results = list(results)
        self.argvs: list[list[str]] = []

    def run(self, argv: Sequence[str], stdin: bytes = b"") -> CompletedRun:
        self.argvs.append(list(argv))
        result = self.results.pop(0)
        if isinstance(result, BackendError):
            raise result
        return result


def test_cleaner_reports_failures_but_not_empty_deletions() -> None:
    nothing = CompletedRun(1, "", "conntrack v1.4.7: 0 flow entries have been deleted.\n")
    broken = CompletedRun(1, "", "conntrack v1.4.7: Operation failed: invalid parameters\n")
    runner = Runner(nothing, broken, BackendError("cannot run conntrack"))
    flow = StaleFlow(V4, "10.96.0.53", 53, A.ip)
    errors = ConntrackCleaner(runner).delete([flow, flow, flow])
    assert len(runner.argvs) == 3
    assert len(errors) == 2
    assert "invalid parameters" in errors[0] and "cannot run conntrack" in errors[1]
