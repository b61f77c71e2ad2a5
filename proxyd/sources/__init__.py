"""Where objects come from: the API server (``kube``) or files (``manifests``).

Both hand raw JSON dicts to ``translate``, the only module that reads Kubernetes API
field names; everything past this package sees :mod:`proxyd.model` types only. The
submodules are not imported here so that importing the package never pulls in the
``kubernetes`` client.
"""

from __future__ import annotations

__all__: list[str] = []
