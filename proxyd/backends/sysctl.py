"""Kernel settings the backends need, written through one small seam.

Both modes need a few sysctls (IPVS: ``net/ipv4/vs/*``, forwarding, strict ARP; iptables:
``route_localnet`` for localhost NodePorts). A container that is not privileged sees
``/proc/sys`` read-only, so a value is read first and written only when it differs: a
node whose settings are already right (``/etc/sysctl.d``) works without the privilege.
"""

from __future__ import annotations

import os
from typing import Protocol

from proxyd.errors import BackendError

__all__ = ["ProcSysctls", "Sysctls"]


class Sysctls(Protocol):
    """Kernel settings of the network namespace the rules go into."""

    def ensure(self, key: str, value: str) -> None:
        """Set ``key`` (a path under /proc/sys, e.g. ``net/ipv4/ip_forward``) to ``value``
        unless it already is; :class:`BackendError` when it cannot be read or written."""
        ...


class ProcSysctls:
    """:class:`Sysctls` on ``/proc/sys`` of this process's network namespace."""

    def __init__(self, root: str = "/proc/sys") -> None:
        self._root = root

    def ensure(self, key: str, value: str) -> None:
        path = os.path.join(self._root, key)
        try:
            with open(path, encoding="ascii") as current:
                if current.read().strip() == value:
                    return
            with open(path, "w", encoding="ascii") as new:
                new.write(value)
        except OSError as exc:
            name = key.replace("/", ".")
            raise BackendError(f"cannot set {name}={value}: {exc.strerror or exc}") from exc
