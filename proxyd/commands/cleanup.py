"""``proxyd cleanup``: remove everything proxyd programmed, in either proxy mode.

iptables: deletes every chain of both modes (``PROXYD-*``, ``PROXYD-IPVS-*``) and every
rule that jumps to one, per family, in one restore each; ``--iptables-backend auto``
cleans both nft and legacy tables (whichever are installed): stale rules may sit in
either. IPVS mode: proxyd's virtual servers (through the IPVS backend's own cleanup, when
the kernel has IPVS), then every ``PROXYD-*`` ipset and proxyd's device (``proxyd-ipvs0``,
or the one ``--ipvs-interface`` names, as given to ``run``/``apply``) — these last two
also on a kernel without IPVS, where a failed start may have left them.
Chains go first: the kernel refuses to destroy an ipset a rule still uses.

With ``--kube-proxy`` it also removes what kube-proxy leaves behind (``KUBE-SERVICES``,
``KUBE-SVC-*`` …, never the kubelet's own chains; in IPVS mode its virtual servers —
those on an address bound on ``kube-ipvs0``, or on a local address with a port in its
``KUBE-NODE-PORT-*`` sets (SCTP: the address and port in its ``…-SCTP-HASH`` sets),
recognised before those go — then its ``KUBE-*`` ipsets and ``kube-ipvs0``), for nodes
that switch from kube-proxy to proxyd. ``--kube-proxy-only`` removes kube-proxy's
leftovers and keeps proxyd's state: that is the step of a migration without downtime, run
while proxyd already serves the node (when proxyd's device is ``kube-ipvs0`` it stays,
and a virtual server proxyd owns too is never removed). Idempotent.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterable, Mapping

from proxyd.commands.apply import add_ipvs_interface_option
from proxyd.config import IptablesBackendChoice
from proxyd.model import Protocol

__all__ = ["KUBE_PROXY_NODE_PORT_SETS", "owned_devices", "owned_ipsets", "register"]

_KUBE_PROXY_DEVICE = "kube-ipvs0"
#: kube-proxy's NodePort sets, IPv4 and (``KUBE-6-``) IPv6, each also as ``-LOCAL-``
#: (externalTrafficPolicy Local): bitmap:port for TCP and UDP, hash:ip,port (node IP and
#: port) named ``…-SCTP-HASH`` for SCTP. Like kube-proxy, names are cut to ipset's 31
#: characters (``KUBE-6-NODE-PORT-LOCAL-SCTP-HAS``).
KUBE_PROXY_NODE_PORT_SETS: Mapping[Protocol, tuple[str, ...]] = {
    p: tuple(
        f"KUBE-{six}NODE-PORT-{local}{p}{'-HASH' if p is Protocol.SCTP else ''}"[:31]
        for six in ("", "6-")
        for local in ("", "LOCAL-")
    )
    for p in Protocol
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "cleanup",
        help="remove proxyd's chains, ipsets and IPVS state (and kube-proxy's with --kube-proxy)",
        description="Remove every chain, ipset, IPVS virtual server and device proxyd "
        "created, and the rules jumping to its chains.",
    )
    owners = parser.add_mutually_exclusive_group()
    owners.add_argument(
        "--kube-proxy", action="store_true", help="also remove kube-proxy's leftovers"
    )
    owners.add_argument(
        "--kube-proxy-only", action="store_true",
        help="remove only kube-proxy's leftovers, keep proxyd's rules (migration of a live node)",
    )  # fmt: skip
    parser.add_argument(
        "--iptables-backend", choices=[c.value for c in IptablesBackendChoice], default="auto",
        help="which iptables to clean; auto cleans both (default: %(default)s)",
    )  # fmt: skip
    add_ipvs_interface_option(parser)
    parser.set_defaults(handler=run)


def owned_ipsets(names: Iterable[str], *, proxyd: bool = True, kube_proxy: bool) -> list[str]:
    """The ipsets cleanup destroys: proxyd's (``PROXYD-``) and/or kube-proxy's (``KUBE-``)."""
    prefixes = (*(("PROXYD-",) if proxyd else ()), *(("KUBE-",) if kube_proxy else ()))
    return sorted(n for n in names if n.startswith(prefixes))


def run(args: argparse.Namespace) -> int:
    own = not args.kube_proxy_only
    kube_proxy = args.kube_proxy or args.kube_proxy_only
    _remove_chains(args.iptables_backend, own=own, kube_proxy=kube_proxy)
    _remove_ipvs_state(args.iptables_backend, args.ipvs_interface, own=own, kube_proxy=kube_proxy)
    return 0


def owned_devices(interface: str, *, own: bool, kube_proxy: bool) -> list[str]:
    """The devices cleanup deletes: proxyd's ``interface`` and/or kube-proxy's
    ``kube-ipvs0`` — never proxyd's own when only kube-proxy's leftovers go."""
    mine = [interface] if own else []
    theirs = [_KUBE_PROXY_DEVICE] if kube_proxy and (own or interface != _KUBE_PROXY_DEVICE) else []
    return sorted({*mine, *theirs})


def _remove_chains(iptables_backend: str, *, own: bool, kube_proxy: bool) -> None:
    from proxyd.backends.commands_runner import SubprocessRunner
    from proxyd.backends.iptables import Variant, available_families, remove_chains, tool
    from proxyd.backends.iptables_render import KUBE_PROXY, PROXYD
    from proxyd.backends.ipvs_plan import CHAINS

    ipvs_chains = frozenset(c for chains in CHAINS.values() for c in chains)

    def owns(chain: str) -> bool:
        return (own and (PROXYD.owns(chain) or chain in ipvs_chains)) or (
            kube_proxy and KUBE_PROXY.owns(chain)
        )

    runner = SubprocessRunner()
    auto = iptables_backend == "auto"
    for variant in list(Variant) if auto else [Variant(iptables_backend)]:
        for family in available_families():
            if auto and shutil.which(tool(variant, family, "save")) is None:
                continue
            removed = remove_chains(runner, variant, family, owns)
            what = "removed" if removed else "nothing to remove"
            print(f"proxyd cleanup: {tool(variant, family)}: {what}")


def _remove_ipvs_state(
    iptables_backend: str, interface: str, *, own: bool, kube_proxy: bool
) -> None:
    """Virtual servers when the kernel has IPVS — kube-proxy's through
    :meth:`IpvsBackend.remove_foreign` while ``kube-ipvs0`` and its sets still mark them,
    proxyd's through :meth:`IpvsBackend.cleanup` — then whatever ipsets and devices are
    left (all of them on a kernel without IPVS)."""
    from proxyd.backends.ipvs import IpvsBackend
    from proxyd.backends.ipvs_netlink import (
        has_link,
        ipset_names,
        local_addresses,
        remove_links_and_sets,
    )
    from proxyd.errors import BackendError

    sets = owned_ipsets(ipset_names(), proxyd=own, kube_proxy=kube_proxy)
    wanted = owned_devices(interface, own=own, kube_proxy=kube_proxy)
    devices = [d for d in wanted if has_link(d)]
    try:
        backend = IpvsBackend.real(iptables_backend=iptables_backend, interface=interface)
    except BackendError as exc:
        print(f"proxyd cleanup: IPVS: skipped ({exc})")
    else:
        if kube_proxy:
            local = local_addresses()
            gone = backend.remove_foreign(_KUBE_PROXY_DEVICE, KUBE_PROXY_NODE_PORT_SETS, local)
            what = f"removed {len(gone)}" if gone else "nothing to remove"
            print(f"proxyd cleanup: IPVS: kube-proxy's virtual servers: {what}")
        if own:
            backend.cleanup()
            print("proxyd cleanup: IPVS: proxyd's virtual servers removed")
    remove_links_and_sets(devices, sets)
    print(f"proxyd cleanup: ipsets: {_listed(sets)}")
    print(f"proxyd cleanup: devices: {_listed(devices)}")


def _listed(names: list[str]) -> str:
    return f"removed {', '.join(names)}" if names else "nothing to remove"
