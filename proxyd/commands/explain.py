"""``proxyd explain NS/NAME --node NODE``: why each endpoint is in or out, in words.

Operators ask "the hints are there, why does traffic still cross zones?". This command
answers per endpoint and per traffic category, from the same decision the data path
uses (:func:`proxyd.topology.explain`), for every port of one service. Read-only.
"""

from __future__ import annotations

import argparse
import sys

from proxyd.commands.plan import add_source_arguments, load_snapshot
from proxyd.errors import SourceError
from proxyd.model import ClusterSnapshot, ServiceRef

__all__ = ["explain_service", "register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="say why each endpoint of a service is used or not on a node",
        description="For every port of SERVICE, list each endpoint and say, in plain "
        "words, whether NODE sends internal (ClusterIP) and external (NodePort, "
        "externalIP, LB) traffic to it, and which rule decided; with both traffic policies "
        "Local, also whether its pods and itself reach it through an external address "
        "(short-circuit). Changes nothing.",
    )
    parser.add_argument("service", metavar="NAMESPACE/NAME", type=_parse_ref)
    parser.add_argument("--node", required=True, help="the node whose view to explain")
    add_source_arguments(parser)
    parser.add_argument("--port", metavar="NAME", help="only this port (by name)")
    parser.add_argument(
        "--proxy-name",
        default="proxyd",
        help="proxyd's name for service.kubernetes.io/service-proxy-name (default: %(default)s)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    snapshot = load_snapshot(args.manifests, args.kubeconfig, _note)
    if args.node not in snapshot.nodes:
        _note(f"node {args.node} not found: explaining without its labels or pool")
    print(
        explain_service(
            snapshot, args.service, args.node, proxy_name=args.proxy_name, port=args.port
        )
    )
    return 0


def _parse_ref(text: str) -> ServiceRef:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, not {text!r}")
    return ServiceRef(namespace, name)


def _note(text: str) -> None:
    print(f"proxyd explain: note: {text}", file=sys.stderr)


def explain_service(
    snapshot: ClusterSnapshot,
    ref: ServiceRef,
    node_name: str,
    *,
    proxy_name: str = "proxyd",
    port: str | None = None,
) -> str:
    """The explanation text for one service on one node (pure; the command prints it)."""
    from proxyd import topology
    from proxyd.plan import port_endpoints, skip_reason, slices_by_service

    svc = snapshot.services.get(ref)
    if svc is None:
        raise SourceError(f"Service {ref} not found")
    skipped = skip_reason(svc, proxy_name)
    if skipped is not None:
        return f"Service {ref}: proxyd programs nothing for it, because {skipped}."
    ports = port_endpoints(svc, slices_by_service(snapshot.slices, {ref}).get(ref, []))
    if port is not None:
        ports = tuple(p for p in ports if p[0].key.port_name == port)
        if not ports:
            names = ", ".join(repr(p.name) for p in svc.ports) or "none"
            raise SourceError(f"Service {ref} has no port named {port!r} (ports: {names})")
    if not ports:
        return f"Service {ref} has no ports: nothing to program."
    node = topology.node_view(snapshot, node_name)
    lines = [f"Service {ref} as seen from node {node_name}"]
    for service_port, endpoints in ports:
        key = service_port.key
        result = topology.explain(svc, endpoints, node, node_port=service_port.node_port)
        sel = result.selection
        lines.append("")
        lines.append(
            f"port {key.port_name or '(unnamed)'}/{key.protocol} {service_port.port}: "
            f"mode {sel.mode}"
        )
        lines.append(f"  {sel.reason}")
        lines.extend(f"  warning: {w}" for w in sel.warnings)
        if not result.verdicts:
            lines.append("  no endpoints: traffic to this port is rejected")
        for v in result.verdicts:
            where = f"node {v.endpoint.node_name}" if v.endpoint.node_name else "no node"
            lines.append(f"  {v.endpoint.addr} ({where})")
            lines.append(f"    internal: {v.internal_why}")
            same = v.external_why == v.internal_why
            lines.append(f"    external: {'same as internal' if same else v.external_why}")
            if v.cluster_why is not None:
                lines.append(f"    short-circuit: {v.cluster_why}")
    return "\n".join(lines)
