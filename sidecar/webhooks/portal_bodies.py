"""Requests of the portal's endpoints: bodies and query strings as pydantic models.

The same models validate requests and describe them in the OpenAPI document (`openapi`). Bodies
forbid unknown fields and never coerce JSON types (like `bodies.Body`); query strings are text, so
their models convert (`limit=20` is a number) and ignore parameters they do not know.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import EVENT_TYPE_PATTERN, Duration
from ..validation import describe
from .bodies import Body, invalid
from .sessions import DEFAULT_TTL_S, MAX_TTL_S, MIN_TTL_S

ID_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
TENANT_PATTERN = r"^(operator|t_[0-9a-f]{40})$"
MAX_CREDENTIAL_CHARS = 4096
LIMIT_DEFAULT, LIMIT_MAX = 50, 200


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
