"""Logging set-up: one structured line per event, JSON or text.

Modules log with `logging.getLogger(__name__)` and pass structured fields through `extra=`; the
JSON formatter emits them as keys. The per-call access line goes to the `sidecar.access` logger.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from .faults import REDIS_FAULTS
from .timestamps import iso
from .trace import TraceFields

logger = logging.getLogger(__name__)

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
        text = orjson.dumps(line, default=str).decode()  # control characters come out escaped
        if "\u2028" in text or "\u2029" in text:  # valid JSON, but line breaks to some readers
            text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        return text


# Control characters (C0, DEL, C1) and the Unicode line separators: a value carrying them (a
# path with %0d%0a or a terminal escape, say) could forge a line or rewrite the terminal.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_QUOTE = re.compile(r'[\s"=\\]')
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def _escaped(text: str) -> str:
    """`text` with every control character written as an escape (`\\n`, `\\x1b`, `\\u2028`)."""
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def _value(value: object) -> str:
    """A field's value for a `key=value` line: as it is when it is plain, else quoted, with
    backslashes and quotes escaped and control characters written as escapes (so no value
    can pose as another field or another line)."""
    text = str(value)
    if text and not _QUOTE.search(text) and not _UNSAFE.search(text):
        return text
    return '"' + _escaped(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


class TextFormatter(logging.Formatter):
    """Human-readable: the message followed by `key=value` fields, one line per record
    (control characters escaped, values quoted where they could pose as more fields); a
    traceback follows on lines of its own."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={_value(v)}" for k, v in _fields(record).items())
        message = _escaped(record.getMessage())
        base = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {message}"
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


LoopHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class LoopFaults:
    """The event loop's exception handler while Redis is in use: an exception nobody awaited
    (a connection's read cut by a failover, a future left with a Redis error) that is a Redis
    fault is counted through `count` and said in one WARNING line a second, without
    traceback; anything else goes to the handler it replaced (by default the loop's own: an
    ERROR with the traceback)."""

    def __init__(self, count: Callable[[], object], previous: LoopHandler | None) -> None:
        self.count, self.previous = count, previous
        self._every = Every()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, REDIS_FAULTS) or isinstance(
            getattr(exc, "__cause__", None), REDIS_FAULTS
        ):
            self.count()
            if self._every.ready():
                logger.warning(
                    "Redis fault outside any request or loop (a connection cut); counted",
                    extra={
                        "error": f"{exc.__class__.__name__}: {exc}",
                        "context": context.get("message", ""),
                        "since_last_line": self._every.take_skipped(),
                    },
                )
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


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
