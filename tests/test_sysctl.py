"""The one sysctl writer both backends use: read first, write only what differs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxyd.backends.sysctl import ProcSysctls
from proxyd.errors import BackendError

KEY = "net/ipv4/conf/all/route_localnet"


def _proc(tmp_path: Path, value: str) -> Path:
    path = tmp_path / KEY
    path.parent.mkdir(parents=True)
    path.write_text(f"{value}\n")
    os.utime(path, ns=(0, 0))
    return path


def test_a_differing_value_is_written(tmp_path: Path) -> None:
    path = _proc(tmp_path, "0")
    ProcSysctls(str(tmp_path)).ensure(KEY, "1")
    assert path.read_text() == "1"


def test_a_value_already_set_is_not_written_again(tmp_path: Path) -> None:
    """What lets a container with a read-only /proc/sys run on a node set up beforehand."""
    path = _proc(tmp_path, "1")
    ProcSysctls(str(tmp_path)).ensure(KEY, "1")
    assert path.stat().st_mtime_ns == 0


def test_failure_names_the_setting_in_sysctl_spelling(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"net\.ipv4\.conf\.all\.route_localnet=1"):
        ProcSysctls(str(tmp_path / "missing")).ensure(KEY, "1")
