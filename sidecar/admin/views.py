"""Answers of the admin API as pydantic models: every endpoint builds its answer through one, and
the OpenAPI document describes the answers with the same models, so the two cannot drift.
Answers may gain fields in later versions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class View(BaseModel):
    """Base of every answer model."""


class Problem(View):
    """An RFC 9457 problem document (`application/problem+json`)."""

    type: str = Field(..., description="urn:sidecar:problem:<code>")
    title: str
    status: int
    detail: str | None = None
    correlation_id: str | None = None
    errors: list[str] | None = Field(None, description="422: every problem, one by one.")
    reason: str | None = Field(
        None, description="401 of a portal session: expired, revoked, unknown."
    )


class Health(View):
    """The process is up."""

    status: str


class Readiness(View):
    """Whether the sidecar is ready to serve, and if not (or degraded), why."""

    status: str = Field(..., description="ready, ready (degraded), or not ready.")
    reasons: dict[str, str] = Field(..., description="What is down, by part.")


class SubscriptionView(View):
    """A subscription (never its secret, except where an answer says so)."""

    id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: str = Field(..., description="ISO 8601, UTC.")
    failing_since: str | None = Field(None, description="Since when its attempts keep failing.")
    disabled_reason: str | None = Field(None, description="Why it was disabled, if not by hand.")
    owner: str | None = Field(
        None, description="Operator only: operator, or a client's t_... hash."
    )
    declared: bool | None = Field(None, description="Operator only: declared in the YAML file.")


class SubscriptionCreated(SubscriptionView):
    """A new subscription, with its signing secret (shown here and by rotate-secret)."""

    secret: str = Field(..., description="whsec_<base64>")


class SubscriptionList(View):
    """The caller's subscriptions, oldest first: a client's all at once, the operator's (every
    client's) a page at a time."""

    subscriptions: list[SubscriptionView]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` for the next page; null: no more."
    )


class SecretRotated(View):
    """A rotated secret: the previous one keeps signing until `previous_secret_valid_until`."""

    id: str
    secret: str
    previous_secret_valid_until: str


class SecretView(View):
    """A subscription's signing secret(s), for the portal's Reveal secret."""

    id: str
    secret: str
    previous_secret: str | None = Field(None, description="Still signing during a rotation.")
    previous_secret_valid_until: str | None = None


class MessageQueued(View):
    """A message queued for delivery."""

    message_id: str


class Redelivered(View):
    """One more attempt of a message, queued."""

    message_id: str
    attempt: int


class AttemptLogEntry(View):
    """One attempt in a subscription's attempts log."""

    message_id: str
    sub_id: str | None = None
    type: str
    attempt: int
    time: str
    trigger: str
    result: str
    response_status: int | None
    duration_ms: float
    error: str | None
    error_detail: str | None = None
    response_excerpt: str | None = None
    next_attempt_at: str | None = None


class AttemptsLog(View):
    """A subscription's attempts, newest first."""

    attempts: list[AttemptLogEntry]


# --- the portal's endpoints ---------------------------------------------------------------------


class SessionCreated(View):
    """A portal session: open `url` (the token is in its fragment), or send `token` as
    `Authorization: Bearer <token>`. Neither is shown again."""

    id: str = Field(..., description="ps_...: names the session for revoking it.")
    token: str = Field(..., description="psess_...: the bearer token.")
    url: str = Field(..., description="The portal with the token in its fragment.")
    expires_at: str
    read_only: bool


class SessionInfo(View):
    """The session a request was made with."""

    id: str
    expires_at: str
    read_only: bool


class Me(View):
    """Who the caller is."""

    kind: Literal["operator", "client"]
    tenant: str = Field(..., description="operator, or the client's t_... hash.")
    read_only: bool
    session: SessionInfo | None = Field(None, description="When signed in with a session.")


class EventTypeView(View):
    """One event type the routes emit, with an example payload."""

    type: str
    description: str
    route: str | None = Field(None, description="The route that emits it (null: the test type).")
    outcome: Literal["success", "failure", "test"]
    example: dict[str, Any] = Field(..., description="A whole payload as delivered.")
    example_source: Literal["declared", "observed", "generic"] = Field(
        ...,
        description="declared in the config, observed (the caller's last real payload of "
        "this type, values elided), or generic.",
    )


class EventTypeList(View):
    """The catalog."""

    event_types: list[EventTypeView]


class LogAttempt(View):
    """One delivery attempt in the message log."""

    message_id: str
    sub_id: str
    type: str
    attempt: int
    time: str
    status: int | None = Field(..., description="The receiver's HTTP status; null: no answer.")
    error: str | None = Field(..., description="Error class: http, timeout, connect, dns, ...")
    duration_ms: float
    trigger: str = Field(..., description="scheduled, test, manual or recover.")
    result: str = Field(..., description="delivered, retry, dead, disabled or failed.")


class AttemptsPage(View):
    """A page of the message log, newest first."""

    attempts: list[LogAttempt]
    next_cursor: str | None = Field(..., description="Pass as `cursor` for the next page.")


class MessageAttempt(LogAttempt):
    """An attempt of one message, with what the receiver answered."""

    response_excerpt: str | None = None
    error_detail: str | None = None
    next_attempt_at: str | None = Field(None, description="When the next attempt is due.")


class MessageDetail(View):
    """One message: its payload, its webhook headers and its attempts (newest first, the last
    100)."""

    message_id: str
    sub_id: str
    type: str
    created_at: str
    state: str = Field(
        ..., description="queued, scheduled, delivered, failed, skipped or dead (dead-lettered)."
    )
    trigger: str | None = Field(None, description="What made it: scheduled (a completion) or test.")
    attempts_made: int | None = None
    dead_reason: str | None = Field(
        None,
        description="Why a message was dead-lettered without its last attempt: record_lost (its "
        "record was lost from Redis during an attempt) or record_incomplete (found without its "
        "body); it cannot be redelivered. Absent otherwise.",
    )
    payload: Any = Field(..., description="The JSON body as sent, parsed.")
    body: str = Field(
        "",
        description="The body exactly as sent, the bytes the signature covers (paste it into "
        "a verifier as it is).",
    )
    headers: dict[str, str | None] = Field(
        ..., description="webhook-id, webhook-timestamp, webhook-signature of the last attempt."
    )
    attempts: list[MessageAttempt]


class Recovered(View):
    """Failed messages queued again."""

    subscription_id: str
    since: str
    message_ids: list[str]
    count: int


class SubscriptionStats(View):
    """A subscription's recent attempts (the last `window`)."""

    subscription_id: str
    window: int
    attempts: int
    succeeded: int
    failed: int
    success_rate: float | None = Field(..., description="0-1; null with no attempts.")
    last_attempt_at: str | None
    breaker: str = Field(
        "closed",
        description="Its circuit breaker on the replica that answered: closed, open (its "
        "messages wait), half_open (one probe).",
    )


# --- operations ---------------------------------------------------------------------------------


class OperationEvent(View):
    """One step of an operation. Which fields an event has depends on its `kind`."""

    at: str = Field(..., description="ISO 8601, UTC.")
    kind: Literal[
        "received",
        "forwarded",
        "upstream_answered",
        "held",
        "fallback",
        "completed",
        "answered",
        "client_gone",
        "long_poll",
        "status_read",
        "idempotent_attach",
        "idempotent_replay",
        "webhook_attempt",
    ]
    method: str | None = Field(None, description="received: the request's method.")
    path: str | None = Field(None, description="received: the request's path.")
    status: int | None = Field(
        None,
        description="upstream_answered, answered, status_read, long_poll (via status), "
        "idempotent_*: the HTTP status answered; webhook_attempt: the receiver's.",
    )
    location: str | None = Field(None, description="upstream_answered: the 202's Location.")
    reason: str | None = Field(
        None, description="fallback: budget, prefer, shed, redis, no_id, location."
    )
    budget_ms: float | None = Field(None, description="held: how long it may be held.")
    source: str | None = Field(None, description="completed: stream or poll.")
    event_type: str | None = Field(None, description="completed: the completion's event type.")
    outcome: str | None = Field(None, description="answered: sync_success, fallback_async, ...")
    after_ms: float | None = Field(
        None, description="Since the call was received (upstream_answered: since forwarded)."
    )
    result: str | None = Field(
        None,
        description="long_poll: released, timeout, shed, done; webhook_attempt: delivered, "
        "retry, dead, disabled, failed.",
    )
    waited_ms: float | None = Field(None, description="long_poll: how long it was held.")
    state: str | None = Field(
        None,
        description="completed: succeeded or failed; status_read, long_poll (via status): the "
        "state answered.",
    )
    via: str | None = Field(None, description="long_poll, status_read: status (the sidecar's).")
    message_id: str | None = Field(None, description="webhook_attempt: the message.")
    subscription: str | None = Field(None, description="webhook_attempt: the subscription.")
    attempt: int | None = Field(None, description="webhook_attempt: its number.")
    trigger: str | None = Field(None, description="webhook_attempt: scheduled, manual or recover.")
    error: str | None = Field(None, description="webhook_attempt: the error class, if any.")
    duration_ms: float | None = Field(None, description="webhook_attempt: how long it took.")


class OperationView(View):
    """An operation (one synchronised call) and everything that happened to it, oldest first."""

    correlation_id: str
    operation_id: str | None = Field(
        None, description="The id its completion carries, when not the correlation id."
    )
    route: str
    state: Literal["pending", "succeeded", "failed", "expired"] = Field(
        ...,
        description="expired: the sidecar no longer follows it (its tracking ran out, or it "
        "could not be tracked) and never learnt its completion.",
    )
    created_at: str
    location: str | None = Field(None, description="The Location the client was given.")
    owner: str | None = Field(None, description="Operator only: the client's t_... hash.")
    events: list[OperationEvent]
    events_dropped: int = Field(
        0, description="Events left out because the operation's list was full."
    )
