"""proxyd: a node-level kube-proxy replacement with topology-aware routing."""

__all__ = ["__version__"]

__version__ = "0.1.0"
