"""IptablesBackend against a fake CommandRunner: full vs partial, failures, detection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from proxyd.backends.commands_runner import CompletedRun
from proxyd.backends.conntrack import ConntrackCleaner
from proxyd.backends.iptables import (
    ROUTE_LOCALNET,
    IptablesBackend,
    Variant,
    choose_variant,
    detect_variant,
    remove_chains,
    resolve_variant,
    restore_failure,
)
from proxyd.backends.iptables_render import JUMPS, RenderOptions, chain_name
from proxyd.errors import BackendError
from proxyd.model import IPFamily, NodePlan, Protocol
from tests.builders import ep, node_plan, sp

STALE = chain_name("PROXYD-SVC-", "default", "gone", "http", "TCP")
NAT_SAVE = f"""\
*nat
:PREROUTING ACCEPT [0:0]
:PROXYD-SERVICES - [0:0]
:{STALE} - [0:0]
-A PREROUTING -m comment --comment "proxyd service portals" -j PROXYD-SERVICES
COMMIT
"""
LEGACY_ERROR = (
    "iptables-restore v1.8.9 (legacy): Couldn't load target `NOPE':No such file or directory\n"
    "\nError occurred at line: 3\nTry `iptables-restore -h' for more information.\n"
)


@dataclass
class FakeRunner:
    """Records every command; answers from ``outputs`` (argv prefix → stdout); fails the
    next ``fail_restores`` restores with ``LEGACY_ERROR``."""

    outputs: Mapping[str, str] = field(default_factory=dict)
    fail_restores: int = 0
    missing: frozenset[str] = frozenset()
    calls: list[tuple[list[str], str]] = field(default_factory=list)

    def run(self, argv: Sequence[str], stdin: bytes = b"") -> CompletedRun:
        self.calls.append((list(argv), stdin.decode()))
        if argv[0] in self.missing:
            raise BackendError(f"cannot run {argv[0]}")
        if argv[0].endswith("-restore") and self.fail_restores:
            self.fail_restores -= 1
            return CompletedRun(2, "", LEGACY_ERROR)
        line = " ".join(argv)
        for prefix, out in self.outputs.items():
            if line.startswith(prefix):
                return CompletedRun(0, out)
        return CompletedRun(0, "")

    def commands(self) -> list[str]:
        return [argv[0] for argv, _ in self.calls]

    def restores(self) -> list[tuple[list[str], str]]:
        return [(argv, stdin) for argv, stdin in self.calls if argv[0].endswith("-restore")]

    def clear(self) -> None:
        self.calls.clear()


WEB = sp(internal=[ep("10.244.1.2"), ep("10.244.1.3")])
DNS = sp(
    "dns",
    port_name="dns",
    protocol=Protocol.UDP,
    port=53,
    cluster_ips=("10.96.0.53",),
    internal=[ep("10.244.1.4", 53), ep("10.244.1.5", 53)],
)


def backend(runner: FakeRunner, **kwargs: Any) -> IptablesBackend:
    return IptablesBackend(
        runner, Variant.NFT, options=RenderOptions(cluster_cidrs=("10.244.0.0/16",)), **kwargs
    )


def test_first_sync_is_full_reads_the_kernel_and_deletes_leftovers() -> None:
    runner = FakeRunner(outputs={"iptables-nft-save -t nat": NAT_SAVE})
    result = backend(runner).sync(node_plan(WEB), full=False)
    assert result.ok and result.full
    assert result.written == {WEB.key}
    assert runner.commands() == [
        "iptables-nft-save",
        "iptables-nft-save",
        "iptables-nft-restore",
        "ip6tables-nft-save",
        "ip6tables-nft-save",
        "ip6tables-nft-restore",
    ]
    (argv, text), _ = runner.restores()
    assert argv == ["iptables-nft-restore", "-w", "5", "--noflush"]
    assert f"-X {STALE}" in text
    inserted = {ln.rsplit(" -j ", 1)[1] for ln in text.splitlines() if ln.startswith("-I ")}
    assert "-I PREROUTING" not in text  # already there
    assert inserted == {j.target for j in JUMPS if j.chain != "PREROUTING"}
    assert result.rules["nat"] > 0 and result.rules["filter"] > 0


def test_second_sync_is_partial_and_writes_only_the_changed_service() -> None:
    runner = FakeRunner()
    be = backend(runner)
    be.sync(node_plan(WEB, DNS), full=True)
    runner.clear()
    web2 = replace(WEB, internal=WEB.internal[:1], external=WEB.internal[:1])
    result = be.sync(node_plan(web2, DNS), full=False)
    assert result.ok and not result.full
    assert result.written == {WEB.key}
    assert runner.commands() == ["iptables-nft-restore"]  # nothing to do for IPv6
    ((_, text),) = runner.restores()
    assert "PROXYD-SVC-CPPOUM3HC4PKIZHX" in text and "default/dns" not in text


def test_unchanged_plan_runs_no_command() -> None:
    runner = FakeRunner()
    be = backend(runner)
    be.sync(node_plan(WEB), full=True)
    runner.clear()
    result = be.sync(node_plan(WEB), full=False)
    assert result.ok and result.written == frozenset() and runner.calls == []


def test_failed_restore_keeps_state_reports_context_and_forces_full() -> None:
    runner = FakeRunner()
    be = backend(runner)
    be.sync(node_plan(WEB), full=True)
    runner.clear()
    runner.fail_restores = 1
    web2 = replace(WEB, internal=WEB.internal[:1], external=WEB.internal[:1])
    failed = be.sync(node_plan(web2, DNS), full=False)
    assert not failed.ok
    assert failed.error is not None and "Couldn't load target" in failed.error
    ((_, text),) = runner.restores()
    assert f">      3  {text.splitlines()[2]}" in failed.detail
    runner.clear()
    retry = be.sync(node_plan(web2, DNS), full=False)
    assert retry.ok and retry.full
    assert "iptables-nft" in runner.commands()  # lists built-in chains for jump rules
    assert retry.written == {WEB.key, DNS.key}
    runner.clear()
    assert be.sync(node_plan(web2, DNS), full=False).full is False


def test_full_resync_reinserts_only_missing_jumps() -> None:
    listing = '-P PREROUTING ACCEPT\n-A PREROUTING -m comment --comment "x" -j PROXYD-SERVICES\n'
    runner = FakeRunner(outputs={"iptables-nft -w 5 -t nat -S PREROUTING": listing})
    be = backend(runner, families=(IPFamily.IPV4,))
    be.sync(node_plan(WEB), full=True)
    runner.clear()
    be.sync(node_plan(WEB), full=True)
    listed = [(argv[4], argv[6]) for argv, _ in runner.calls if argv[0] == "iptables-nft"]
    assert sorted(listed) == sorted({(j.table, j.chain) for j in JUMPS})
    ((_, text),) = runner.restores()
    assert "-I PREROUTING" not in text and "-I POSTROUTING 1" in text


def test_missing_binary_is_a_failed_sync_not_a_crash() -> None:
    runner = FakeRunner(missing=frozenset({"iptables-nft-save"}))
    result = backend(runner).sync(node_plan(WEB), full=True)
    assert not result.ok and result.error is not None and "iptables-nft-save" in result.error


def test_udp_endpoint_removed_deletes_its_conntrack_entries_after_the_restore() -> None:
    runner = FakeRunner()
    be = backend(runner, families=(IPFamily.IPV4,), conntrack=ConntrackCleaner(runner))
    be.sync(node_plan(WEB, DNS), full=True)
    assert "conntrack" not in runner.commands()  # never on the first sync after start
    runner.clear()
    dns2 = replace(DNS, internal=DNS.internal[:1], external=DNS.internal[:1])
    assert be.sync(node_plan(WEB, dns2), full=False).ok
    assert runner.commands() == ["iptables-nft-restore", "conntrack"]
    assert runner.calls[1][0] == [
        "conntrack",
        "-D",
        "-f",
        "ipv4",
        "-p",
        "udp",
        "--orig-dst",
        "10.96.0.53",
        "--orig-port-dst",
        "53",
        "--reply-src",
        "10.244.1.5",
    ]


def test_cleanup_removes_chains_of_each_family() -> None:
    runner = FakeRunner(outputs={"iptables-nft-save": NAT_SAVE})
    be = backend(runner)
    be.cleanup()
    ((argv, text),) = runner.restores()
    assert argv[0] == "iptables-nft-restore"
    assert "-X PROXYD-SERVICES" in text and "-D PREROUTING" in text
    assert not remove_chains(FakeRunner(), Variant.LEGACY, IPFamily.IPV6)


@pytest.mark.parametrize(
    ("stderr", "bad"),
    [
        pytest.param(LEGACY_ERROR, 3, id="legacy"),
        pytest.param(
            "iptables-nft-restore: Chain 'X' does not exist\nError occurred at line: 5\n",
            5,
            id="nft",
        ),
        pytest.param("iptables-restore: line 1 failed\n", 1, id="line-n-failed"),
    ],
)
def test_restore_failure_shows_lines_around_the_bad_one(stderr: str, bad: int) -> None:
    text = "".join(f"line{n}\n" for n in range(1, 11))
    error, detail = restore_failure(text, CompletedRun(2, "", stderr))
    assert error.startswith("iptables-restore failed (exit 2): ")
    marked = [ln for ln in detail.splitlines() if ln.startswith(">")]
    assert marked == [f">{bad:7d}  line{bad}"]
    assert len(detail.splitlines()) <= 7


def test_restore_failure_without_line_number_keeps_stderr() -> None:
    error, detail = restore_failure("x\n", CompletedRun(4, "", "Another app holds the lock\n"))
    assert "Another app holds the lock" in error and detail == "Another app holds the lock"


# --- variant detection -----------------------------------------------------------------

HINT = ":KUBE-IPTABLES-HINT - [0:0]\n"
CANARY = ":KUBE-KUBELET-CANARY - [0:0]\n"
NFT, LEGACY = Variant.NFT, Variant.LEGACY


@pytest.mark.parametrize(
    ("mangle", "dumps", "want"),
    [
        pytest.param({NFT: HINT, LEGACY: HINT}, None, NFT, id="hint-in-both-prefers-nft"),
        pytest.param({LEGACY: HINT}, None, LEGACY, id="hint-in-legacy"),
        pytest.param({LEGACY: CANARY}, None, LEGACY, id="canary-in-legacy"),
        pytest.param({NFT: CANARY, LEGACY: HINT}, None, LEGACY, id="hint-beats-canary"),
        pytest.param({}, {LEGACY: "-A X\n-A Y\n", NFT: "-A X\n"}, LEGACY, id="more-legacy-rules"),
        pytest.param({}, {LEGACY: "-A X\n", NFT: "-A X\n"}, NFT, id="tie-is-nft"),
        pytest.param({}, {}, NFT, id="empty-is-nft"),
    ],
)
def test_choose_variant(
    mangle: dict[Variant, str], dumps: dict[Variant, str] | None, want: Variant
) -> None:
    assert choose_variant(mangle, dumps) is want


def test_detect_variant_reads_mangle_first_then_full_dumps() -> None:
    runner = FakeRunner(outputs={"iptables-legacy-save -t mangle": HINT})
    assert detect_variant(runner) is LEGACY
    assert all(argv[1:] == ["-t", "mangle"] for argv, _ in runner.calls)
    runner = FakeRunner(outputs={"iptables-legacy-save": "-A INPUT -j DROP\n"})
    assert detect_variant(runner) is LEGACY
    assert ["ip6tables-nft-save"] in [argv for argv, _ in runner.calls]


def test_detect_variant_treats_a_missing_variant_as_empty() -> None:
    runner = FakeRunner(missing=frozenset({"iptables-legacy-save", "ip6tables-legacy-save"}))
    assert detect_variant(runner) is NFT


def test_resolve_variant_forced_runs_nothing() -> None:
    runner = FakeRunner()
    assert resolve_variant(runner, "legacy") is LEGACY and runner.calls == []


def test_plan_with_only_unchanged_services_keeps_rule_counts() -> None:
    runner = FakeRunner()
    be = backend(runner)
    first = be.sync(node_plan(WEB, DNS), full=True)
    again = be.sync(NodePlan("node-a", node_plan(WEB, DNS).services), full=False)
    assert again.rules == first.rules


# --- localhost NodePorts: route_localnet through the Sysctls seam -----------------------


@dataclass
class FakeSysctls:
    """Records ``ensure`` calls; raises while ``broken`` is set."""

    broken: str | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)

    def ensure(self, key: str, value: str) -> None:
        self.calls.append((key, value))
        if self.broken is not None:
            raise BackendError(f"cannot set {key}={value}: {self.broken}")


LOCALHOST = RenderOptions(cluster_cidrs=("10.244.0.0/16",), localhost_nodeports=True)
NODEPORT = sp(internal=[ep("10.244.1.2")], node_port=30080)
MARTIAN = "-d 127.0.0.0/8 ! -s 127.0.0.0/8"


def ipv4_restore(runner: FakeRunner) -> str:
    (text,) = [t for argv, t in runner.restores() if argv[0].startswith("iptables-")]
    return text


def test_full_syncs_ensure_route_localnet_partial_syncs_do_not() -> None:
    runner, sysctls = FakeRunner(), FakeSysctls()
    be = IptablesBackend(runner, Variant.NFT, options=LOCALHOST, sysctls=sysctls)
    first = be.sync(node_plan(NODEPORT), full=True)
    assert first.ok and first.warnings == ()
    assert sysctls.calls == [(ROUTE_LOCALNET, "1")]
    assert ROUTE_LOCALNET == "net/ipv4/conf/all/route_localnet"
    text = ipv4_restore(runner)
    assert MARTIAN in text and "! -d 127.0.0.0/8" not in text
    be.sync(node_plan(NODEPORT, WEB), full=False)
    assert len(sysctls.calls) == 1
    be.sync(node_plan(NODEPORT, WEB), full=True)
    assert len(sysctls.calls) == 2


def test_route_localnet_refused_keeps_loopback_closed_and_warns() -> None:
    runner, sysctls = FakeRunner(), FakeSysctls(broken="Read-only file system")
    be = IptablesBackend(runner, Variant.NFT, options=LOCALHOST, sysctls=sysctls)
    result = be.sync(node_plan(NODEPORT), full=True)
    assert result.ok
    ((label, message),) = result.warnings
    assert label == "route_localnet" and "Read-only file system" in message
    text = ipv4_restore(runner)
    assert "! -d 127.0.0.0/8 -j PROXYD-NODEPORTS" in text and MARTIAN not in text
    runner.clear()
    sysctls.broken = None
    healed = be.sync(node_plan(NODEPORT), full=True)
    assert healed.warnings == () and MARTIAN in ipv4_restore(runner)


def test_nothing_to_ensure_without_loopback_nodeports() -> None:
    sysctls = FakeSysctls()
    for options in (
        replace(LOCALHOST, localhost_nodeports=False),
        replace(LOCALHOST, nodeport_addresses=("10.0.0.0/8",)),
    ):
        be = IptablesBackend(FakeRunner(), Variant.NFT, options=options, sysctls=sysctls)
        assert be.sync(node_plan(NODEPORT), full=True).ok
    assert sysctls.calls == []


def test_localhost_nodeports_without_sysctls_are_refused() -> None:
    with pytest.raises(ValueError, match="route_localnet"):
        IptablesBackend(FakeRunner(), Variant.NFT, options=LOCALHOST)


