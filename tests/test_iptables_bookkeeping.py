"""IptablesBackend bookkeeping when one family's restore fails after another's went in.

IPv4 is restored first; when IPv6's restore then fails (xtables lock timeout, missing
module), the IPv4 rules are already in the kernel and the backend's IPv4 state records
them. The UDP conntrack entries to endpoints that IPv4 restore removed must still go:
the following full sync diffs against that new IPv4 state and no longer sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from proxyd.backends.commands_runner import CompletedRun
from proxyd.backends.conntrack import ConntrackCleaner
from proxyd.backends.iptables import IptablesBackend, Variant
from proxyd.backends.iptables_render import RenderOptions
from proxyd.model import Protocol
from tests.builders import ep, node_plan, sp

DNS = sp(
    "dns",
    port_name="dns",
    protocol=Protocol.UDP,
    port=53,
    cluster_ips=("10.96.0.53", "fd00:96::53"),
    internal=[ep("10.244.1.4", 53), ep("10.244.1.5", 53), ep("fd00:244::4", 53),
              ep("fd00:244::5", 53)],
)
#: Both families change: each gets a restore.
DNS2 = replace(DNS, internal=DNS.internal[::2], external=DNS.internal[::2])


@dataclass
class Runner:
    """Succeeds at everything except ip6tables restores while ``fail_v6`` is set."""

    fail_v6: bool = False
    calls: list[list[str]] = field(default_factory=list)

    def run(self, argv: Sequence[str], stdin: bytes = b"") -> CompletedRun:
        self.calls.append(list(argv))
        if argv[0] == "ip6tables-nft-restore" and self.fail_v6:
            return CompletedRun(4, "", "ip6tables-restore: Another app is currently holding "
                                "the xtables lock. Stopped waiting after 5s.\n")
        return CompletedRun(0, "")

    def conntrack_deletes(self) -> list[str]:
        return [argv[-1] for argv in self.calls if argv[0] == "conntrack"]


def test_udp_endpoint_removed_by_the_ipv4_restore_is_cleaned_when_ipv6_then_fails() -> None:
    runner = Runner()
    be = IptablesBackend(runner, Variant.NFT, options=RenderOptions(),
                         conntrack=ConntrackCleaner(runner))
    assert be.sync(node_plan(DNS), full=True).ok
    runner.fail_v6 = True
    assert not be.sync(node_plan(DNS2), full=False).ok
    runner.fail_v6 = False
    assert be.sync(node_plan(DNS2), full=False).ok
    assert sorted(runner.conntrack_deletes()) == ["10.244.1.5", "fd00:244::5"]
