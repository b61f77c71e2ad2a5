"""Sub-commands of ``proxyd``; each module has ``register(subparsers)``."""
