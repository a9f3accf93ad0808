"""Routes: a match (method + path template) plus how to wait for the completion and answer.

routes[].correlation     where the id to wait on comes from (request, location, body)
routes[].wait            stream and/or poll
routes[].respond         the answers (success/failure status, body, Retry-After, whose Location)
routes[].idempotency     retries with the same Idempotency-Key attach to (or replay) one call
routes[].webhook_events  the webhook types its completions are published as
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from .types import Duration, HeaderName, HttpUrl, JsonPointer, Model, StatusCode

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "*"}
)


_TEMPLATE_VAR = re.compile(r"\{([^{}]*)\}")


def path_template_parts(template: str) -> list[tuple[str, bool]]:
    """`/api/users/{id}/activate` as its parts in order: literal text `(text, False)` and
    placeholders `(name, True)`, each of which stands for one path segment. The one reading of a
    template: the route table's regexes and an exported front's are both built from it."""
    if not template.startswith("/"):
        raise ValueError(f"invalid path {template!r} (must start with '/')")
    parts: list[tuple[str, bool]] = []
    last, names = 0, set()
    for match in _TEMPLATE_VAR.finditer(template):
        name = match.group(1)
        if not name.isidentifier():
            raise ValueError(f"invalid path {template!r} (placeholder {{{name}}} is not a name)")
        if name in names:
            raise ValueError(f"invalid path {template!r} (placeholder {{{name}}} twice)")
        names.add(name)
        parts += [(template[last : match.start()], False), (name, True)]
        last = match.end()
    rest = template[last:]
    if "{" in rest or "}" in rest or any("{" in text for text, named in parts if not named):
        raise ValueError(f"invalid path {template!r} (unbalanced braces)")
    return [*parts, (rest, False)]


def compile_path_template(template: str) -> re.Pattern[str]:
    """Regex for `/api/users/{id}/activate`: each `{name}` matches one path segment."""
    pattern = "".join(
        f"(?P<{text}>[^/]+)" if named else re.escape(text)
        for text, named in path_template_parts(template)
    )
    return re.compile("^" + pattern + "$")


class Correlation(Model):
    """Where the id to wait on comes from."""

    source: Literal["request", "location", "body"] = Field(
        "request",
        description="request: the correlation header sent upstream; location: a regex on the "
        "202's Location; body: a JSON pointer into the 202's JSON body. Default: request.",
    )
    pattern: str = Field(
        r"/(?P<id>[^/?#]+)/?(?:[?#].*)?$",
        description="For source: location. A regex with an `id` group, searched in the "
        "Location. Default: the last path segment.",
    )
    pointer: JsonPointer = Field(
        "/id", description="For source: body. JSON pointer to the id. Default: /id."
    )

    @field_validator("pattern")
    @classmethod
    def _pattern_has_id(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regex {value!r} ({exc})") from None
        if "id" not in compiled.groupindex:
            raise ValueError(f"regex {value!r} has no (?P<id>...) group")
        return value


class StreamWait(Model):
    """Wait for a completion event on a Redis stream, or on a broker named in `sources:`."""

    source: str | None = Field(
        None,
        description="A name from `sources:` (Kafka, AMQP, NATS JetStream). Default: the Redis "
        "at redis_url.",
    )
    key: str = Field(
        ...,
        min_length=1,
        description="Redis stream key (not prefixed) · Kafka topic · AMQP exchange · NATS "
        "subject (a JetStream stream must capture it). Required.",
    )
    binding: str | None = Field(
        None,
        min_length=1,
        description="AMQP only: the routing-key pattern bound to the exchange. Default '#'.",
    )
    id_field: str = Field(
        "correlation_id",
        description="Where the id is: an entry field (Redis); for a broker message a header of "
        "that name, else that member of the JSON body; /a/pointer: a JSON pointer into the body; "
        "@key: the Kafka record key (@routing_key, @subject: AMQP's, NATS's). "
        "Default correlation_id.",
    )
    type_field: str = Field("type", description="Where the event type is (as id_field).")
    success: list[str] = Field(..., min_length=1, description="Types that mean success.")
    failure: list[str] = Field(default_factory=list, description="Types that mean failure.")
    data_field: str = Field(
        "payload",
        description="Where the result is (as id_field; JSON text, else returned as text); "
        "'' (brokers): the whole body. Default payload.",
    )

    @property
    def stream_id(self) -> str:
        """What the waiters and metrics know this stream by: the Redis key, or
        `<source>/<key>` for a broker (a source name has no slash)."""
        return self.key if self.source is None else f"{self.source}/{self.key}"

    @property
    def amqp_binding(self) -> str:
        """The routing-key pattern bound (AMQP)."""
        return self.binding if self.binding is not None else "#"

    @model_validator(mode="after")
    def _types_disjoint(self) -> StreamWait:
        both = sorted(set(self.success) & set(self.failure))
        if both:
            raise ValueError(f"event types {both} are listed in both success and failure")
        return self


class PollWait(Model):
    """Poll the upstream's Location until it says done or failed."""

    interval: Duration = Field(0.25, gt=0, description="First poll delay, seconds. Default 250ms.")
    max_interval: Duration = Field(
        2.0, gt=0, description="The delay grows (with jitter) up to this. Default 2s."
    )
    done_status: list[StatusCode] = Field(
        default_factory=lambda: [200],
        description="Statuses meaning done (others pending; a 303 is followed). Default [200].",
    )
    failed_status: list[StatusCode] = Field(
        default_factory=list, description="Statuses meaning failed. Default []."
    )
    field: JsonPointer | None = Field(
        None, description="JSON pointer into the poll body deciding done/failed by value."
    )
    success: list[Any] = Field(default_factory=list, description="`field` values meaning done.")
    failure: list[Any] = Field(default_factory=list, description="`field` values meaning failed.")
    track_for: Duration = Field(
        600.0,
        ge=0,
        description="How long polling goes on after the client got its 202, so the completion "
        "still reaches webhooks (only when webhooks run, i.e. redis_url is set). Default 10m.",
    )
    forward_headers: list[HeaderName] = Field(
        default_factory=lambda: ["Authorization", "Cookie"],
        description="Client request headers carried on polls (plus the tenancy credential "
        "header). Default [Authorization, Cookie].",
    )

    @model_validator(mode="after")
    def _coherent(self) -> PollWait:
        if self.max_interval < self.interval:
            raise ValueError("max_interval must not be shorter than interval")
        if self.field is not None and not self.success:
            raise ValueError("field needs at least one success value")
        if self.field is None and (self.success or self.failure):
            raise ValueError("success/failure values need a field (JSON pointer)")
        return self


class Wait(Model):
    """How a synchronised route learns the completion: stream, poll, or both."""

    stream: StreamWait | None = None
    poll: PollWait | None = None

    @model_validator(mode="after")
    def _one_at_least(self) -> Wait:
        if self.stream is None and self.poll is None:
            raise ValueError("a sync route needs wait.stream and/or wait.poll")
        return self


class Respond(Model):
    """What the client gets once the completion is known."""

    success_status: StatusCode = Field(200, description="Status on success. Default 200.")
    failure_status: StatusCode = Field(500, description="Status on failure. Default 500.")
    body: Literal["event", "location"] = Field(
        "event",
        description="event: the completion's data; location: a GET of the Location. Default event.",
    )
    retry_after: Duration = Field(2.0, description="Retry-After on the fallback 202. Default 2s.")
    location: Literal["upstream", "sidecar"] = Field(
        "upstream",
        description="The Location of the fallback 202. upstream: the API's own (made "
        "client-facing); sidecar: the sidecar's status monitor, {operations.path}/{token}, "
        "answered from Redis (for a Location clients cannot use: none at all, internal, or "
        "needing credentials they lack). A 202 without a Location gets the sidecar's whenever "
        "Redis is configured. Default upstream.",
    )


MAX_IDEMPOTENCY_KEY = 255  # characters of an Idempotency-Key (what Stripe allows)


class Idempotency(Model):
    """Retries of one command with the same key run it once (`idempotency: {}` turns it on)."""

    header: HeaderName = Field(
        "Idempotency-Key",
        description="Request header carrying the client's key (1-255 printable ASCII "
        "characters, bare or as a quoted string). Default Idempotency-Key.",
    )
    ttl: Duration = Field(
        86400.0,
        gt=0,
        description="How long a key is remembered after its first call (its outcome is kept "
        "at least as long, for replays). Duration. Default 24h.",
    )


EVENT_TYPE_PATTERN = r"^\S{1,200}$"  # no whitespace: a type is one token in logs and filters
EventTypeName = Annotated[str, Field(pattern=EVENT_TYPE_PATTERN)]


class EventType(Model):
    """An event type with what the portal's catalog shows of it."""

    type: EventTypeName = Field(..., description="The event type, e.g. user.created. Required.")
    description: str = Field(
        "", max_length=1024, description="What the event means (shown in the portal). Default ''."
    )
    example: Any = Field(
        None,
        description="Example `data` of the payload (shown in the portal and prefilled in its test "
        "form). Default: the last real payload of this type with its values elided.",
    )


def _name_as_type(value: object) -> object:
    # The plain form `success: user.created` is the described form without a description.
    return {"type": value} if isinstance(value, str) else value


DescribedEventType = Annotated[
    EventType | None,
    BeforeValidator(_name_as_type, json_schema_input_type=EventTypeName | EventType | None),
]


class WebhookEvents(Model):
    """Webhook event types a route's completions are published as: a name, or a name with a
    description and an example."""

    success: DescribedEventType = Field(
        None,
        description="Type on success (a name, or {type, description, example}). "
        "Default <route>.succeeded.",
    )
    failure: DescribedEventType = Field(
        None,
        description="Type on failure (a name, or {type, description, example}). "
        "Default <route>.failed.",
    )

    def spec(self, outcome: Literal["success", "failure"]) -> EventType | None:
        """The declared event type of one outcome, or None."""
        return self.success if outcome == "success" else self.failure


class Route(Model):
    """One synchronised (or merely named) route: a match plus how to wait and answer."""

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Used in metrics, logs and webhooks. Unique.",
    )
    method: str = Field("*", description="HTTP method, or * for any. Default *.")
    path: str = Field(..., description="Path template, e.g. /api/users/{id}/activate.")
    upstream: HttpUrl | None = Field(None, description="Overrides the top-level upstream.")
    budget: Duration = Field(10.0, gt=0, description="Longest time a client is held. Default 10s.")
    max_waiting: int = Field(
        10000, ge=0, description="Past this many held calls, answer 202 at once. Default 10000."
    )
    correlation: Correlation = Field(default_factory=Correlation)
    wait: Wait | None = Field(
        None, description="How to wait. Without it the route is a named pass-through."
    )
    respond: Respond = Field(default_factory=Respond)
    idempotency: Idempotency | None = Field(
        None,
        description="Retries with the same Idempotency-Key (scoped to the caller's credential "
        "and this route) attach to the running call or replay its outcome; the upstream sees "
        "the command once. Needs wait and redis_url. Default: off.",
    )
    webhook_events: WebhookEvents = Field(default_factory=WebhookEvents)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value.upper() not in HTTP_METHODS:
            raise ValueError(f"unknown HTTP method {value!r}")
        return value.upper()

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        compile_path_template(value)
        return value

    @property
    def is_sync(self) -> bool:
        """True when the route waits for completions (not a mere named pass-through)."""
        return self.wait is not None

    @property
    def success_event(self) -> str:
        """Webhook type for a success."""
        spec = self.webhook_events.spec("success")
        return spec.type if spec else f"{self.name}.succeeded"

    @property
    def failure_event(self) -> str:
        """Webhook type for a failure."""
        spec = self.webhook_events.spec("failure")
        return spec.type if spec else f"{self.name}.failed"
