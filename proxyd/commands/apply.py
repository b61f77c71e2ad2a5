"""``proxyd apply``: one full sync from manifests into the current network namespace.

Loads the manifests, plans for ``--node`` and programs the kernel once, the way the
daemon's first sync would. Tests and the demo run it inside a node's namespace
(``ip netns exec NODE proxyd apply ...``). Exit status 0 when the rules were written, 1
when the kernel refused them (the previous rules stay; the reason and the restore lines
around the failing one go to stderr).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from proxyd.backends import Backend
from proxyd.config import DEFAULT_IPVS_INTERFACE, IptablesBackendChoice, ProxyMode, interface_name

__all__ = ["add_ipvs_interface_option", "add_rule_options", "cidr_list", "register"]


def cidr_list(value: str) -> tuple[str, ...]:
    """Comma-separated CIDRs (argparse type); normalised, host bits allowed."""
    try:
        return tuple(str(ipaddress.ip_network(c.strip(), strict=False)) for c in value.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "apply",
        help="program this network namespace once from manifests",
        description="Load manifests, plan for NODE and write the rules into the current "
        "network namespace with one full sync.",
    )
    parser.add_argument(
        "--manifests", action="extend", nargs="+", required=True, metavar="PATH",
        help="YAML/JSON file or directory of Services, EndpointSlices, Nodes, NodePools",
    )  # fmt: skip
    parser.add_argument("--node", required=True, help="the node this namespace stands for")
    parser.add_argument(
        "--proxy-mode", choices=[m.value for m in ProxyMode], default=ProxyMode.IPTABLES.value,
        help="(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--iptables-backend", choices=[c.value for c in IptablesBackendChoice], default="auto",
        help="nft or legacy iptables; auto detects like the kubelet (default: %(default)s)",
    )  # fmt: skip
    add_rule_options(parser)
    parser.add_argument(
        "--ipvs-scheduler", default="rr", metavar="NAME",
        help="IPVS mode: scheduler of services without the proxyd.io/ipvs-scheduler "
        "annotation (default: %(default)s)",
    )  # fmt: skip
    add_ipvs_interface_option(parser)
    parser.add_argument("--proxy-name", default="proxyd")
    parser.set_defaults(handler=run)


def add_rule_options(parser: argparse.ArgumentParser) -> None:
    """The kube-proxy flags that shape rules (``proxyd run`` has its own: its flags
    override a config file, so they default to unset)."""
    parser.add_argument(
        "--cluster-cidr", type=cidr_list, default=(), metavar="CIDR[,CIDR]",
        help="pod CIDR(s); traffic to cluster IPs from outside them is masqueraded",
    )  # fmt: skip
    parser.add_argument(
        "--masquerade-all", action="store_true", help="masquerade all service traffic"
    )
    parser.add_argument(
        "--nodeport-addresses", type=cidr_list, default=(), metavar="CIDR[,CIDR]",
        help="NodePorts answer only on local addresses in these (default: all but loopback)",
    )  # fmt: skip
    parser.add_argument(
        "--masquerade-bit", type=int, default=14, choices=range(32), metavar="0..31",
        help="fwmark bit that marks traffic to masquerade (default: %(default)s)",
    )  # fmt: skip


def add_ipvs_interface_option(parser: argparse.ArgumentParser) -> None:
    """``--ipvs-interface`` (shared with ``proxyd cleanup``, which removes that device)."""
    parser.add_argument(
        "--ipvs-interface", type=interface_name, default=DEFAULT_IPVS_INTERFACE, metavar="NAME",
        help="IPVS mode: device holding the service addresses; kube-ipvs0 only when "
        "replacing kube-proxy (default: %(default)s)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from proxyd.plan import build_plan
    from proxyd.sources.manifests import load
    from proxyd.store import ClusterState

    state = ClusterState()
    for note in load(args.manifests, state):
        print(f"proxyd apply: note: {note}", file=sys.stderr)
    snapshot = state.snapshot()
    if args.node not in snapshot.nodes:
        print(f"proxyd apply: note: node {args.node} not in the manifests", file=sys.stderr)
    plan = build_plan(snapshot, args.node, proxy_name=args.proxy_name)
    backend, name = _backend(args)
    result = backend.sync(plan, full=True)
    if not result.ok:
        print(f"proxyd apply: {result.error}", file=sys.stderr)
        if result.detail:
            print(result.detail, file=sys.stderr)
        return 1
    rules = ", ".join(f"{table} {n}" for table, n in sorted(result.rules.items()))
    print(f"proxyd apply: {len(result.written)} service ports written ({name}; rules: {rules})")
    return 0


def _backend(args: argparse.Namespace) -> tuple[Backend, str]:
    """The backend for ``--proxy-mode`` (built as ``proxyd run`` builds it), and a name
    for messages."""
    from proxyd.backends import build_backend
    from proxyd.config import Config

    cfg = Config(
        node_name=args.node,
        proxy_mode=ProxyMode(args.proxy_mode),
        ipvs_scheduler=args.ipvs_scheduler,
        ipvs_interface=args.ipvs_interface,
        cluster_cidr=",".join(args.cluster_cidr) or None,
        nodeport_addresses=args.nodeport_addresses,
        masquerade_all=args.masquerade_all,
        masquerade_bit=args.masquerade_bit,
        proxy_name=args.proxy_name,
        iptables_backend=IptablesBackendChoice(args.iptables_backend),
    )
    backend, variant = build_backend(cfg)
    name = "ipvs" if cfg.proxy_mode is ProxyMode.IPVS else f"iptables {variant}"
    return backend, name
