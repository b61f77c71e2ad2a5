"""``proxyd plan``: what a node would program for each service port, and why.

Reads manifests (offline) or lists the API once, builds the node's plan with
:func:`proxyd.plan.build_plan` and prints it without touching the kernel, so operators
can see the topology decision without root. Notes (ignored kinds, an unknown node) go to
stderr; the plan alone goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from proxyd.model import ClusterSnapshot, Endpoint, NodePlan, ServicePlan

if TYPE_CHECKING:
    from rich.text import Text

__all__ = [
    "FORMATS",
    "add_source_arguments",
    "load_snapshot",
    "plan_to_json",
    "register",
    "service_plan_to_json",
]

FORMATS: tuple[str, ...] = ("json", "table", "ipvs")
"""Output formats of ``--format``; the first is the default."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="print the endpoints each service port gets on a node, and why",
        description="Print, for every service port, the endpoints NODE would send its "
        "traffic to and the rule that chose them. Changes nothing.",
    )
    parser.add_argument("--node", required=True, help="the node to plan for")
    add_source_arguments(parser)
    parser.add_argument("--format", choices=FORMATS, default=FORMATS[0])
    parser.add_argument(
        "--proxy-name",
        default="proxyd",
        help="services labelled service.kubernetes.io/service-proxy-name with another "
        "name belong to another proxy (default: %(default)s)",
    )
    parser.set_defaults(handler=run)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the read-only commands (plan, explain) get the cluster from: exactly one of
    ``--manifests`` and ``--kubeconfig``; :func:`load_snapshot` reads it."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--manifests",
        action="extend",
        nargs="+",
        metavar="PATH",
        help="YAML/JSON file or directory of Services, EndpointSlices, Nodes and NodePools "
        "(repeatable)",
    )
    source.add_argument("--kubeconfig", metavar="FILE", help="list the objects from this cluster")


def load_snapshot(
    manifests: Sequence[str] | None, kubeconfig: str | None, note: Callable[[str], None]
) -> ClusterSnapshot:
    """The cluster from manifests (offline; what they hold but proxyd ignores goes to
    ``note``) or, without manifests, from one listing of the API."""
    if manifests is None:
        from proxyd.sources.kube import snapshot_once

        return snapshot_once(kubeconfig)
    from proxyd.sources.manifests import load
    from proxyd.store import ClusterState

    state = ClusterState()
    for text in load(manifests, state):
        note(text)
    return state.snapshot()


def run(args: argparse.Namespace) -> int:
    from proxyd.plan import build_plan

    snapshot = load_snapshot(args.manifests, args.kubeconfig, _note)
    if args.node not in snapshot.nodes:
        _note(
            f"node {args.node} not found among {len(snapshot.nodes)} nodes: planning "
            "without its labels or pool"
        )
    plan = build_plan(snapshot, args.node, proxy_name=args.proxy_name)
    if args.format == "table":
        _print_table(plan)
    elif args.format == "ipvs":  # what IPVS mode would program, ipvsadm -Ln style
        from proxyd.backends.ipvs_plan import listing

        sys.stdout.write(listing(plan))
    else:
        print(json.dumps(plan_to_json(plan), indent=2))
    return 0


def _note(text: str) -> None:
    print(f"proxyd plan: note: {text}", file=sys.stderr)


def plan_to_json(plan: NodePlan) -> dict[str, Any]:
    """The documented JSON shape of a node plan (issue 3); services keep the plan's order."""
    return {"node": plan.node, "services": [service_plan_to_json(sp) for sp in plan.services]}


def service_plan_to_json(sp: ServicePlan) -> dict[str, Any]:
    """One service port; endpoint lists sorted, empty when traffic is rejected/dropped.
    ``clusterEndpoints`` (the short-circuit set) only where the plan has that set."""
    port = sp.port
    entry: dict[str, Any] = {
        "service": str(port.key.service),
        "portName": port.key.port_name,
        "protocol": port.key.protocol.value,
        "port": port.port,
        "clusterIPs": list(port.cluster_ips),
        "nodePort": port.node_port,
        "externalIPs": list(port.external_ips),
        "loadBalancerIPs": list(port.load_balancer_ips),
        "mode": sp.mode,
        "internalEndpoints": _addrs(sp.internal),
        "externalEndpoints": _addrs(sp.external),
        "reason": sp.reason,
        "warnings": list(sp.warnings),
    }
    if sp.cluster is not None:
        entry["clusterEndpoints"] = _addrs(sp.cluster)
    return entry


def _addrs(endpoints: Sequence[Endpoint]) -> list[str]:
    return sorted(ep.addr for ep in endpoints)


def _print_table(plan: NodePlan) -> None:
    """A rich table; addresses never wrap or get cut, only the mode column wraps."""
    from rich.console import Console
    from rich.table import Table

    rows = [_table_row(service_plan_to_json(sp)) for sp in plan.services]
    table = Table(title=f"proxyd plan for node {plan.node}", show_lines=True)
    for index, name in enumerate(("Service port", "Endpoints")):
        widest = max((line.cell_len for row in rows for line in row[index].split()), default=0)
        table.add_column(name, no_wrap=True, min_width=max(widest, len(name)))
    table.add_column("Mode", ratio=1, min_width=20)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _table_row(row: dict[str, Any]) -> tuple[Text, Text, Text]:
    """(service port and its addresses, endpoints, mode and why)."""
    from rich.text import Text

    port = Text(row["service"], style="bold")
    port.append(f"\n{row['portName']} " if row["portName"] else "\n")
    port.append(f"{row['port']}/{row['protocol']}")
    addresses = [*row["clusterIPs"], *row["externalIPs"], *row["loadBalancerIPs"]]
    if row["nodePort"] is not None:
        addresses.append(f"nodePort {row['nodePort']}")
    for address in addresses:
        port.append(f"\n{address}", style="dim")

    internal, external = row["internalEndpoints"], row["externalEndpoints"]
    endpoints = Text("\n".join(internal)) if internal else Text("none: reject", style="red")
    if external != internal:
        endpoints.append("\nexternal:", style="bold")
        endpoints.append("".join(f"\n{addr}" for addr in external) or "\nnone: drop")
    if "clusterEndpoints" in row:
        endpoints.append("\nshort-circuit:", style="bold")
        endpoints.append("".join(f"\n{a}" for a in row["clusterEndpoints"]) or "\nnone: reject")

    mode = Text(row["mode"], style="bold")
    if row["reason"]:
        mode.append(f"\n{row['reason']}")
    for warning in row["warnings"]:
        mode.append(f"\n! {warning}", style="yellow")
    return port, endpoints, mode
