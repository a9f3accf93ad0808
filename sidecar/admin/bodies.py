"""What the admin API accepts: request bodies and query strings as pydantic models, and their
validation (every problem reported at once).

Bodies forbid unknown fields and never coerce JSON types; query strings are text, so their models
convert (`limit=20` is a number) and ignore parameters they do not know. What needs the running
config (the target policy, the known event types) is checked beside them, by
`subscription_changes`. Problems read `field: reason`; `invalid()` turns them into one 422. The
same models describe the requests in the OpenAPI document (`openapi`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from aiohttp.abc import AbstractResolver
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import EVENT_TYPE_PATTERN, Duration
from ..errors import BadRequest, Unprocessable
from ..validation import describe
from ..webhooks.fanout import TEST_EVENT
from ..webhooks.targets import TargetPolicy, TargetRefused, resolve_refusal
from .endpoints import ID_PATTERN
from .sessions import DEFAULT_TTL_S, MAX_TTL_S, MIN_TTL_S

TENANT_PATTERN = r"^(operator|t_[0-9a-f]{40})$"
MAX_CREDENTIAL_CHARS = 4096
LIMIT_DEFAULT, LIMIT_MAX = 50, 200
SUBSCRIPTIONS_PAGE = 200
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


# --- the portal's requests ------------------------------------------------------------------


def _ttl_in_bounds(value: float) -> float:
    if not MIN_TTL_S <= value <= MAX_TTL_S:
        raise ValueError("must be from 1s to 24h (a duration like 90s or 1h, or seconds)")
    return value


class SessionTtl(Body):
    """The `ttl` shared by sign-in and portal links."""

    ttl: Duration = Field(
        DEFAULT_TTL_S,
        description="How long the session lasts: a duration (90s, 30m, 1h) or seconds; "
        "at least 1s, at most 24h. Default 1h.",
    )

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: float) -> float:
        return _ttl_in_bounds(value)


class PortalSessionCreate(SessionTtl):
    """`POST /portal-sessions` (operator only): a portal link for one client (by its credential
    or its tenant id), or for the operator itself."""

    credential: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_CREDENTIAL_CHARS,
        description="The client's credential (the value of its credential header). Used once, "
        "to find its tenant; never stored.",
    )
    tenant: str | None = Field(
        None,
        pattern=TENANT_PATTERN,
        description="The tenant id as the admin API shows it (`owner`: t_... or operator).",
    )
    read_only: bool = Field(
        False, description="A session that can look but change nothing. Default false."
    )

    @model_validator(mode="after")
    def _one_subject(self) -> PortalSessionCreate:
        if (self.credential is None) == (self.tenant is None):
            raise ValueError("give exactly one of credential and tenant")
        return self


class SignIn(SessionTtl):
    """`POST /sign-in`: exchange a credential (a client's, or the admin token) for a session."""

    credential: str = Field(
        ...,
        min_length=1,
        max_length=MAX_CREDENTIAL_CHARS,
        description="A client credential (exactly as sent in the credential header) or the "
        "admin token (with or without `Bearer `).",
    )


class Recover(Body):
    """`POST /subscriptions/{id}/recover`: redeliver every failed message since a time."""

    since: datetime = Field(
        ...,
        description="ISO 8601 date-time (UTC when no offset is given); messages whose last "
        "attempt failed at or after it are redelivered.",
        json_schema_extra={"format": "date-time"},
    )

    @field_validator("since", mode="before")
    @classmethod
    def _parse(cls, value: object) -> object:
        # Strict bodies take no date-time object from JSON: parse the text here.
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"invalid date-time {value[:40]!r} (use ISO 8601)") from None
        return value

    @field_validator("since")
    @classmethod
    def _after_1970(cls, value: datetime) -> datetime:
        return not_before_1970(value)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def not_before_1970(value: datetime) -> datetime:
    """A time the logs can be read from (their entries are stamped from 1970 on)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if aware < EPOCH:
        raise ValueError("must not be before 1970-01-01T00:00:00Z")
    return value


class Query(BaseModel):
    """Base of query-string models: values are converted from text; unknown names are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class MessagesQuery(Query):
    """`GET /messages`: the message log's filters and page."""

    status: Literal["succeeded", "failed"] | None = Field(
        None,
        description="succeeded: the attempt got a 2xx; failed: it did not (whether or not a "
        "retry is still due).",
    )
    event_type: str | None = Field(None, pattern=EVENT_TYPE_PATTERN, description="One type.")
    subscription: str | None = Field(None, pattern=ID_PATTERN, description="One subscription.")
    since: datetime | None = Field(None, description="Attempts at or after (ISO 8601).")
    until: datetime | None = Field(None, description="Attempts before (ISO 8601).")
    cursor: str | None = Field(
        None,
        pattern=r"^[0-9]{1,20}-[0-9]{1,20}$",
        description="`next_cursor` of the previous page.",
    )
    limit: int = Field(LIMIT_DEFAULT, ge=1, le=LIMIT_MAX, description="Page size. Default 50.")

    @field_validator("since", "until")
    @classmethod
    def _after_1970(cls, value: datetime | None) -> datetime | None:
        return None if value is None else not_before_1970(value)


class SubscriptionsQuery(Query):
    """`GET /subscriptions`: a page of the operator's view (a client sees all of its own)."""

    cursor: str | None = Field(
        None,
        pattern=r"^[0-9]{1,12}(\.[0-9]{1,9})?:[A-Za-z0-9_.-]{1,128}$",
        description="`next_cursor` of the previous page.",
    )
    limit: int = Field(
        SUBSCRIPTIONS_PAGE, ge=1, le=1000, description="Page size (the operator's). Default 200."
    )


class AttemptsQuery(Query):
    """`GET /subscriptions/{id}/attempts`: the subscription's attempts log (validated by the
    handler in `api`; described here)."""

    limit: int = Field(50, ge=1, le=1000, description="At most this many. Default 50.")
    status: Literal["delivered", "retry", "dead", "disabled", "failed"] | None = Field(
        None, description="Only attempts with this result."
    )


def ms(value: datetime | None) -> int | None:
    """Unix milliseconds of a date-time (naive ones are UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


Q = TypeVar("Q", bound=Query)


def read_query(request: web.Request, model: type[Q]) -> Q:
    """The request's query string as `model`; 422 naming every bad parameter."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise invalid(describe(exc, {}, root="<query>")) from None
