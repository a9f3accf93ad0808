"""The one decoder: a source's message becomes an `Event`, and an event finds the route it
completes. The waiters (`hub`) and the webhook dispatcher both read through it, so an entry is
never judged two ways.

A Redis stream entry is flat fields, named by `id_field`, `type_field`, `data_field`. A broker
message (`Message`) has headers, a body and properties, and each field names one of them:

    x-correlation-id   the header of that name (any case), else that member of the JSON body
    /result/id         a JSON pointer into the JSON body
    @key               a property of the message: @key (Kafka's record key), @routing_key,
                       @subject
    ""                 (data_field only) the whole body

Routes that wait on one stream may name its fields differently (`id_field`, `type_field`,
`data_field`): the stream is read once per distinct field triple (a `Reading`), and each reading
knows its routes in config order. An entry that one reading cannot decode is malformed only when
no reading that knows its type can decode it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..config import Route, Settings, StreamWait
from .completion import (
    MAX_DATA_BYTES,
    Event,
    MalformedEvent,
    Message,
    Status,
    check_data,
    check_value,
)
from .poll import json_pointer


@dataclass(frozen=True, slots=True)
class Reading:
    """How one group of routes reads a stream: the fields they name, the types they know."""

    spec: StreamWait  # the first route's: its id, type and data fields are the group's
    routes: tuple[Route, ...]  # in config order
    known_types: frozenset[str]

    def route_for(self, event: Event) -> tuple[Route, Status] | None:
        """The first route this event completes, and how."""
        for route in self.routes:
            assert route.wait is not None and route.wait.stream is not None
            status = event.verdict(route.wait.stream)
            if status is not None:
                return route, status
        return None


class Decoder:
    """The decoding rules of one config generation."""

    def __init__(self, settings: Settings) -> None:
        triples: dict[str, dict[tuple[str, str, str], list[Route]]] = {}
        for route in settings.routes:
            if route.wait is None or route.wait.stream is None:
                continue
            spec = route.wait.stream
            key = (spec.id_field, spec.type_field, spec.data_field)
            triples.setdefault(spec.stream_id, {}).setdefault(key, []).append(route)
        self.readings: dict[str, list[Reading]] = {
            stream: [_reading(routes) for routes in groups.values()]
            for stream, groups in triples.items()
        }
        self._redis = [
            stream for stream, readings in self.readings.items() if readings[0].spec.source is None
        ]

    @property
    def streams(self) -> list[str]:
        """Every Redis stream key some route waits on, in route order (broker streams are
        read by their sources' readers)."""
        return self._redis

    def decode(
        self, stream: str, entry_id: str, fields: Mapping[Any, Any]
    ) -> list[tuple[Event, Reading]]:
        """The events an entry means, one per reading that knows its type (none: nobody
        waits for this type). Raises `MalformedEvent` when no reading could decode it."""
        found: list[tuple[Event, Reading]] = []
        malformed: MalformedEvent | None = None
        for reading in self.readings.get(stream, ()):
            try:
                event = decode_entry(stream, entry_id, fields, reading.spec)
            except MalformedEvent as exc:
                malformed = exc
                continue
            if event.event_type in reading.known_types:
                found.append((event, reading))
        if not found and malformed is not None:
            raise malformed
        return found

    def decode_message(self, stream: str, message: Message) -> list[tuple[Event, Reading]]:
        """`decode` for a broker message read from `stream` (a stream id, `<source>/<key>`)."""
        found: list[tuple[Event, Reading]] = []
        malformed: MalformedEvent | None = None
        body = Body(message.body)
        for reading in self.readings.get(stream, ()):
            try:
                event = decode_message(stream, message, reading.spec, body)
            except MalformedEvent as exc:
                malformed = exc
                continue
            if event.event_type in reading.known_types:
                found.append((event, reading))
        if not found and malformed is not None:
            raise malformed
        return found

    def route_for(
        self, stream: str, entry_id: str, fields: Mapping[Any, Any]
    ) -> tuple[Route, Status, Event] | None:
        """The first route (in config order) an entry completes: what the webhook dispatcher
        publishes it as. Raises `MalformedEvent` like `decode`."""
        return first_route(self.decode(stream, entry_id, fields))

    def route_for_message(
        self, stream: str, message: Message
    ) -> tuple[Route, Status, Event] | None:
        """`route_for` for a broker message."""
        return first_route(self.decode_message(stream, message))


def first_route(found: list[tuple[Event, Reading]]) -> tuple[Route, Status, Event] | None:
    """The first route (in config order) one of these events completes."""
    for event, reading in found:
        route = reading.route_for(event)
        if route is not None:
            return route[0], route[1], event
    return None


def _reading(routes: list[Route]) -> Reading:
    specs = [r.wait.stream for r in routes if r.wait and r.wait.stream]
    types = {t for spec in specs for t in (*spec.success, *spec.failure)}
    return Reading(specs[0], tuple(routes), frozenset(types))


def _field(fields: Mapping[Any, Any], name: str) -> bytes | str | None:
    value = fields.get(name)
    if value is None:
        value = fields.get(name.encode())
    return value


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def decode_entry(stream: str, entry_id: str, fields: Mapping[Any, Any], spec: StreamWait) -> Event:
    """One stream entry, read with a route's fields; raise `MalformedEvent` saying why it
    cannot be a completion."""
    try:
        cid = _field(fields, spec.id_field)
        correlation_id = _text(cid) if cid is not None else ""
        kind = _field(fields, spec.type_field)
        event_type = _text(kind) if kind is not None else None
        data = _field(fields, spec.data_field)
        raw = (data if isinstance(data, bytes) else data.encode()) if data is not None else None
        if raw is not None:
            raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEvent("fields are not UTF-8") from None
    if not correlation_id:
        raise MalformedEvent(f"no {spec.id_field!r} field")
    return Event(stream, entry_id, correlation_id, event_type, raw, check_data(raw))


_NOT_JSON = object()


class Body:
    """A message body, parsed as JSON once, on first need, for every reading of it."""

    __slots__ = ("_parsed", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._parsed: Any = None

    @property
    def parsed(self) -> Any:
        """The body as JSON, or `_NOT_JSON`."""
        if self._parsed is None:
            try:
                self._parsed = orjson.loads(self.raw)
            except orjson.JSONDecodeError:
                self._parsed = _NOT_JSON
        return self._parsed


_ABSENT = object()


def message_field(message: Message, body: Body, name: str) -> Any:
    """What `name` names in a broker message (see the module's docstring): bytes for a
    header, a property or the whole body; a JSON value for a member or a pointer; `_ABSENT`.
    Raises `MalformedEvent` for a pointer into a body that is not JSON."""
    if name.startswith("@"):
        value = message.properties.get(name)
        return _ABSENT if value is None else value
    if name == "":
        return body.raw
    if name.startswith("/"):
        document = body.parsed
        if document is _NOT_JSON:
            raise MalformedEvent(f"body is not JSON (needed for {name})")
        try:
            return json_pointer(document, name)
        except LookupError:
            return _ABSENT
    value = message.headers.get(name)
    if value is None and message.headers:
        lowered = name.lower()
        value = next((v for k, v in message.headers.items() if k.lower() == lowered), None)
    if value is not None:
        return value
    document = body.parsed
    if isinstance(document, dict) and name in document:
        return document[name]
    return _ABSENT


def _as_text(value: Any, what: str) -> str | None:
    if value is _ABSENT or value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedEvent(f"{what} is not UTF-8") from None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise MalformedEvent(f"{what} is not text (a JSON {type(value).__name__})")


def decode_message(stream: str, message: Message, spec: StreamWait, body: Body) -> Event:
    """One broker message, read with a route's fields; raise `MalformedEvent` saying why it
    cannot be a completion."""
    correlation_id = _as_text(message_field(message, body, spec.id_field), "the id")
    if not correlation_id:
        raise MalformedEvent(f"no {spec.id_field!r} in the message")
    event_type = _as_text(message_field(message, body, spec.type_field), "the type")
    data = message_field(message, body, spec.data_field)
    raw: bytes | None
    if data is _ABSENT:
        raw, is_json = None, False
    elif isinstance(data, bytes):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedEvent("the data is not UTF-8") from None
        if data is body.raw and body.parsed is not _NOT_JSON:  # the whole body: parsed once
            if len(data) > MAX_DATA_BYTES:
                raise MalformedEvent(f"data larger than {MAX_DATA_BYTES} bytes")
            check_value(body.parsed)
            raw, is_json = data, True
        else:
            raw, is_json = data, check_data(data)
    else:
        check_value(data)  # deeper would not even be written out again here
        raw, is_json = orjson.dumps(data), True
    trace = message.headers.get("traceparent")
    return Event(
        stream,
        message.position,
        correlation_id,
        event_type,
        raw,
        is_json,
        traceparent=trace.decode("ascii", "replace") if trace else "",
        timestamp_s=message.timestamp_s,
    )
