"""The app's log lines as production writes them (JSON, at INFO), captured in a test."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.observability import JsonLogFormatter


@contextmanager
def json_log() -> Iterator[io.StringIO]:
    """Capture what the ``app`` loggers write.  A test session that ran the
    migrations in its own process (Alembic's logging set-up) disabled the loggers
    that existed then: they are enabled while capturing, as in a served app, whose
    migrations run in another process."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("app")
    disabled = [child for name, child in logging.Logger.manager.loggerDict.items()
                if name.startswith("app.") and isinstance(child, logging.Logger)
                and child.disabled]
    previous = logger.level
    for child in disabled:
        child.disabled = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        for child in disabled:
            child.disabled = True


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]
