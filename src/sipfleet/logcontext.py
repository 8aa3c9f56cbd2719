"""What every log line says about where it comes from: the role, the worker process, and
the Call-ID of the message being handled.

The endpoints set ``CALL_ID`` while a message is handled; a task started meanwhile (the
proxy's routing, its database lookups) copies the context, so its lines name the call
too. ``configure`` installs the filter that puts these on every record, as text or as
one JSON object per line (``[node] log_format``, ``--log-format``) for a log shipper.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
CALL_ID: ContextVar[str | None] = ContextVar("sipfleet_call_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = ("levelname", "name", "message", "role", "worker", "call_id")

_worker = 0


def set_worker(index: int) -> None:
    """This process is worker ``index`` of its role (called in each forked worker)."""
    global _worker
    _worker = index


class Origin(logging.Filter):
    """Adds ``role``, ``worker`` and ``call_id`` (None outside a message) to each record."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        record.worker = _worker
        record.call_id = CALL_ID.get()
        return True


def formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    return JsonFormatter(
        " ".join(f"%({field})s" for field in JSON_FIELDS),
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",  # ISO 8601, UTC, with milliseconds
        json_ensure_ascii=False,
    )


def configure(level: str, log_format: LogFormat = "text", role: str = "") -> None:
    """Log to stderr at ``level`` in ``log_format``; every record names ``role``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(Origin(role))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
