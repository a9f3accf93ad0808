"""Completion events: decoding a stream entry, and what a completion carries.

A stream entry is decoded against a route's `wait.stream` spec (`id_field`, `type_field`,
`data_field`). The data field is JSON text; when it is not JSON it is kept as text. An entry
without the id field, or whose data looks like JSON (`{`/`[`) but does not parse, is malformed:
counted and logged by the reader, never fatal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .config import StreamWait

Status = Literal["succeeded", "failed"]


class MalformedEvent(ValueError):
    """A stream entry that cannot be a completion (no id, undecodable, broken JSON)."""


EVENT_OVERHEAD = 400  # bytes a cached event costs beyond its data and ids (objects, dict slot)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One decoded stream entry. Its data stays the raw bytes of the data field (validated,
    parsed again only when used), so a cached event costs about its size, not a parsed tree."""

    stream: str
    entry_id: str
    correlation_id: str
    event_type: str | None
    raw: bytes | None  # the data field as sent, None when absent
    is_json: bool

    @property
    def data(self) -> Any:
        """The data: parsed JSON, or the text itself, or None when absent."""
        return parse_data(self.raw, self.is_json)

    @property
    def size(self) -> int:
        """About how many bytes this event holds in memory."""
        raw = len(self.raw) if self.raw else 0
        return raw + len(self.correlation_id) + len(self.entry_id) + EVENT_OVERHEAD


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


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def parse_data(raw: bytes | None, is_json: bool) -> Any:
    """The value of a data field: parsed JSON, or the text itself (None stays None)."""
    if raw is None:
        return None
    return orjson.loads(raw) if is_json else raw.decode("utf-8", "replace")


def check_data(raw: bytes | None) -> bool:
    """Whether a data field is JSON; raises `MalformedEvent` for one that looks like JSON
    (`{`, `[`) but does not parse. Other text is data too (not JSON)."""
    if raw is None:
        return False
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        if raw.lstrip()[:1] in (b"{", b"["):
            raise MalformedEvent("data is not valid JSON") from None
        return False
    return True


def _field(fields: Mapping[Any, Any], name: str) -> bytes | str | None:
    value = fields.get(name)
    if value is None:
        value = fields.get(name.encode())
    return value


def decode_event(
    stream: str,
    entry_id: str,
    fields: Mapping[bytes, bytes] | Mapping[str, str],
    *,
    id_field: str,
    type_field: str,
    data_field: str,
) -> StreamEvent:
    """Decode one entry; raise `MalformedEvent` saying why it cannot be a completion."""
    try:
        cid = _field(fields, id_field)
        correlation_id = _text(cid) if cid is not None else ""
        kind = _field(fields, type_field)
        event_type = _text(kind) if kind is not None else None
        data = _field(fields, data_field)
        raw = _raw(data) if data is not None else None
        if raw is not None:
            raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEvent("fields are not UTF-8") from None
    if not correlation_id:
        raise MalformedEvent(f"no {id_field!r} field")
    return StreamEvent(stream, entry_id, correlation_id, event_type, raw, check_data(raw))


def decode_for(
    stream: str, entry_id: str, fields: Mapping[Any, Any], spec: StreamWait
) -> StreamEvent:
    """`decode_event` with a route's stream spec."""
    return decode_event(
        stream,
        entry_id,
        fields,
        id_field=spec.id_field,
        type_field=spec.type_field,
        data_field=spec.data_field,
    )


def classify(event: StreamEvent, spec: StreamWait) -> Status | None:
    """succeeded / failed by the route's type lists, or None when the type is not the route's."""
    if event.event_type in spec.success:
        return "succeeded"
    if event.event_type in spec.failure:
        return "failed"
    return None


def to_completion(event: StreamEvent, status: Status) -> Completion:
    """The completion an event means for a route."""
    return Completion(
        event.correlation_id,
        status,
        event.data,
        event.is_json,
        event.event_type,
        raw=event.raw,
    )
