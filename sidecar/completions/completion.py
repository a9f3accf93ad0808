"""What a completion is: the decoded event a source carried, and the result of one call.

    Event       one message of a completion source, decoded: the id it names, its type, its
                data (kept as the raw bytes, parsed only when used), where it was read
                (the stream key and the entry's position)
    Message     one broker message as a source hands it over, free of the library that read it
    Completion  the result of one call, however it was learnt (an event, or a poll)

An event's data is JSON text when it parses; other text is data too (not JSON). A message
without the id, with fields that are not UTF-8, whose data looks like JSON (`{`, `[`) but does
not parse, or whose data the sidecar could not send on is malformed (`MalformedEvent`): counted
and logged by the readers, never fatal. Data is checked at intake against what the encoder will
have to do with it later (a payload, a problem body): at most `MAX_DATA_BYTES`, nested at most
`MAX_DATA_DEPTH` levels (orjson reads 1,024 levels but writes only 255, and an answer wraps the
data once more), no number outside a double's range (orjson refuses those on reading).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ..config import StreamWait

Status = Literal["succeeded", "failed"]

MAX_DATA_BYTES = 16 * 1024 * 1024  # a completion's data; larger is malformed
MAX_DATA_DEPTH = 128  # levels of nesting of a completion's JSON data; deeper is malformed


class MalformedEvent(ValueError):
    """A message that cannot be a completion (no id, undecodable, broken JSON)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One broker message (Kafka record, AMQP delivery, NATS JetStream message) as a source
    hands it to the decoder: the readers translate their library's objects into this, so
    nothing above `sources/` knows a broker library."""

    position: str  # where it was read: `partition:offset`, a stream sequence, a delivery tag
    body: bytes
    headers: Mapping[str, bytes] = field(default_factory=dict)
    # Properties of the message itself, named with a leading @: `@key` (Kafka's record key),
    # `@routing_key` (AMQP), `@subject` (NATS).
    properties: Mapping[str, bytes] = field(default_factory=dict)
    timestamp_s: float | None = None  # the broker's (or the publisher's) time stamp


EVENT_OVERHEAD = 400  # bytes a cached event costs beyond its data and ids (objects, dict slot)


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded message of a completion source. Its data stays the raw bytes of the data
    field (validated, parsed again only when used), so a cached event costs about its size,
    not a parsed tree."""

    stream: str  # the stream key (topic, exchange, subject) it was read from
    entry_id: str  # its position there (a stream entry id)
    correlation_id: str
    event_type: str | None
    raw: bytes | None  # the data field as sent, None when absent
    is_json: bool
    traceparent: str = ""  # the message's W3C trace context header, when it carried one
    timestamp_s: float | None = None  # when a broker stamped the message (Redis: in entry_id)

    @property
    def data(self) -> Any:
        """The data: parsed JSON, or the text itself, or None when absent."""
        return parse_data(self.raw, self.is_json)

    @property
    def size(self) -> int:
        """About how many bytes this event holds in memory."""
        raw = len(self.raw) if self.raw else 0
        return raw + len(self.correlation_id) + len(self.entry_id) + EVENT_OVERHEAD

    def verdict(self, spec: StreamWait) -> Status | None:
        """succeeded / failed by a route's type lists; None when the type is not the route's."""
        if self.event_type in spec.success:
            return "succeeded"
        if self.event_type in spec.failure:
            return "failed"
        return None

    def completion(self, status: Status) -> Completion:
        """The completion this event means for a route that judged it `status`."""
        return Completion(
            self.correlation_id, status, self.data, self.is_json, self.event_type, raw=self.raw
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """The result of one call, however it was learnt (stream event or poll)."""

    correlation_id: str
    status: Status
    data: Any
    is_json: bool
    event_type: str | None = None
    source: Literal["stream", "poll"] = "stream"
    raw: bytes | None = None  # the data as sent (JSON text), when it came as bytes

    @property
    def succeeded(self) -> bool:
        """True for a success."""
        return self.status == "succeeded"


def parse_data(raw: bytes | None, is_json: bool) -> Any:
    """The value of a data field: parsed JSON, or the text itself (None stays None)."""
    if raw is None:
        return None
    return orjson.loads(raw) if is_json else raw.decode("utf-8", "replace")


def check_data(raw: bytes | None) -> bool:
    """Whether a data field is JSON; raises `MalformedEvent` for one that looks like JSON
    (`{`, `[`) but does not parse, and for data past the limits (see the module). Other text
    is data too (not JSON)."""
    if raw is None:
        return False
    if len(raw) > MAX_DATA_BYTES:
        raise MalformedEvent(f"data larger than {MAX_DATA_BYTES} bytes")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if raw.lstrip()[:1] in (b"{", b"["):
            raise MalformedEvent("data is not valid JSON") from None
        return False
    check_value(value)
    return True


def check_value(value: Any) -> None:
    """Raise `MalformedEvent` when parsed JSON nests deeper than `MAX_DATA_DEPTH`."""
    if too_deep(value, MAX_DATA_DEPTH):
        raise MalformedEvent(f"data nested deeper than {MAX_DATA_DEPTH} levels")


def too_deep(value: Any, limit: int) -> bool:
    """True when containers nest deeper than `limit` levels in `value` (walked without
    recursion, so no value can exhaust the stack; scalars are never pushed)."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False
