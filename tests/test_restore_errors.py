"""What a refused iptables-restore reports: the message that says what failed, not the
version header, with the payload lines around the bad one in ``detail``.

The stderr texts are what iptables 1.8.9 (Debian 12) prints, nft and legacy, captured
from real refusals; the last test provokes one in a namespace so a new iptables version
that words things differently shows up here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from proxyd.backends.commands_runner import CompletedRun, SubprocessRunner
from proxyd.backends.iptables import (
    IptablesBackend,
    Variant,
    remove_chains,
    restore_failure,
    tool,
)
from proxyd.errors import BackendError
from proxyd.model import IPFamily
from tests.builders import ep, node_plan, sp
from tests.conftest import require

NFT_COMMIT = (  # the kernel refused the commit: header alone, then one line per failure
    "iptables-nft-restore v1.8.9 (nf_tables): \n"
    "line 4: CHAIN_DEL failed (Device or resource busy): chain PROXYD-B\n"
    "line 5: CHAIN_DEL failed (Device or resource busy): chain PROXYD-A\n"
)
NFT_PARSE = (
    'iptables-nft-restore v1.8.9 (nf_tables): unknown option "--bogus-opt"\n'
    "Error occurred at line: 3\n"
    "Try `iptables-nft-restore -h' or 'iptables-nft-restore --help' for more information.\n"
)
NFT_SET = (
    "iptables-nft-restore v1.8.9 (nf_tables): Set NOSET doesn't exist.\n\n"
    "Error occurred at line: 3\n"
    "Try `iptables-nft-restore -h' or 'iptables-nft-restore --help' for more information.\n"
)
NFT_DELETE = (
    "iptables-nft-restore: line 3 failed: Bad rule (does a matching rule exist in that chain?).\n"
)
LEGACY_COMMIT = "iptables-restore: line 2 failed\n"
LEGACY_PARSE = (
    "iptables-restore v1.8.9 (legacy): Couldn't load target `PROXYD-MISSING':"
    "No such file or directory\n\n"
    "Error occurred at line: 3\n"
    "Try `iptables-restore -h' or 'iptables-restore --help' for more information.\n"
)


@dataclass
class FailingRestore:
    """A CommandRunner whose saves are empty and whose restores fail with ``stderr``."""

    stderr: str
    returncode: int = 2
    payloads: list[str] = field(default_factory=list)

    def run(self, argv: Sequence[str], stdin: bytes = b"") -> CompletedRun:
        if argv[0].endswith("-restore"):
            self.payloads.append(stdin.decode())
            return CompletedRun(self.returncode, "", self.stderr)
        return CompletedRun(0, "", "")


@pytest.mark.parametrize(
    ("stderr", "code", "said", "bad", "more"),
    [
        pytest.param(
            NFT_COMMIT,
            4,
            "line 4: CHAIN_DEL failed (Device or resource busy): chain PROXYD-B",
            4,
            ["line 5: CHAIN_DEL failed (Device or resource busy): chain PROXYD-A"],
            id="nft-commit",
        ),
        pytest.param(NFT_PARSE, 2, 'unknown option "--bogus-opt" (line 3)', 3, [], id="nft-parse"),
        pytest.param(NFT_SET, 2, "Set NOSET doesn't exist. (line 3)", 3, [], id="nft-no-set"),
        pytest.param(
            NFT_DELETE,
            1,
            "line 3 failed: Bad rule (does a matching rule exist in that chain?).",
            3,
            [],
            id="nft-line-n-failed",
        ),
        pytest.param(LEGACY_COMMIT, 1, "line 2 failed", 2, [], id="legacy-commit"),
        pytest.param(
            LEGACY_PARSE,
            2,
            "Couldn't load target `PROXYD-MISSING':No such file or directory (line 3)",
            3,
            [],
            id="legacy-parse",
        ),
    ],
)
def test_failed_sync_names_what_failed(
    stderr: str, code: int, said: str, bad: int, more: list[str]
) -> None:
    runner = FailingRestore(stderr, code)
    backend = IptablesBackend(runner, Variant.NFT, families=(IPFamily.IPV4,))
    result = backend.sync(node_plan(sp("web", internal=[ep("10.244.1.2")])), full=True)
    assert not result.ok
    assert result.error == f"iptables-restore failed (exit {code}): {said}"
    payload = runner.payloads[0].splitlines()
    marked = [ln for ln in result.detail.splitlines() if ln.startswith(">")]
    assert marked == [f">{bad:7d}  {payload[bad - 1]}"]
    assert [ln for ln in result.detail.splitlines() if ln.startswith("line")] == more


def test_cleanup_failure_names_what_failed() -> None:
    save = "*nat\n:PREROUTING ACCEPT [0:0]\n:PROXYD-SERVICES - [0:0]\nCOMMIT\n"

    class Runner(FailingRestore):
        def run(self, argv: Sequence[str], stdin: bytes = b"") -> CompletedRun:
            if argv[0].endswith("-save"):
                return CompletedRun(0, save, "")
            return super().run(argv, stdin)

    with pytest.raises(BackendError, match=r"\(exit 4\): line 4: CHAIN_DEL failed"):
        remove_chains(Runner(NFT_COMMIT, 4), Variant.NFT, IPFamily.IPV4)


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.parametrize("variant", list(Variant))
def test_real_refusal_is_reported_by_its_reason(variant: Variant) -> None:
    """Deleting a chain another rule jumps to: nft refuses at commit (header line, then
    ``line N: ... failed``), legacy with ``line N failed``."""
    require(os.geteuid() == 0, "needs root for network namespaces")
    require(shutil.which(tool(variant, IPFamily.IPV4, "restore")), "iptables not installed")
    ns = f"pxf-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        runner = SubprocessRunner(["ip", "netns", "exec", ns])
        setup = "*nat\n:PROXYD-A - [0:0]\n:PROXYD-B - [0:0]\n-A PROXYD-A -j PROXYD-B\nCOMMIT\n"
        restore = [tool(variant, IPFamily.IPV4, "restore"), "--noflush"]
        assert runner.run(restore, setup.encode()).ok
        payload = "*nat\n-X PROXYD-B\nCOMMIT\n"
        run = runner.run(restore, payload.encode())
        error, detail = restore_failure(payload, run)
        assert "line 2" in error and "v1." not in error, error
        assert ">      2  -X PROXYD-B" in detail
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
