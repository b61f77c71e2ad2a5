"""The node's connection-tracking limits and timeouts, tuned once at start as kube-proxy does.

kube-proxy's ``conntrack`` settings (``maxPerCore``, ``min``, the TCP and UDP timeouts,
``tcpBeLiberal``) carry over: :func:`decide` turns them, the node's CPU count and the
kernel's current values into the writes to make, and :func:`apply` makes them through
:class:`~proxyd.backends.sysctl.Sysctls`. Unlike kube-proxy, which exits when a write
fails, proxyd logs one warning per setting, naming the ``/etc/sysctl.d`` line that does
the same on the host, and carries on: a container that is not privileged sees ``/proc/sys``
and ``/sys`` read-only, and forwarding works without the tuning (the table just fills
sooner). This is not ``backends/conntrack.py``, which deletes stale UDP entries.

What the kernel allows where: the timeouts and ``tcp_be_liberal`` belong to each network
namespace; ``nf_conntrack_max`` and the hash table size are global and can only be changed
from the host's (initial) namespace, elsewhere the writes fail and are reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from proxyd.backends.sysctl import ProcSysctls, Sysctls
from proxyd.config import Config
from proxyd.errors import BackendError
from proxyd.logging_setup import kv

__all__ = [
    "HASHSIZE",
    "MAX",
    "MAX_SCALED_LIMIT",
    "WARNING_REASON",
    "Applied",
    "FileReader",
    "Reader",
    "Write",
    "apply",
    "conntrack_max",
    "decide",
    "tune_at_start",
]

log = logging.getLogger("proxyd.conntrack_tuning")
#: reason label of a setting that could not be written (log lines and ``proxyd_warnings``)
WARNING_REASON = "ConntrackTuning"

# Keys are paths below "/", so one Sysctls rooted there reaches /proc/sys and /sys alike.
_NETFILTER = "proc/sys/net/netfilter/"
MAX = _NETFILTER + "nf_conntrack_max"
#: the hash table size as a module parameter, kube-proxy's way of setting it (the sysctl
#: ``net.netfilter.nf_conntrack_buckets`` is the same value)
HASHSIZE = "sys/module/nf_conntrack/parameters/hashsize"
_BUCKETS_SYSCTL = "net.netfilter.nf_conntrack_buckets"
#: kube-proxy (1.36+) caps ``maxPerCore`` times CPUs here: 32768 per core on a big machine
#: would reserve gigabytes for the table
MAX_SCALED_LIMIT = 1_048_576


class Reader(Protocol):
    """Reads the kernel's current integer values."""

    def read(self, key: str) -> int | None:
        """The value at ``key`` (a path below ``/``); None when it cannot be read."""
        ...


class FileReader:
    """:class:`Reader` on the files of this process's mount and network namespace."""

    def __init__(self, root: str = "/") -> None:
        self._root = root

    def read(self, key: str) -> int | None:
        try:
            with open(os.path.join(self._root, key), encoding="ascii") as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Write:
    """One value to ensure; ``key`` is a path below ``/`` (see :data:`MAX`), ``field`` the
    config file field it comes from."""

    key: str
    value: int
    field: str

    @property
    def sysctl(self) -> str:
        """The ``sysctl`` name that sets the same thing (``net.netfilter.…``)."""
        if self.key == HASHSIZE:
            return _BUCKETS_SYSCTL
        return self.key.removeprefix("proc/sys/").replace("/", ".")


def conntrack_max(max_per_core: int, minimum: int, cpus: int) -> int:
    """kube-proxy's ``nf_conntrack_max``: ``maxPerCore`` times CPUs, capped at
    :data:`MAX_SCALED_LIMIT`, and never below ``minimum``; 0 (leave the kernel's value
    alone) when ``maxPerCore`` is 0. An explicit ``minimum`` above the cap wins (kube-proxy
    lets the cap win there; docs/decisions.md)."""
    if max_per_core <= 0:
        return 0
    return max(min(max_per_core * cpus, MAX_SCALED_LIMIT), minimum)


def decide(cfg: Config, *, cpus: int, current: Mapping[str, int | None]) -> tuple[Write, ...]:
    """The writes that tune the node as kube-proxy would, given ``current`` values of
    :data:`MAX` and :data:`HASHSIZE` (None: unreadable, so try to write).

    ``nf_conntrack_max`` is only raised, never lowered (kube-proxy, since
    kubernetes#142035: an operator's larger value stays); the hash table is grown to a
    quarter of the wanted maximum when smaller. Timeouts of 0 and ``tcpBeLiberal: false``
    leave the kernel's values alone; the others are set exactly (lowered too), as
    kube-proxy does. Order: limit and table first, then timeouts.
    """
    writes: list[Write] = []
    limit = conntrack_max(cfg.conntrack_max_per_core, cfg.conntrack_min, cpus)
    if limit > 0:
        now = current.get(MAX)
        if now is None or now < limit:
            writes.append(Write(MAX, limit, "maxPerCore"))
        buckets = current.get(HASHSIZE)
        if buckets is None or buckets < limit // 4:
            writes.append(Write(HASHSIZE, limit // 4, "maxPerCore"))
    for name, value, field in (
        ("tcp_timeout_established", cfg.conntrack_tcp_timeout_established,
         "tcpEstablishedTimeout"),
        ("tcp_timeout_close_wait", cfg.conntrack_tcp_timeout_close_wait, "tcpCloseWaitTimeout"),
        ("tcp_be_liberal", float(cfg.conntrack_tcp_be_liberal), "tcpBeLiberal"),
        ("udp_timeout", cfg.conntrack_udp_timeout, "udpTimeout"),
        ("udp_timeout_stream", cfg.conntrack_udp_timeout_stream, "udpStreamTimeout"),
    ):
        if value >= 1:  # seconds (config refuses 0 < s < 1), or the flag as 1
            writes.append(Write(f"{_NETFILTER}nf_conntrack_{name}", int(value), field))
    return tuple(writes)


@dataclass(frozen=True, slots=True)
class Applied:
    """What :func:`apply` did: the writes now in effect, and one warning per write that
    failed, saying what to set on the host instead."""

    ensured: tuple[Write, ...]
    warnings: tuple[str, ...]


def apply(cfg: Config, *, cpus: int, reader: Reader, sysctls: Sysctls) -> Applied:
    """Make :func:`decide`'s writes (each only if the value differs); never raises: a
    failure is a warning and the next write is still tried."""
    current = {key: reader.read(key) for key in (MAX, HASHSIZE)}
    ensured: list[Write] = []
    warnings: list[str] = []
    for write in decide(cfg, cpus=cpus, current=current):
        try:
            sysctls.ensure(write.key, str(write.value))
        except BackendError as exc:
            cause = exc.__cause__
            why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
            warnings.append(
                f"conntrack: cannot set {write.sysctl}={write.value} (/{write.key}: {why}); "
                f"set it on the host ('{write.sysctl} = {write.value}' in "
                f"/etc/sysctl.d/90-proxyd.conf) or conntrack.{write.field}: 0 to leave it "
                "alone")
        else:
            ensured.append(write)
    return Applied(tuple(ensured), tuple(warnings))


def tune_at_start(cfg: Config) -> Applied:
    """:func:`apply` on this node (its files, the CPUs online, as kube-proxy counts them:
    the table is node-wide, so not this process's CPU affinity), logged."""
    applied = apply(cfg, cpus=os.cpu_count() or 1, reader=FileReader(),
                    sysctls=ProcSysctls(root="/"))
    if applied.ensured:
        log.info("conntrack tuned", extra=kv(**{w.sysctl: w.value for w in applied.ensured}))
    for warning in applied.warnings:
        log.warning("%s", warning, extra=kv(reason=WARNING_REASON))
    return applied
