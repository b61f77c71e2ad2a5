"""Running external commands (iptables-restore, conntrack …) behind a small Protocol.

Backends never call :mod:`subprocess` themselves: they take a :class:`CommandRunner`, so
unit tests pass a fake that records argv and stdin, and kernel tests pass a
:class:`SubprocessRunner` whose ``prefix`` (``ip netns exec NAME``) moves every command
into a test namespace. No shell is involved anywhere: argv is a list, input goes to stdin.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from proxyd.errors import BackendError

__all__ = ["CommandRunner", "CompletedRun", "SubprocessRunner"]


@dataclass(frozen=True, slots=True)
class CompletedRun:
    """Exit status and output of one command (output decoded as UTF-8, lossy)."""

    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class CommandRunner(Protocol):
    """Runs one command to completion. Raises :class:`BackendError` only when the command
    could not be run at all (missing binary, timeout); a non-zero exit is a value."""

    def run(self, argv: Sequence[str], stdin: bytes = b"") -> CompletedRun: ...


class SubprocessRunner:
    """The real runner. ``prefix`` is prepended to every argv (e.g. ``ip netns exec ns``)."""

    def __init__(self, prefix: Sequence[str] = (), timeout: float = 300.0) -> None:
        self._prefix = tuple(prefix)
        self._timeout = timeout

    def run(self, argv: Sequence[str], stdin: bytes = b"") -> CompletedRun:
        full = [*self._prefix, *argv]
        try:
            proc = subprocess.run(
                full, input=stdin, capture_output=True, timeout=self._timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendError(f"cannot run {full[0]}: {exc}") from exc
        return CompletedRun(
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )
