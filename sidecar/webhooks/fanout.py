"""Fan-out: one completion becomes one message per subscription that may receive it."""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..completion import Status
from ..config import Route
from ..tracking import TrackedCall
from .outbox import Outbox, message_id_for
from .store import SubscriptionStore


def payload(
    route: Route, status: Status, data: Any, correlation_id: str, location: str | None, ts: float
) -> tuple[str, bytes]:
    """(event type, body bytes): serialised once, signed and sent exactly as is."""
    event_type = route.success_event if status == "succeeded" else route.failure_event
    body = {
        "type": event_type,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
        + f".{int(ts % 1 * 1000):03d}Z",
        "data": data,
        "correlation_id": correlation_id,
        "route": route.name,
        "location": location,
        "status": status,
    }
    return event_type, orjson.dumps(body)


async def fan_out(
    store: SubscriptionStore,
    outbox: Outbox,
    route: Route,
    status: Status,
    data: Any,
    correlation_id: str,
    tracked: TrackedCall | None,
    completed_at: float,
    call_identity: str,
) -> int:
    """Enqueue the completion for the caller's and operator-owned subscriptions; how many new."""
    event_type, body = payload(
        route, status, data, correlation_id, tracked.location if tracked else None, completed_at
    )
    identity = repr(tracked.created_at) if tracked else call_identity
    enqueued = 0
    for sub in await store.matching(tracked.tenant if tracked else None, event_type):
        message_id = message_id_for(correlation_id, identity, sub.id)
        if await outbox.enqueue(message_id, sub.id, event_type, body, int(completed_at * 1000)):
            enqueued += 1
    return enqueued
