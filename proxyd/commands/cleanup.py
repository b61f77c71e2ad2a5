"""``proxyd cleanup``: remove everything proxyd programmed into iptables.

Deletes every ``PROXYD-*`` chain and every rule that jumps to one, per family, in one
restore each. With ``--kube-proxy`` it also removes what kube-proxy leaves behind
(``KUBE-SERVICES``, ``KUBE-SVC-*`` …, never the kubelet's own chains), for nodes that
switch from kube-proxy to proxyd. ``--iptables-backend auto`` cleans both nft and legacy
tables (whichever are installed): stale rules may sit in either. Idempotent.
"""

from __future__ import annotations

import argparse
import shutil

from proxyd.backends.iptables import BACKEND_CHOICES

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "cleanup",
        help="remove proxyd's iptables chains (and kube-proxy's with --kube-proxy)",
        description="Remove every chain proxyd created and the rules jumping to them.",
    )
    parser.add_argument(
        "--kube-proxy", action="store_true", help="also remove kube-proxy's leftover chains"
    )
    parser.add_argument(
        "--iptables-backend", choices=BACKEND_CHOICES, default="auto",
        help="which iptables to clean; auto cleans both (default: %(default)s)",
    )  # fmt: skip
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from proxyd.backends.commands_runner import SubprocessRunner
    from proxyd.backends.iptables import Variant, available_families, remove_chains, tool
    from proxyd.backends.iptables_render import KUBE_PROXY, PROXYD

    def owns(chain: str) -> bool:
        return PROXYD.owns(chain) or (args.kube_proxy and KUBE_PROXY.owns(chain))

    runner = SubprocessRunner()
    auto = args.iptables_backend == "auto"
    for variant in list(Variant) if auto else [Variant(args.iptables_backend)]:
        for family in available_families():
            if auto and shutil.which(tool(variant, family, "save")) is None:
                continue
            removed = remove_chains(runner, variant, family, owns)
            what = "removed" if removed else "nothing to remove"
            print(f"proxyd cleanup: {tool(variant, family)}: {what}")
    return 0
