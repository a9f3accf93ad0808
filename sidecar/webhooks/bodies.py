"""Request bodies of the webhook admin API and their validation (every problem reported at once).

Bodies are pydantic models that forbid unknown fields and never coerce JSON types. What needs the
running config (the target policy, the known event types) is checked beside them, by
`subscription_changes`: every problem of a body is told at once. Problems read
`field: reason`; `invalid()` turns them into one 422.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from aiohttp.abc import AbstractResolver
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import Settings
from ..errors import BadRequest, Unprocessable
from ..validation import describe
from .targets import TargetPolicy, TargetRefused, resolve_refusal

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
    """Why `url` cannot be a webhook target by its form alone (scheme, port, IP literals), or
    None. A host name's addresses are checked by `resolved_problem`, and again at every connect
    (so DNS rebinding is caught there)."""
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


async def read_json(request: web.Request, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object (an empty body is `{}` when optional); 400 when it is not
    JSON, 422 when it is not an object."""
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise invalid(["<body>: must be a JSON object"])
    return data


def validated(model: type[B], data: dict[str, Any], problems: list[str]) -> B | None:
    """`data` as `model`, or None with its problems appended to `problems`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(validation_problems(exc))
        return None


async def read_body(request: web.Request, model: type[B], optional: bool = False) -> B:
    """The request's JSON object validated as `model`; 422 listing every problem."""
    problems: list[str] = []
    body = validated(model, await read_json(request, optional), problems)
    if body is None:
        raise invalid(problems)
    return body


async def subscription_changes(
    request: web.Request,
    model: type[SubscriptionCreate] | type[SubscriptionPatch],
    policy: TargetPolicy,
    known: set[str],
    resolver: AbstractResolver,
) -> dict[str, Any]:
    """The fields a create or patch body sets, normalised; one 422 listing every problem:
    the body's shape, the target policy (the URL's form and the addresses its host resolves
    to now), the event types, the sizes."""
    data = await read_json(request)
    problems: list[str] = []
    body = validated(model, data, problems)
    bad = {p.partition(":")[0] for p in problems}
    given = body.model_dump(exclude_unset=True) if body is not None else {}
    if body is None:  # check what has the right type anyway, so every problem is told at once
        kinds = {"url": str, "events": list, "description": str, "enabled": bool}
        given = {
            k: v
            for k, v in data.items()
            if k in kinds and isinstance(v, kinds[k]) and not any(b.startswith(k) for b in bad)
        }
        if "events" in given and not all(isinstance(e, str) for e in given["events"]):
            del given["events"]
    changes: dict[str, Any] = {}
    if "url" in given:
        reason = url_problem(given["url"], policy) or await _resolved(
            given["url"], policy, resolver
        )
        if reason:
            problems.append(reason)
        changes["url"] = given["url"]
    if "events" in given:
        events = list(dict.fromkeys(given["events"]))
        unknown = [e for e in events if e != "*" and e not in known]
        if unknown:
            choices = ", ".join(repr(e) for e in sorted(known))
            problems.append(f"events: unknown event types {unknown} (use '*' or {choices})")
        changes["events"] = events
    if "description" in given:
        if len(given["description"].encode()) > MAX_DESCRIPTION_BYTES:
            problems.append(f"description: longer than {MAX_DESCRIPTION_BYTES} bytes")
        changes["description"] = given["description"]
    if "enabled" in given:
        changes["enabled"] = given["enabled"]
    if problems:
        raise invalid(problems)
    return changes


async def _resolved(url: str, policy: TargetPolicy, resolver: AbstractResolver) -> str | None:
    reason = await resolve_refusal(policy, url, resolver)
    return f"url: {reason}" if reason else None
