"""The event-type catalog: every type the routes emit, with a description and an example payload.

The example's `data` is the one declared in the route's `webhook_events` when there is one, else
the caller's own last real (not test) payload of that type with its values elided (structure
only: strings become "<string>", numbers 0, booleans false), else `{}`. Only the caller's own
messages are read, so no client sees another's payloads, not even their shape.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web

from ..config import Settings
from ..webhooks.fanout import TEST_EVENT
from ..webhooks.messages import MessageLog
from .callers import caller_of, owner_scope
from .endpoints import answer, endpoint
from .services import services, webhooks_of
from .views import EventTypeList

MAX_DEPTH = 8
MAX_ITEMS = 50
EXAMPLE_TIMESTAMP = "2030-01-01T12:00:00.000Z"
LOOK_BACK = 20  # attempts of a type read to find a real (not test) payload

Outcome = Literal["success", "failure", "test"]


def elide(value: Any, depth: int = 0) -> Any:
    """`value` with every scalar replaced by a placeholder of its type; bounded in size."""
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ITEMS]
        return {str(k): elide(v, depth + 1) for k, v in items}
    if isinstance(value, list):
        return [elide(value[0], depth + 1)] if value else []
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return 0
    if isinstance(value, str):
        return "<string>"
    return None


def example_payload(
    event_type: str, route: str | None, outcome: Outcome, data: Any
) -> dict[str, Any]:
    """A whole payload as delivered, around `data`."""
    status = {"success": "succeeded", "failure": "failed", "test": "test"}[outcome]
    return {
        "type": event_type,
        "timestamp": EXAMPLE_TIMESTAMP,
        "data": data,
        "correlation_id": "00000000-0000-4000-8000-000000000000",
        "route": route,
        "location": None,
        "status": status,
    }


def declared_types(settings: Settings) -> list[dict[str, Any]]:
    """Every event type of the config, in route order, then the test type; without examples
    from the log yet (`data` None where none is declared). A route without `wait` (a named
    pass-through) completes nothing, so its types never fire and are not listed."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for route in settings.routes:
        if not route.is_sync:
            continue
        for outcome in ("success", "failure"):
            spec = route.webhook_events.spec(outcome)
            name = route.success_event if outcome == "success" else route.failure_event
            if name in seen:
                continue
            seen.add(name)
            verb = "succeeded" if outcome == "success" else "failed"
            default = f"A call to {route.method} {route.path} (route {route.name}) {verb}."
            out.append(
                {
                    "type": name,
                    "description": (spec.description if spec else "") or default,
                    "route": route.name,
                    "outcome": outcome,
                    "data": spec.example if spec else None,
                }
            )
    if TEST_EVENT not in seen:
        out.append(
            {
                "type": TEST_EVENT,
                "description": "A test message, sent on demand from the portal or the API.",
                "route": None,
                "outcome": "test",
                "data": None,
            }
        )
    return out


async def observed_data(log: MessageLog, owner: str | None, event_type: str) -> Any:
    """The caller's last real payload's `data` of this type, elided; None when there is none."""
    attempts, _ = await log.attempts(owner, event_type=event_type, limit=LOOK_BACK)
    for attempt in attempts:
        if attempt.get("trigger") == "test":
            continue
        message = await log.message(owner, attempt["message_id"])
        payload = message.get("payload") if message else None
        if isinstance(payload, dict) and "data" in payload:
            return elide(payload["data"])
    return None


async def catalog(settings: Settings, log: MessageLog, owner: str | None) -> list[dict[str, Any]]:
    """The catalog as the API shows it to `owner` (None: the operator)."""
    out = []
    for item in declared_types(settings):
        data, source = item["data"], "declared"
        if data is None:
            data = await observed_data(log, owner, item["type"])
            source = "observed" if data is not None else "generic"
        if data is None:
            data = {}
        out.append(
            {
                "type": item["type"],
                "description": item["description"],
                "route": item["route"],
                "outcome": item["outcome"],
                "example": example_payload(item["type"], item["route"], item["outcome"], data),
                "example_source": source,
            }
        )
    return out


@endpoint(
    "get",
    "/event-types",
    "listEventTypes",
    "Every event type, with an example payload",
    "catalog",
    answer=EventTypeList,
)
async def event_types(request: web.Request) -> web.Response:
    """Every event type the routes emit (and the test type), with an example payload."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    items = await catalog(services(request).settings, runtime.messages, owner_scope(caller))
    return answer(EventTypeList.model_validate({"event_types": items}))
