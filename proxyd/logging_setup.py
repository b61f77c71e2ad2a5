"""Structured logs for the daemon: one line per record, as text (``key=value``) or JSON.

Code logs with the standard :mod:`logging` API and passes fields in ``extra={"kv": {...}}``
(see :func:`kv`), so a log pipeline can index ``service=``, ``duration=`` … instead of
parsing prose. Only ``proxyd run`` calls :func:`setup`; other commands keep Python's
default logging.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

from proxyd.config import LogFormat

__all__ = ["kv", "setup"]

_KV = "kv"


def kv(**fields: Any) -> dict[str, Any]:
    """``log.info("synced", extra=kv(services=3))``: structured fields of one record."""
    return {_KV: fields}


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    value = getattr(record, _KV, None)
    return value if isinstance(value, Mapping) else {}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_fields(record))
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, sort_keys=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname.lower(), record.name, record.getMessage()]
        parts += [f"{k}={_text_value(v)}" for k, v in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


def setup(fmt: LogFormat, level: str, stream: IO[str] | None = None) -> None:
    """Send every record at ``level`` or above to ``stream`` (stderr) in ``fmt``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt is LogFormat.JSON else _TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
