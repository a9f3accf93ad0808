"""Logging set-up: one structured line per event, JSON or text.

Modules log with `logging.getLogger(__name__)` and pass structured fields through `extra=`; the
JSON formatter emits them as keys. The per-call access line goes to the `sidecar.access` logger.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import orjson

from .timestamps import iso
from .trace import TraceFields

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every `extra` field."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable: the message followed by `key=value` fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        base = (
            f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        text = f"{base} {fields}" if fields else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class Every:
    """Lets something happen at most once every `interval_s`: a log line that would otherwise
    repeat for every call while a dependency is down. `skipped` counts what it held back since
    it last said yes."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._last = -interval_s
        self.skipped = 0

    def ready(self) -> bool:
        """True at most once per interval (and then `skipped` restarts from 0 after use)."""
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            return True
        self.skipped += 1
        return False

    def take_skipped(self) -> int:
        """How many were held back since the last line, and start counting anew."""
        skipped, self.skipped = self.skipped, 0
        return skipped


class WorkerField(logging.Filter):
    """Adds `worker` (its index) to every line a worker process writes."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    """Route the root logger to stderr in the chosen format; quiet aiohttp's own access log."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(TraceFields())
    worker = os.environ.get("SIDECAR_WORKER_INDEX")
    if worker is not None:
        handler.addFilter(WorkerField(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
