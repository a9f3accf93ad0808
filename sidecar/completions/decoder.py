"""The one decoder: a source's message becomes an `Event`, and an event finds the route it
completes. The waiters (`hub`) and the webhook dispatcher both read through it, so an entry is
never judged two ways.

Routes that wait on one stream may name its fields differently (`id_field`, `type_field`,
`data_field`): the stream is read once per distinct field triple (a `Reading`), and each reading
knows its routes in config order. An entry that one reading cannot decode is malformed only when
no reading that knows its type can decode it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import Route, Settings, StreamWait
from .completion import Event, MalformedEvent, Status, check_data


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
            triples.setdefault(spec.key, {}).setdefault(key, []).append(route)
        self.readings: dict[str, list[Reading]] = {
            stream: [_reading(routes) for routes in groups.values()]
            for stream, groups in triples.items()
        }

    @property
    def streams(self) -> list[str]:
        """Every stream key some route waits on, in route order."""
        return list(self.readings)

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

    def route_for(
        self, stream: str, entry_id: str, fields: Mapping[Any, Any]
    ) -> tuple[Route, Status, Event] | None:
        """The first route (in config order) an entry completes: what the webhook dispatcher
        publishes it as. Raises `MalformedEvent` like `decode`."""
        for event, reading in self.decode(stream, entry_id, fields):
            found = reading.route_for(event)
            if found is not None:
                return found[0], found[1], event
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
