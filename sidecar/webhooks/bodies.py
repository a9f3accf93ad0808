"""Request bodies of the webhook admin API and their validation (every problem reported at once).

Bodies are pydantic models that forbid unknown fields and never coerce JSON types. What needs the
running config (the target policy, the known event types) is checked after them, by
`check_changes`. Problems read `field: reason`; `invalid()` turns them into one 422.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import Settings
from ..errors import BadRequest, Unprocessable
from ..validation import describe
from .targets import TargetPolicy, TargetRefused

TEST_EVENT = "webhook.test"  # default type of a test message; subscribable like a route event
MAX_URL_CHARS = 2048
MAX_DESCRIPTION_BYTES = 1024
MAX_EVENTS = 100


class Body(BaseModel):
    """Base of every request body: unknown fields are errors, JSON types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


B = TypeVar("B", bound=Body)


class SubscriptionCreate(Body):
    """`POST /subscriptions`."""

    url: str = Field(max_length=MAX_URL_CHARS)
    events: list[str] = Field(min_length=1, max_length=MAX_EVENTS)
    description: str = ""
    enabled: bool = True


class SubscriptionPatch(Body):
    """`PATCH /subscriptions/{id}`: only the fields sent change (null is not a value)."""

    url: str = Field("", max_length=MAX_URL_CHARS)
    events: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=MAX_EVENTS)
    description: str = ""
    enabled: bool = True


class MessageForTest(Body):
    """`POST /subscriptions/{id}/test`: the event type and data of the test message."""

    type: str = TEST_EVENT
    data: Any = Field(default_factory=dict)


_WORDING = {"extra_forbidden": "unknown field", "missing": "required field is missing"}


def _shown(value: Any) -> str:
    return orjson.dumps(value, default=repr).decode()[:60]


def validation_problems(error: ValidationError) -> list[str]:
    """One `field: reason` line per problem, worded for API clients."""
    return describe(error, _WORDING, _shown, root="<body>")


def invalid(problems: list[str]) -> Unprocessable:
    """A 422 naming every problem (in `detail`, and one by one in `errors`)."""
    return Unprocessable("; ".join(problems), errors=problems)


def known_events(settings: Settings) -> set[str]:
    """Every event type a subscription may name: each route's two, plus the test type."""
    events = {TEST_EVENT}
    for route in settings.routes:
        events.update((route.success_event, route.failure_event))
    return events


def url_problem(url: str, policy: TargetPolicy) -> str | None:
    """Why `url` cannot be a webhook target, or None.

    Only the static part of the target policy: scheme, port and IP literals. A host name's
    addresses are checked when delivery connects (so DNS rebinding is caught there).
    """
    if url != url.strip() or any(c.isspace() or ord(c) < 0x20 for c in url):
        return f"url: {url!r} contains whitespace or control characters"
    try:
        policy.check_url(url)
        _ = urlsplit(url).port  # raises ValueError on a port that is not 0-65535
    except TargetRefused as exc:
        return f"url: {exc}"
    except ValueError as exc:
        return f"url: {url!r} is not a valid URL ({exc})"
    return None


def check_changes(
    body: SubscriptionCreate | SubscriptionPatch, policy: TargetPolicy, known: set[str]
) -> dict[str, Any]:
    """The fields the body sets, normalised; raises `Unprocessable` listing every problem."""
    changes: dict[str, Any] = {}
    problems: list[str] = []
    given = body.model_fields_set  # a create's required url and events are always in it
    if "url" in given:
        reason = url_problem(body.url, policy)
        if reason:
            problems.append(reason)
        changes["url"] = body.url
    if "events" in given:
        events = list(dict.fromkeys(body.events))
        unknown = [e for e in events if e != "*" and e not in known]
        if unknown:
            choices = ", ".join(repr(e) for e in sorted(known))
            problems.append(f"events: unknown event types {unknown} (use '*' or {choices})")
        changes["events"] = events
    if "description" in given:
        if len(body.description.encode()) > MAX_DESCRIPTION_BYTES:
            problems.append(f"description: longer than {MAX_DESCRIPTION_BYTES} bytes")
        changes["description"] = body.description
    if "enabled" in given:
        changes["enabled"] = body.enabled
    if problems:
        raise invalid(problems)
    return changes


async def read_body(request: web.Request, model: type[B], optional: bool = False) -> B:
    """The request's JSON object validated as `model` (an empty body is `{}` when optional)."""
    raw = await request.read()
    if optional and not raw.strip():
        return model()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise invalid(["<body>: must be a JSON object"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(validation_problems(exc)) from None
