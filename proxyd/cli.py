"""The ``proxyd`` command line: one sub-command per module in ``proxyd/commands``.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``handler`` (a function ``(argparse.Namespace) -> int``). Heavy imports stay inside the
handlers so ``proxyd --help`` is fast. A :class:`ProxydError` reaching this level is
printed as one line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from proxyd import __version__
from proxyd.errors import ProxydError

__all__ = ["build_parser", "main"]

_COMMANDS = ("plan", "explain", "apply", "cleanup", "run", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxyd", description="Node-level kube-proxy replacement with topology-aware routing."
    )
    parser.add_argument("--version", action="version", version=f"proxyd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"proxyd.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ProxydError as exc:
        print(f"proxyd {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
