"""Backends turn a :class:`~proxyd.model.NodePlan` into kernel state.

Every backend implements :class:`Backend`. ``sync(plan, full=...)`` diffs ``plan`` against
the last plan it applied successfully (``ServicePlan`` equality), writes only what
differs unless ``full`` is set, and returns a :class:`SyncResult` as a value instead of
raising for kernel refusals. After a failed sync the backend forces its next sync to be
full by itself, and the rules already programmed stay in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from proxyd.model import NodePlan, ServicePortKey

if TYPE_CHECKING:
    from proxyd.backends.iptables import Variant
    from proxyd.config import Config

__all__ = ["Backend", "SyncResult", "build_backend"]


@dataclass(frozen=True, slots=True)
class SyncResult:
    """Outcome of one sync. ``written`` are the service ports whose rules were rewritten
    (all of them on a full sync), ``removed`` those whose rules were deleted; ``rules``
    counts the rules now programmed per table (``nat``, ``filter``, ``ipvs`` …);
    ``error`` is a one-line reason when ``ok`` is false, ``detail`` the context (e.g. the
    restore lines around the failing one); ``warnings`` are (reason, message) pairs an
    operator must hear about even when the sync succeeded (e.g. an IPVS scheduler fell
    back to the default): the daemon turns them into events and a metric."""

    ok: bool
    full: bool
    written: frozenset[ServicePortKey] = frozenset()
    removed: frozenset[ServicePortKey] = frozenset()
    rules: Mapping[str, int] = field(default_factory=dict)
    error: str | None = None
    detail: str = ""
    warnings: tuple[tuple[str, str], ...] = ()


class Backend(Protocol):
    """What the sync loop drives: iptables, ipvs, …"""

    def sync(self, plan: NodePlan, *, full: bool) -> SyncResult: ...

    def cleanup(self) -> None: ...


def build_backend(cfg: Config) -> tuple[Backend, Variant]:
    """The backend ``cfg.proxy_mode`` asks for, on real commands and netlink, and the
    iptables variant it writes with (detected once, here). ``proxyd run`` and
    ``proxyd apply`` both build theirs here, so the two cannot drift apart."""
    from proxyd.backends.commands_runner import SubprocessRunner
    from proxyd.backends.conntrack import ConntrackCleaner
    from proxyd.backends.iptables import IptablesBackend, available_families, resolve_variant
    from proxyd.backends.iptables_render import RenderOptions
    from proxyd.backends.sysctl import ProcSysctls
    from proxyd.config import ProxyMode

    runner = SubprocessRunner()
    variant = resolve_variant(runner, cfg.iptables_backend.value)
    cluster_cidrs = tuple(cfg.cluster_cidr.split(",")) if cfg.cluster_cidr else ()
    if cfg.proxy_mode is ProxyMode.IPVS:
        from proxyd.backends.ipvs import IpvsBackend
        from proxyd.backends.ipvs_plan import IpvsOptions

        ipvs_options = IpvsOptions(
            default_scheduler=cfg.ipvs_scheduler,
            nodeport_addresses=cfg.nodeport_addresses,
            cluster_cidrs=cluster_cidrs,
            masquerade_all=cfg.masquerade_all,
            masquerade_bit=cfg.masquerade_bit,
        )
        # the variant detected above, not detected again; IPv6 too when the kernel has it
        ipvs = IpvsBackend.real(
            ipvs_options,
            iptables_backend=variant.value,
            interface=cfg.ipvs_interface,
            strict_arp=cfg.ipvs_strict_arp,
        )
        return ipvs, variant
    options = RenderOptions(
        cluster_cidrs=cluster_cidrs,
        masquerade_all=cfg.masquerade_all,
        nodeport_addresses=cfg.nodeport_addresses,
        masquerade_bit=cfg.masquerade_bit,
        localhost_nodeports=cfg.localhost_nodeports,
    )
    backend = IptablesBackend(
        runner,
        variant,
        options=options,
        families=available_families(),
        conntrack=ConntrackCleaner(runner),
        sysctls=ProcSysctls(),
    )
    return backend, variant
