"""Fan-out: one completion becomes one message per subscription that may receive it.

The payload is `{type, timestamp, data}` plus the call's identity (`correlation_id`, and the
`operation_id` its completion was matched on when that differs), its route, the 202 `Location`
and the final status, serialised once and signed and sent exactly as is.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..completions.completion import Status
from ..config import Route, Settings
from ..tenancy import OPERATOR
from ..timestamps import iso
from ..tracking import TrackedCall
from .outbox import Message, message_id_for
from .store import Subscription, matching_in


def event_body(
    event_type: str,
    *,
    route: str | None,
    status: str,
    data: Any,
    correlation_id: str,
    location: str | None,
    ts: float,
    operation_id: str | None = None,
) -> bytes:
    """The bytes of one webhook payload (completions and test messages alike)."""
    body = {
        "type": event_type,
        "timestamp": iso(ts),
        "data": data,
        "correlation_id": correlation_id,
        "operation_id": operation_id,
        "route": route,
        "location": location,
        "status": status,
    }
    return orjson.dumps(body)


TEST_EVENT = "webhook.test"  # default type of a test message; subscribable like a route event


def known_events(settings: Settings) -> set[str]:
    """Every event type a subscription may name: each route's two, plus the test type."""
    events = {TEST_EVENT}
    for route in settings.routes:
        events.update((route.success_event, route.failure_event))
    return events


def event_type_of(route: Route, status: Status) -> str:
    """The webhook type a route's completion is published as."""
    return route.success_event if status == "succeeded" else route.failure_event


def payload(
    route: Route,
    status: Status,
    data: Any,
    correlation_id: str,
    location: str | None,
    ts: float,
    operation_id: str | None = None,
) -> tuple[str, bytes]:
    """(event type, body bytes) of a route's completion."""
    event_type = event_type_of(route, status)
    body = event_body(
        event_type,
        route=route.name,
        status=status,
        data=data,
        correlation_id=correlation_id,
        location=location,
        ts=ts,
        operation_id=operation_id,
    )
    return event_type, body


def candidates(
    by_owner: dict[str, list[Subscription]], tracked: TrackedCall | None
) -> list[Subscription]:
    """The subscriptions that may hear of a call's completion: the operator's, and its
    caller's unless the call's id is ambiguous (several calls wait on it)."""
    subs = list(by_owner.get(OPERATOR, ()))
    if tracked is not None and tracked.tenant and not tracked.ambiguous:
        subs += by_owner.get(tracked.tenant, ())
    return subs


def messages_for(
    subs: list[Subscription],
    route: Route,
    status: Status,
    data: Any,
    wait_id: str,
    tracked: TrackedCall | None,
    completed_at: float,
    call_identity: str,
    traceparent: str = "",
) -> list[Message]:
    """The messages of one completion (whose event or poll carried `wait_id`): for the
    caller's and operator-owned subscriptions of `subs` (all of them) that want its type.
    Message ids derive from the call, so enqueueing the same completion again (another path,
    another replica) is a no-op. Deliveries are traced as children of the call's span, else
    of the `traceparent` the completion's message carried."""
    event_type = event_type_of(route, status)
    targets = matching_in(subs, tracked.tenant if tracked else None, event_type)
    if not targets:
        return []
    _, body = payload(
        route,
        status,
        data,
        tracked.identity if tracked else wait_id,
        tracked.location if tracked else None,
        completed_at,
        tracked.operation_id if tracked else None,
    )
    identity = repr(tracked.created_at) if tracked else call_identity
    created_ms = int(completed_at * 1000)
    return [
        Message(
            message_id_for(wait_id, identity, s.id),
            s.owner,
            s.id,
            event_type,
            body,
            created_ms,
            traceparent=(tracked.traceparent if tracked else "") or traceparent,
        )
        for s in targets
    ]
