"""Conntrack tuning at start (kube-proxy's ``conntrack`` section): the decision, the apply
step against a fake kernel, the daemon's start, and the real kernel in a test netns."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxyd import conntrack_tuning
from proxyd.cli import build_parser
from proxyd.commands import run
from proxyd.config import Config
from proxyd.conntrack_tuning import (
    HASHSIZE,
    MAX,
    MAX_SCALED_LIMIT,
    Applied,
    Write,
    apply,
    conntrack_max,
    decide,
)
from proxyd.errors import BackendError
from proxyd.sources import kube
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
NF = "proc/sys/net/netfilter/"
ESTABLISHED = NF + "nf_conntrack_tcp_timeout_established"
CLOSE_WAIT = NF + "nf_conntrack_tcp_timeout_close_wait"
LIBERAL = NF + "nf_conntrack_tcp_be_liberal"
UDP = NF + "nf_conntrack_udp_timeout"
UDP_STREAM = NF + "nf_conntrack_udp_timeout_stream"
DEFAULT_TIMEOUTS = {(ESTABLISHED, 86400), (CLOSE_WAIT, 3600)}


def cfg(**conntrack: Any) -> Config:
    """A Config with kube-proxy's conntrack defaults, ``conntrack_*`` fields overridden."""
    return dataclasses.replace(Config(node_name="n"),
                               **{f"conntrack_{k}": v for k, v in conntrack.items()})


def writes(config: Config, cpus: int, max_now: int | None = 1, hashsize_now: int | None = 1,
           ) -> set[tuple[str, int]]:
    current = {MAX: max_now, HASHSIZE: hashsize_now}
    return {(w.key, w.value) for w in decide(config, cpus=cpus, current=current)}


# --- the decision --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per_core", "minimum", "cpus", "want"),
    [
        pytest.param(32768, 131072, 2, 131072, id="defaults-2-cpus-min-wins"),
        pytest.param(32768, 131072, 8, 262144, id="defaults-8-cpus-scaled"),
        pytest.param(32768, 131072, 64, MAX_SCALED_LIMIT, id="defaults-64-cpus-capped"),
        pytest.param(1, 123456, 8, 123456, id="min-wins"),
        pytest.param(0, 123456, 8, 0, id="per-core-0-leaves-alone"),
        pytest.param(32768, 0, 2, 65536, id="no-min"),
        pytest.param(32768, 2_000_000, 64, 2_000_000, id="explicit-min-above-cap-wins"),
    ],
)
def test_conntrack_max(per_core: int, minimum: int, cpus: int, want: int) -> None:
    assert conntrack_max(per_core, minimum, cpus) == want


@pytest.mark.parametrize(
    ("config", "cpus", "max_now", "hashsize_now", "want"),
    [
        pytest.param(cfg(), 2, 65536, 16384,
                     {(MAX, 131072), (HASHSIZE, 32768), *DEFAULT_TIMEOUTS},
                     id="defaults-2-cpus"),
        pytest.param(cfg(), 64, 262144, 65536,
                     {(MAX, 1_048_576), (HASHSIZE, 262144), *DEFAULT_TIMEOUTS},
                     id="defaults-64-cpus"),
        pytest.param(cfg(), 2, 131072, 32768, DEFAULT_TIMEOUTS, id="already-right"),
        pytest.param(cfg(), 2, 262144, 65536, DEFAULT_TIMEOUTS,
                     id="larger-max-is-never-lowered"),
        pytest.param(cfg(), 2, 262144, 1024, {(HASHSIZE, 32768), *DEFAULT_TIMEOUTS},
                     id="larger-max-but-small-table-grows-the-table"),
        pytest.param(cfg(), 2, 1024, 262144, {(MAX, 131072), *DEFAULT_TIMEOUTS},
                     id="larger-table-is-kept"),
        pytest.param(cfg(), 2, None, None,
                     {(MAX, 131072), (HASHSIZE, 32768), *DEFAULT_TIMEOUTS},
                     id="unreadable-is-tried"),
        pytest.param(cfg(max_per_core=0), 64, 1, 1, DEFAULT_TIMEOUTS,
                     id="max-per-core-0-leaves-max-and-table-alone"),
        pytest.param(cfg(max_per_core=0, tcp_timeout_established=0.0,
                         tcp_timeout_close_wait=0.0), 2, 1, 1, set(),
                     id="all-0-writes-nothing"),
        pytest.param(cfg(max_per_core=0, tcp_timeout_established=300.0,
                         tcp_timeout_close_wait=60.0, tcp_be_liberal=True, udp_timeout=45.0,
                         udp_timeout_stream=150.0), 2, 1, 1,
                     {(ESTABLISHED, 300), (CLOSE_WAIT, 60), (LIBERAL, 1), (UDP, 45),
                      (UDP_STREAM, 150)},
                     id="timeouts-in-seconds-and-be-liberal"),
    ],
)
def test_decide(config: Config, cpus: int, max_now: int | None, hashsize_now: int | None,
                want: set[tuple[str, int]]) -> None:
    assert writes(config, cpus, max_now, hashsize_now) == want


def test_limit_and_table_come_before_timeouts() -> None:
    keys = [w.key for w in decide(cfg(), cpus=2, current={})]
    assert keys[:2] == [MAX, HASHSIZE]


@pytest.mark.parametrize(
    ("write", "sysctl"),
    [
        pytest.param(Write(MAX, 1, "maxPerCore"), "net.netfilter.nf_conntrack_max", id="max"),
        pytest.param(Write(HASHSIZE, 1, "maxPerCore"), "net.netfilter.nf_conntrack_buckets",
                     id="hashsize-is-buckets"),
        pytest.param(Write(ESTABLISHED, 1, "tcpEstablishedTimeout"),
                     "net.netfilter.nf_conntrack_tcp_timeout_established", id="timeout"),
    ],
)
def test_sysctl_names_for_sysctl_d(write: Write, sysctl: str) -> None:
    assert write.sysctl == sysctl


# --- applying, against a fake kernel ---------------------------------------------------------


class FakeKernel:
    """Reader + Sysctls over a dict; keys in ``failing`` raise as ProcSysctls does."""

    def __init__(self, values: dict[str, int], failing: dict[str, int] | None = None) -> None:
        self.values = dict(values)
        self.failing = failing or {}
        self.written: list[tuple[str, str]] = []

    def read(self, key: str) -> int | None:
        return self.values.get(key)

    def ensure(self, key: str, value: str) -> None:
        if key in self.failing:
            code = self.failing[key]
            raise BackendError(f"cannot set {key}={value}") from OSError(code, os.strerror(code))
        if str(self.values.get(key)) != value:
            self.values[key] = int(value)
            self.written.append((key, value))


def test_apply_writes_only_what_differs() -> None:
    kernel = FakeKernel({MAX: 65536, HASHSIZE: 16384, ESTABLISHED: 86400, CLOSE_WAIT: 60})
    applied = apply(cfg(), cpus=2, reader=kernel, sysctls=kernel)
    assert set(kernel.written) == {(MAX, "131072"), (HASHSIZE, "32768"), (CLOSE_WAIT, "3600")}
    assert {(w.key, w.value) for w in applied.ensured} == {
        (MAX, 131072), (HASHSIZE, 32768), *DEFAULT_TIMEOUTS}
    assert applied.warnings == ()


def test_a_failed_write_is_a_warning_naming_the_sysctl_d_line_and_the_rest_goes_on() -> None:
    kernel = FakeKernel({MAX: 65536, HASHSIZE: 16384},
                        failing={MAX: errno.EROFS, HASHSIZE: errno.EOPNOTSUPP})
    applied = apply(cfg(), cpus=2, reader=kernel, sysctls=kernel)
    assert set(kernel.written) == {(ESTABLISHED, "86400"), (CLOSE_WAIT, "3600")}
    assert len(applied.warnings) == 2
    max_warning, table_warning = applied.warnings
    assert "net.netfilter.nf_conntrack_max = 131072" in max_warning
    assert "/etc/sysctl.d/" in max_warning
    assert os.strerror(errno.EROFS) in max_warning
    assert "conntrack.maxPerCore: 0" in max_warning
    assert "net.netfilter.nf_conntrack_buckets = 32768" in table_warning


def test_every_write_failing_still_returns() -> None:
    kernel = FakeKernel({}, failing=dict.fromkeys(
        (MAX, HASHSIZE, ESTABLISHED, CLOSE_WAIT), errno.EACCES))
    applied = apply(cfg(), cpus=2, reader=kernel, sysctls=kernel)
    assert (applied.ensured, len(applied.warnings)) == ((), 4)
    assert any("conntrack.tcpCloseWaitTimeout: 0" in w for w in applied.warnings)


def test_tune_at_start_logs_each_failure_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = FakeKernel({MAX: 1, HASHSIZE: 1}, failing={MAX: errno.EACCES})
    monkeypatch.setattr(conntrack_tuning, "FileReader", lambda: kernel)
    monkeypatch.setattr(conntrack_tuning, "ProcSysctls", lambda root: kernel)
    with caplog.at_level(logging.INFO, logger="proxyd.conntrack_tuning"):
        applied = conntrack_tuning.tune_at_start(cfg())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == list(applied.warnings)
    assert len(warnings) == 1
    assert "nf_conntrack_max" in warnings[0]


class Started(Exception):
    """Stops ``proxyd run`` right after the step the test looks at."""


def test_the_daemon_tunes_at_start_and_a_failure_does_not_stop_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The start goes on after a failed tuning, and the daemon keeps the failure as a
    standing warning (``proxyd_warnings{reason="ConntrackTuning"}``)."""
    seen: list[Config] = []
    standing: list[Any] = []

    def tune(config: Config) -> Applied:
        seen.append(config)
        return Applied((), ("conntrack: cannot set net.netfilter.nf_conntrack_max=1",))

    def daemon(*args: Any, standing_warnings: Any = (), **kwargs: Any) -> Any:
        standing.append(list(standing_warnings))
        raise Started

    monkeypatch.setattr(conntrack_tuning, "tune_at_start", tune)
    monkeypatch.setattr(run, "make_backend", lambda config: (None, False))
    monkeypatch.setattr(run, "Daemon", daemon)
    monkeypatch.setattr(kube, "api_client", lambda kubeconfig: None)
    monkeypatch.setattr(run, "setup", lambda *a: None)
    args = build_parser().parse_args(["run", "--node-name", "n", "--conntrack-min", "5"])
    with pytest.raises(Started):
        args.handler(args)
    assert [c.conntrack_min for c in seen] == [5]
    assert standing == [[conntrack_tuning.WARNING_REASON]]


# --- the real kernel, in a network namespace of the test -------------------------------------

_IN_NETNS = """
import json, sys
from proxyd.backends.sysctl import ProcSysctls
from proxyd.config import Config
from proxyd.conntrack_tuning import FileReader, apply
fields = json.loads(sys.argv[1])
applied = apply(Config(node_name="n", **fields), cpus=int(sys.argv[2]), reader=FileReader(),
                sysctls=ProcSysctls(root="/"))
reader = FileReader()
print(json.dumps({"ensured": [[w.key, w.value] for w in applied.ensured],
                  "warnings": list(applied.warnings),
                  "now": {k: reader.read(k) for k in sys.argv[3:]}}))
"""
KEYS = (MAX, HASHSIZE, ESTABLISHED, CLOSE_WAIT, LIBERAL, UDP, UDP_STREAM)


def read_host(key: str) -> int:
    return int(Path("/", key).read_text().strip())


@pytest.fixture
def netns() -> Iterator[str]:
    require(os.geteuid() == 0, "needs root")
    require(shutil.which("ip"), "ip (iproute2) not installed")
    require(os.path.exists("/" + MAX), "nf_conntrack not loaded")
    name = f"pxc-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def in_netns(netns: str, script: str, *args: str) -> str:
    run_ = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script, *args],
                          capture_output=True, text=True, timeout=30, cwd=ROOT, check=True)
    return run_.stdout


def tune_in(netns: str, cpus: int, **fields: Any) -> dict[str, Any]:
    out = in_netns(netns, _IN_NETNS, json.dumps(fields), str(cpus), *KEYS)
    result: dict[str, Any] = json.loads(out)
    return result


def netns_cannot_write(netns: str, key: str) -> bool:
    """True when the kernel refuses ``key`` in ``netns`` even with its current value (so
    the test cannot change the host's global setting from there)."""
    probe = ("import sys\np = sys.argv[1]\nv = open(p).read()\ntry:\n"
             "    with open(p, 'w') as f:\n        f.write(v)\n"
             "except OSError:\n    print('refused')\n")
    return in_netns(netns, probe, "/" + key).strip() == "refused"


@pytest.mark.root
@pytest.mark.netns
def test_kernel_timeouts_are_set_per_netns_and_the_host_keeps_its_own(netns: str) -> None:
    host_before = {k: read_host(k) for k in KEYS}
    # maxPerCore 0: the global limit is left alone (the next test covers it)
    result = tune_in(netns, 2, conntrack_max_per_core=0, conntrack_tcp_be_liberal=True,
                     conntrack_udp_timeout=45.0, conntrack_udp_timeout_stream=150.0)
    assert result["warnings"] == []
    assert {(k, v) for k, v in result["ensured"]} == {
        (ESTABLISHED, 86400), (CLOSE_WAIT, 3600), (LIBERAL, 1), (UDP, 45), (UDP_STREAM, 150)}
    now = result["now"]
    assert {k: now[k] for k in (ESTABLISHED, CLOSE_WAIT, LIBERAL, UDP, UDP_STREAM)} == {
        ESTABLISHED: 86400, CLOSE_WAIT: 3600, LIBERAL: 1, UDP: 45, UDP_STREAM: 150}
    assert {k: read_host(k) for k in KEYS} == host_before


@pytest.mark.root
@pytest.mark.netns
def test_kernel_refuses_the_global_limit_and_table_outside_the_host_netns(netns: str) -> None:
    require(netns_cannot_write(netns, MAX) and netns_cannot_write(netns, HASHSIZE),
            "this kernel lets a netns write the global conntrack limit; not testing that here")
    host_before = {k: read_host(k) for k in KEYS}
    wanted = max(host_before[MAX], 4 * host_before[HASHSIZE]) + 4  # both need raising
    result = tune_in(netns, 2, conntrack_min=wanted, conntrack_tcp_timeout_established=0.0,
                     conntrack_tcp_timeout_close_wait=0.0)
    assert result["ensured"] == []
    max_warning, table_warning = result["warnings"]
    assert f"net.netfilter.nf_conntrack_max = {wanted}" in max_warning
    assert f"net.netfilter.nf_conntrack_buckets = {wanted // 4}" in table_warning
    assert (result["now"][MAX], result["now"][HASHSIZE]) == (
        host_before[MAX], host_before[HASHSIZE])
    assert {k: read_host(k) for k in KEYS} == host_before
