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


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One decoded stream entry."""

    stream: str
    entry_id: str
    correlation_id: str
    event_type: str | None
    data: Any  # parsed JSON, or the text itself, or None when absent
    is_json: bool


@dataclass(frozen=True, slots=True)
class Completion:
    """The result of one call, however it was learnt (stream event or poll)."""

    correlation_id: str
    status: Status
    data: Any
    is_json: bool
    event_type: str | None = None
    source: Literal["stream", "poll"] = "stream"

    @property
    def succeeded(self) -> bool:
        """True for a success."""
        return self.status == "succeeded"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def decode_data(text: str | None) -> tuple[Any, bool]:
    """(value, is_json): JSON when it parses, else the text itself (None stays None)."""
    if text is None:
        return None, False
    try:
        return orjson.loads(text), True
    except orjson.JSONDecodeError:
        if text.lstrip()[:1] in ("{", "["):
            raise MalformedEvent("data is not valid JSON") from None
        return text, False


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
        decoded = {_text(k): _text(v) for k, v in fields.items()}
    except UnicodeDecodeError:
        raise MalformedEvent("fields are not UTF-8") from None
    correlation_id = decoded.get(id_field)
    if not correlation_id:
        raise MalformedEvent(f"no {id_field!r} field")
    data, is_json = decode_data(decoded.get(data_field))
    return StreamEvent(stream, entry_id, correlation_id, decoded.get(type_field), data, is_json)


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
    return Completion(event.correlation_id, status, event.data, event.is_json, event.event_type)
