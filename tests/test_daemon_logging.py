"""Structured log lines: JSON and key=value text, levels."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from proxyd.config import LogFormat
from proxyd.logging_setup import kv, setup


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_json_lines_carry_fields() -> None:
    out = io.StringIO()
    setup(LogFormat.JSON, "info", out)
    logging.getLogger("proxyd.sync").info("synced %d", 3, extra=kv(full=True, service="a/b"))
    logging.getLogger("proxyd.sync").debug("hidden")
    [line] = out.getvalue().splitlines()
    doc = json.loads(line)
    assert {k: doc[k] for k in ("level", "logger", "msg", "full", "service")} == {
        "level": "info", "logger": "proxyd.sync", "msg": "synced 3", "full": True,
        "service": "a/b",
    }
    assert doc["ts"].endswith("+00:00")


@pytest.mark.usefixtures("restore_root_logger")
def test_text_lines_quote_values_with_spaces() -> None:
    out = io.StringIO()
    setup(LogFormat.TEXT, "debug", out)
    logging.getLogger("proxyd").debug("mode changed", extra=kv(service="a/b", reason="no pool"))
    line = out.getvalue().strip()
    assert line.split(" ", 1)[1] == 'debug proxyd mode changed service=a/b reason="no pool"'


@pytest.mark.usefixtures("restore_root_logger")
def test_level_filters() -> None:
    out = io.StringIO()
    setup(LogFormat.TEXT, "warning", out)
    logging.getLogger("proxyd").info("quiet")
    logging.getLogger("proxyd").warning("loud")
    assert "quiet" not in out.getvalue()
    assert "loud" in out.getvalue()
