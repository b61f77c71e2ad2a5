"""proxyd's one exception tree.

    ProxydError
    ├── InputError          malformed object / manifest: names the object and the field
    ├── SourceError         API server or manifest file could not be read
    └── BackendError        the kernel refused what proxyd asked (restore, netlink)

Errors from third-party libraries are translated at the boundary with ``raise … from``.
Exceptions outside this tree are programmer bugs.
"""

from __future__ import annotations

__all__ = ["BackendError", "InputError", "ProxydError", "SourceError"]


class ProxydError(Exception):
    """Base of every error proxyd raises on purpose."""


class InputError(ProxydError):
    """A malformed object. ``where`` names the object (kind namespace/name, or file and
    document), ``field`` the JSON path of the bad field, ``reason`` a short machine
    label (used as a metric label)."""

    def __init__(self, where: str, field: str, message: str, reason: str = "invalid") -> None:
        super().__init__(f"{where}: {field}: {message}")
        self.where = where
        self.field = field
        self.message = message
        self.reason = reason


class SourceError(ProxydError):
    """Objects could not be fetched (file unreadable, API unreachable)."""


class BackendError(ProxydError):
    """The kernel rejected a change; the previous rules stay in place."""
