"""Fan-out: one completion becomes one message per subscription that may receive it."""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..completion import Status
from ..config import Route
from ..tracking import TrackedCall
from .outbox import Message, message_id_for
from .store import Subscription, matching_in


def iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds, as in payloads and the attempts log."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def payload(
    route: Route, status: Status, data: Any, correlation_id: str, location: str | None, ts: float
) -> tuple[str, bytes]:
    """(event type, body bytes): serialised once, signed and sent exactly as is."""
    event_type = route.success_event if status == "succeeded" else route.failure_event
    body = {
        "type": event_type,
        "timestamp": iso(ts),
        "data": data,
        "correlation_id": correlation_id,
        "route": route.name,
        "location": location,
        "status": status,
    }
    return event_type, orjson.dumps(body)


def messages_for(
    subs: list[Subscription],
    route: Route,
    status: Status,
    data: Any,
    correlation_id: str,
    tracked: TrackedCall | None,
    completed_at: float,
    call_identity: str,
) -> list[Message]:
    """The messages of one completion: for the caller's and operator-owned subscriptions of
    `subs` (all of them) that want its type. Message ids derive from the call, so enqueueing the
    same completion again (another path, another replica) is a no-op."""
    event_type = route.success_event if status == "succeeded" else route.failure_event
    targets = matching_in(subs, tracked.tenant if tracked else None, event_type)
    if not targets:
        return []
    _, body = payload(
        route, status, data, correlation_id, tracked.location if tracked else None, completed_at
    )
    identity = repr(tracked.created_at) if tracked else call_identity
    created_ms = int(completed_at * 1000)
    return [
        Message(message_id_for(correlation_id, identity, s.id), s.id, event_type, body, created_ms)
        for s in targets
    ]
