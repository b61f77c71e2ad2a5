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
from typing import Protocol

from proxyd.model import NodePlan, ServicePortKey

__all__ = ["Backend", "SyncResult"]


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
