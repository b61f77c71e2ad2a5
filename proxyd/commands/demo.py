"""``proxyd demo``: topology-aware routing on real packets, in namespaces, in under a minute."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["EXIT_FAILED_ROWS", "EXIT_PREREQUISITES", "missing_prerequisites", "register"]

EXIT_FAILED_ROWS = 1
EXIT_PREREQUISITES = 3
REQUIRED_TOOLS = ("ip", "iptables", "iptables-save", "iptables-restore", "conntrack")

_DESCRIPTION = """\
Build a small OpenYurt edge cluster in network namespaces (pools beijing, hangzhou and
shanghai; two zones; five nodes, each running the real `proxyd run` against proxyd's
fake API server), send requests from every node to services in every topology mode, and
show who answered next to who should have. Then scale a deployment and kill a pod, and
show the data path follow. Needs root; touches nothing outside its own namespaces, and
removes them when done (also on Ctrl-C), unless --keep.

exit status: 0 every row passed, 1 some row failed, 3 not root or a tool is missing."""


def missing_prerequisites(euid: int, which: Callable[[str], str | None]) -> list[str]:
    """What keeps the demo from running here, one sentence each (empty: good to go).
    Checked before anything heavy is imported, so the answer comes at once."""
    problems = []
    if euid != 0:
        problems.append(
            "proxyd demo needs root: it creates network namespaces and programs iptables "
            "inside them (run it with sudo; nothing is changed outside its own namespaces)"
        )
    missing = [tool for tool in REQUIRED_TOOLS if which(tool) is None]
    if missing:
        problems.append(
            f"missing tools: {', '.join(missing)} (on Debian: apt-get install iproute2 "
            "iptables conntrack)"
        )
    return problems


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run topology-aware routing on real packets in a throwaway sandbox (root)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--keep", action="store_true", help="leave the sandbox running and print how to explore it"
    )
    what.add_argument(
        "--cleanup", action="store_true", help="remove every sandbox left by --keep, then exit"
    )
    parser.set_defaults(handler=_handle)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the sandbox is removed on them too."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _handle(args: argparse.Namespace) -> int:
    problems = missing_prerequisites(os.geteuid(), shutil.which)
    if problems:
        for problem in problems:
            print(f"proxyd demo: {problem}", file=sys.stderr)
        return EXIT_PREREQUISITES

    from rich.console import Console

    from proxyd.runner import SystemClock
    from proxyd.sandbox import demo

    tmpdir = Path(tempfile.gettempdir())
    if args.cleanup:
        removed = demo.cleanup_sandboxes(tmpdir)
        print(f"removed {len(removed)} namespaces" if removed else "no sandbox to remove")
        return 0
    console = Console(highlight=False)
    clock = SystemClock()
    layout = demo.Layout(demo.new_run_id(), demo.DEFAULT_SCENARIO)
    cluster = demo.NetnsCluster(layout, console, clock, tmpdir / f"proxyd-demo-{layout.run_id}")
    with _terminate_as_interrupt():
        report = demo.run_demo(
            demo.DEFAULT_SCENARIO, layout, cluster, console, clock, keep=args.keep
        )
    return 0 if report.passed else EXIT_FAILED_ROWS
