"""W3C Trace Context: one trace joins a call, its polls, its completion and its deliveries.

A call's `traceparent` comes from the client when it sends a valid one (its trace id and flags
are kept, its `tracestate` passed on unchanged), else the sidecar starts a trace (sampled, as a
root span of an always-on tracer would be). The sidecar is one span of that trace: upstream
requests and polls carry the call's span as their parent; the tracking record keeps it, so a
webhook delivery, on any replica and however late, is sent as a child of the call's span.
Every log line written while a call (or a delivery) is handled carries `trace_id` and `span_id`
(the `current` context variable, read by the `TraceFields` log filter).

The sidecar records no spans itself: it propagates context and logs it, so a tracing backend
joins the upstream's spans and the webhook receivers' spans into one trace.
"""

from __future__ import annotations

import logging
import random
import re
from contextvars import ContextVar
from dataclasses import dataclass

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
MAX_TRACESTATE = 512  # W3C: a vendor may drop a longer one; we do

# version 00 exactly (a future version is read by its first four fields, as the spec asks)
_PARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_random = random.Random()  # ids need to be unique, not secret (they are sent in the clear)


@dataclass(frozen=True, slots=True)
class Trace:
    """One span's place in a trace: its `traceparent` (trace id, its own span id, the flags)
    and the tracestate. One string, sliced on demand: a held call keeps one of these."""

    traceparent: str
    state: str | None = None

    @property
    def trace_id(self) -> str:
        """The trace's id (32 hex digits)."""
        return self.traceparent[3:35]

    @property
    def span_id(self) -> str:
        """This span's id (16 hex digits)."""
        return self.traceparent[36:52]

    @property
    def flags(self) -> str:
        """The trace flags (2 hex digits; 01: sampled)."""
        return self.traceparent[53:55]

    def child(self) -> Trace:
        """A new span of the same trace (a delivery of a call's result)."""
        return span(self.trace_id, self.flags, self.state)

    def headers(self) -> dict[str, str]:
        """`traceparent` (and `tracestate`) for a request made within this span."""
        if self.state:
            return {TRACEPARENT: self.traceparent, TRACESTATE: self.state}
        return {TRACEPARENT: self.traceparent}


def span(trace_id: str, flags: str = "01", state: str | None = None) -> Trace:
    """A new span (its own random id) of the trace `trace_id`."""
    return Trace(f"00-{trace_id}-{new_span_id()}-{flags}", state)


def new_span_id() -> str:
    """A random non-zero span id (16 hex digits)."""
    return f"{_random.getrandbits(64) or 1:016x}"


def new_trace_id() -> str:
    """A random non-zero trace id (32 hex digits)."""
    return f"{_random.getrandbits(128) or 1:032x}"


def parse(traceparent: str | None) -> tuple[str, str] | None:
    """(trace id, flags) of a valid `traceparent`, else None (an invalid one is ignored, and a
    new trace started, as the spec says)."""
    if not traceparent or len(traceparent) > 512:
        return None
    match = _PARENT_RE.match(traceparent.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == "00" and rest:
        return None  # version 00 has exactly four fields
    return trace_id, f"{int(flags, 16) & 0x01:02x}"  # only the sampled flag is defined


def begin(traceparent: str | None, tracestate: str | None) -> Trace:
    """The sidecar's span of a call: a child of the client's span, else a new trace's root."""
    parent = parse(traceparent)
    if parent is None:
        return span(new_trace_id())
    state = tracestate.strip() if tracestate else None
    if state and (len(state) > MAX_TRACESTATE or not state.isascii()):
        state = None
    return span(parent[0], parent[1], state or None)


def from_traceparent(value: str | None) -> Trace | None:
    """The span a stored `traceparent` names (a tracked call's), None when there is none."""
    parsed = parse(value)
    if parsed is None or value is None:
        return None
    return Trace(f"00-{parsed[0]}-{value.split('-')[2]}-{parsed[1]}")


current: ContextVar[Trace | None] = ContextVar("trace", default=None)


class TraceFields(logging.Filter):
    """Adds `trace_id` and `span_id` to every line written within a traced call or delivery."""

    def filter(self, record: logging.LogRecord) -> bool:
        trace = current.get()
        if trace is not None and not hasattr(record, "trace_id"):
            record.trace_id = trace.trace_id
            record.span_id = trace.span_id
        return True
