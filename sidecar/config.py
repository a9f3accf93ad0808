"""The operators' contract: process settings and routes, loaded from YAML and `SIDECAR_*` env vars.

One entry point, `load_settings(path)`, reads the YAML file, interpolates `${VAR}` /
`${VAR:-default}`, lets `SIDECAR_*` environment variables override it (env wins; nested keys with
`__`, e.g. `SIDECAR_WEBHOOKS__TIMEOUT=5s`), and validates everything at once. A bad file raises
`ConfigError` whose `problems` name every key path and rule, e.g.

    routes[1].wait.poll.interval: invalid duration 'soon' (use 250ms, 10s, 2m or seconds)

Every model forbids unknown keys (typos are errors) and is frozen. Durations are floats in seconds.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .validation import describe

DEFAULT_CONFIG_PATH = "config/sidecar.yaml"

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "*"}
)

# --------------------------------------------------------------------------------------------
# Scalar types
# --------------------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from `250ms`, `10s`, `2m`, `1h` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r} (use 250ms, 10s, 2m or seconds)")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration {value!r} (must not be negative)")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"invalid duration {value!r} (use 250ms, 10s, 2m or seconds)")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"},
            ],
            "description": "Duration: 250ms, 10s, 2m, 1h or seconds.",
        }
    ),
]


def _check_pointer(value: str) -> str:
    if value != "" and not value.startswith("/"):
        raise ValueError(f"invalid JSON pointer {value!r} (must be empty or start with '/')")
    if re.search(r"~(?![01])", value):
        raise ValueError(f"invalid JSON pointer {value!r} ('~' must be followed by 0 or 1)")
    return value


JsonPointer = Annotated[str, AfterValidator(_check_pointer)]


def _check_status(value: int) -> int:
    if not 100 <= value <= 599:
        raise ValueError(f"invalid HTTP status {value} (must be 100-599)")
    return value


StatusCode = Annotated[int, AfterValidator(_check_status)]


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid address {value!r} (use host:port, e.g. 0.0.0.0:8080)")
    return value


def _number_as_text(value: object) -> object:
    # `listen: 8080` is read by YAML as a number: report it as an address, not a type error.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


ListenAddress = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_check_listen)]


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid URL {value!r} (use http://host:port or https://host)")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]


def _check_webhook_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid URL {value!r} (use http://host/path or https://host/path)")
    return value  # exactly as written: a receiver may care about a trailing slash


WebhookUrl = Annotated[str, AfterValidator(_check_webhook_url)]


def _check_redis_url(value: str) -> str:
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"invalid Redis URL {value!r} (use redis://host:port/db)")
    return value


def _check_header_name(value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise ValueError(f"invalid header name {value!r}")
    return value


HeaderName = Annotated[str, AfterValidator(_check_header_name)]


def _check_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"invalid network {value!r} (use CIDR, e.g. 10.0.0.0/8)") from None
    return value


def _blank_is_none(value: object) -> object:
    # `admin_token: ${SIDECAR_ADMIN_TOKEN:-}` with the variable unset means "no token", never
    # an empty token that an empty `Bearer` would match.
    return None if isinstance(value, str) and not value.strip() else value


def secret_from_file(data: Any, key: str) -> Any:
    """`<key>_file` (a path, as Kubernetes mounts secrets) read into `<key>`: the file's text
    without its trailing newline. Both set is an error, as is a file that cannot be read."""
    if not isinstance(data, Mapping) or not data.get(f"{key}_file"):
        return data
    path = data[f"{key}_file"]
    if data.get(key) not in (None, ""):
        raise ValueError(f"{key} and {key}_file are both set (use one)")
    try:
        text = Path(str(path)).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{key}_file: cannot read {path!r} ({exc.strerror})") from None
    return {**data, key: text.rstrip("\r\n")}


SecretFile = Annotated[
    str | None, Field(None, description="A file holding the secret (its text, less one newline).")
]


class Model(BaseModel):
    """Base of every config block: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# Path templates
# --------------------------------------------------------------------------------------------

_TEMPLATE_VAR = re.compile(r"\{([^{}]*)\}")


def compile_path_template(template: str) -> re.Pattern[str]:
    """Regex for `/api/users/{id}/activate`: each `{name}` matches one path segment."""
    if not template.startswith("/"):
        raise ValueError(f"invalid path {template!r} (must start with '/')")
    pattern, last, names = "", 0, set()
    for match in _TEMPLATE_VAR.finditer(template):
        name = match.group(1)
        if not name.isidentifier():
            raise ValueError(f"invalid path {template!r} (placeholder {{{name}}} is not a name)")
        if name in names:
            raise ValueError(f"invalid path {template!r} (placeholder {{{name}}} twice)")
        names.add(name)
        pattern += re.escape(template[last : match.start()]) + f"(?P<{name}>[^/]+)"
        last = match.end()
    rest = template[last:]
    if "{" in rest or "}" in rest or "{" in pattern.replace("(?P<", ""):
        raise ValueError(f"invalid path {template!r} (unbalanced braces)")
    return re.compile("^" + pattern + re.escape(rest) + "$")


# --------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------


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
    """Wait for a completion event on a Redis stream."""

    key: str = Field(..., min_length=1, description="Stream key (not prefixed). Required.")
    id_field: str = Field("correlation_id", description="Event field holding the id.")
    type_field: str = Field("type", description="Event field holding the event type.")
    success: list[str] = Field(..., min_length=1, description="Types that mean success.")
    failure: list[str] = Field(default_factory=list, description="Types that mean failure.")
    data_field: str = Field(
        "payload", description="Event field holding the result (JSON text, else returned as text)."
    )

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


# --------------------------------------------------------------------------------------------
# Process-level blocks
# --------------------------------------------------------------------------------------------


class Tenancy(Model):
    """How a client is identified for webhook ownership."""

    credential_header: HeaderName = Field(
        "Authorization", description="Request header naming the client. Default Authorization."
    )
    hash_key: Annotated[SecretStr | None, BeforeValidator(_blank_is_none)] = Field(
        None,
        description="Key of the keyed hash (HMAC-SHA256) credentials are stored as. "
        "Default: derived from admin_token; set it explicitly in production.",
    )
    hash_key_file: SecretFile = None

    @model_validator(mode="before")
    @classmethod
    def _files(cls, data: Any) -> Any:
        return secret_from_file(data, "hash_key")


class DeclaredSubscription(Model):
    """An operator-owned webhook subscription declared in YAML."""

    id: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Stable id.")
    url: WebhookUrl
    events: list[str] = Field(default_factory=lambda: ["*"], description="Types or *.")
    description: str = ""
    enabled: bool = True
    secret: SecretStr = Field(..., description="whsec_<base64>.")

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret.startswith("whsec_"):
            raise ValueError("secret must start with whsec_")
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise ValueError("secret must be whsec_ followed by base64") from None
        if not 24 <= len(key) <= 64:
            raise ValueError(f"secret must decode to 24-64 bytes, not {len(key)}")
        return value


class Webhooks(Model):
    """Webhook delivery settings."""

    allow_private_targets: bool = Field(
        False, description="Allow loopback/private targets. Metadata is always refused."
    )
    allowed_networks: list[Annotated[str, AfterValidator(_check_cidr)]] = Field(
        default_factory=list, description="CIDRs allowed even when private."
    )
    schedule: list[Duration] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
        description="Delays before each retry (±20% jitter). Default 5s,5m,30m,2h,5h,10h,10h.",
    )
    timeout: Duration = Field(15.0, gt=0, description="Per-attempt timeout. Default 15s.")
    claim_after: Duration | None = Field(
        None,
        gt=0,
        description="How long an attempt may stay in flight on one replica before another "
        "takes it over (the replica is presumed dead). Must exceed timeout, so a live attempt "
        "is never made twice this way. Default: timeout + 5s.",
    )
    concurrency: int = Field(32, ge=1, description="Deliveries in flight per process. Default 32.")
    per_subscription: int = Field(
        4,
        ge=1,
        description="Deliveries in flight per subscription (1 while its receiver is failing: "
        "timeouts, refused connections, 5xx, 429). Default 4.",
    )
    per_tenant: int = Field(
        0,
        ge=0,
        description="Deliveries in flight per owner (a client, or the operator) in a process, "
        "so one tenant's slow receivers cannot take every slot. Default 0: half of concurrency "
        "(at least twice per_subscription, at most concurrency).",
    )
    disable_after: Duration = Field(
        5 * 86400.0,
        gt=0,
        description="A subscription whose attempts have all failed for this long is disabled "
        "(logged, counted). Default 5 days.",
    )
    max_subscriptions_per_tenant: int = Field(
        50,
        ge=0,
        description="Subscriptions one client may have (the operator is not limited); past it "
        "a create answers 409. 0: no limit. Default 50.",
    )
    test_sends_per_minute: int = Field(
        10,
        ge=0,
        description="Test messages one client may send per minute (sliding window; the "
        "operator is not limited); past it 429 with Retry-After. 0: no limit. Default 10.",
    )
    outbox_maxlen: int = Field(
        100_000,
        ge=100,
        description="Dead letters kept (approximate). Default 100000.",
    )
    subscriptions: list[DeclaredSubscription] = Field(
        default_factory=list, description="Operator-owned subscriptions."
    )

    @model_validator(mode="after")
    def _claim_after_timeout(self) -> Webhooks:
        if self.claim_after is not None and self.claim_after <= self.timeout:
            raise ValueError(
                f"claim_after ({self.claim_after:g}s) must exceed timeout ({self.timeout:g}s): "
                "else an attempt still in flight would be made a second time"
            )
        return self

    @property
    def claim_after_s(self) -> float:
        """Seconds before an attempt in flight on a silent replica is taken over."""
        return self.claim_after if self.claim_after is not None else self.timeout + 5.0


class RedisTls(Model):
    """TLS to Redis (with a `rediss://` URL): whom to trust, and the client certificate."""

    ca_file: str | None = Field(None, description="CA bundle that signed Redis's certificate.")
    cert_file: str | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: str | None = Field(None, description="The client certificate's private key.")
    check_hostname: bool = Field(True, description="Check the certificate names the host.")

    @model_validator(mode="after")
    def _pairs(self) -> RedisTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file {path!r}")
        return self


class RedisSentinel(Model):
    """A Sentinel-guarded primary: the sidecar asks the sentinels where the primary is, and
    follows a failover without a restart."""

    master: str = Field(..., min_length=1, description="The monitored primary's name. Required.")
    nodes: list[ListenAddress] = Field(
        ..., min_length=1, description="Sentinels, as host:port. Required."
    )
    username: str | None = Field(None, description="ACL user of the sentinels, if any.")
    password: Annotated[SecretStr | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="Password of the sentinels, if any (the primary's: redis_password)."
    )
    password_file: SecretFile = None

    @model_validator(mode="before")
    @classmethod
    def _files(cls, data: Any) -> Any:
        return secret_from_file(data, "password")


class Readiness(Model):
    """What `/readyz` requires."""

    require_redis: bool = Field(
        True,
        description="Not ready while Redis does not answer (or the completion reader is not "
        "connected). false: /readyz still names the problem but answers 200, so a load balancer "
        "keeps sending calls, which fall back to 202 until Redis is back. Default true.",
    )


class Log(Model):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "k": 1024,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
}


def parse_size(value: object) -> int:
    """Bytes from `10MiB`, `512KiB`, `1GB` or a plain number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    raise ValueError(f"invalid size {value!r} (use 10MiB, 512KiB, 1GB or bytes)")


ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {
                    "type": "string",
                    "pattern": r"^\s*\d+(\.\d+)?\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$",
                },
            ],
            "description": "Size: 10MiB, 512KiB, 1GB or bytes.",
        }
    ),
]


class Clients(Model):
    """Limits on what a client may cost: time to send a request, connections, body size."""

    header_timeout: Duration = Field(
        10.0,
        gt=0,
        description="The request line and headers must arrive within this, else 408 and the "
        "connection is closed. Default 10s.",
    )
    body_timeout: Duration = Field(
        30.0,
        gt=0,
        description="A synchronised route's whole body must arrive within this (it is read in "
        "full before the upstream is called); on other routes, the longest pause between two "
        "parts of a streamed body. Else 408 and the connection is closed. Default 30s.",
    )
    idle_timeout: Duration = Field(
        75.0, gt=0, description="How long an idle keep-alive connection is kept. Default 75s."
    )
    max_connections: int = Field(
        10_000,
        ge=1,
        description="Client connections per process and listener; past it new ones are closed "
        "at once (counted, logged at most once a second). Default 10000.",
    )
    max_connections_per_address: int = Field(
        0,
        ge=0,
        description="Client connections one client address (IP) may hold open per process and "
        "listener; past it that address's new ones are closed at once (counted, logged at most "
        "once a second), so one client cannot take every connection. 0: no limit per address "
        "(the default: behind a load balancer or a NAT, many clients share one address).",
    )
    max_body: ByteSize = Field(
        10 * 1024 * 1024,
        ge=0,
        description="Largest body of a call on a synchronised route (larger: 413). Pass-through "
        "bodies are streamed and not limited. Default 10MiB.",
    )


class Proxy(Model):
    """Upstream connection behaviour."""

    connect_timeout: Duration = Field(5.0, gt=0, description="Upstream connect timeout.")
    read_timeout: Duration = Field(
        60.0, gt=0, description="Longest silence while reading the upstream's answer."
    )
    max_connections: int = Field(1000, ge=1, description="Pooled upstream connections.")
    client: Literal["pool", "session"] = Field(
        "pool",
        description="The upstream client: pool (the sidecar's own keep-alive pool on aiohttp's "
        "HTTP parser; leaner) or session (aiohttp's ClientSession). Default pool.",
    )
    trust_forwarded_headers: bool = Field(
        False, description="Keep clients' X-Forwarded-* (behind a trusted load balancer)."
    )
    public_url: Annotated[HttpUrl | None, BeforeValidator(_blank_is_none)] = Field(
        None,
        description="Client-facing origin for rewritten Locations. Default: the request's own "
        "scheme and Host.",
    )


class StreamReader(Model):
    """The completion hub's XREAD loop."""

    block: Duration = Field(1.0, gt=0, description="XREAD BLOCK time. Default 1s.")
    count: int = Field(500, ge=1, description="Events per XREAD.")
    recent_size: int = Field(10_000, ge=0, description="Completions cached for late waiters.")
    recent_bytes: ByteSize = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Bytes the cached completions may hold (their data, about); the oldest "
        "go first. Default 64MiB.",
    )
    recent_ttl: Duration = Field(60.0, gt=0, description="How long a completion stays cached.")


_HOST_SOURCE = re.compile(r"^(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$|^\[[0-9A-Fa-f:.]+\]$")


def _check_frame_ancestor(value: str) -> str:
    if value in ("'self'", "self"):
        return "'self'"
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        parts = None
    host = (
        parts.netloc.rpartition(":")[0] if parts and parts.port else (parts.netloc if parts else "")
    )
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not _HOST_SOURCE.match(host)
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(
            f"invalid frame ancestor {value!r} (use 'self' or an origin, e.g. "
            "https://app.example.com)"
        )
    return value.rstrip("/")


class Portal(Model):
    """The client portal served at /admin/ on the admin listener."""

    public_url: Annotated[HttpUrl | None, BeforeValidator(_blank_is_none)] = Field(
        None,
        description="Origin (and path prefix) clients reach the admin listener at, for the "
        "portal links minted by POST /admin/api/portal-sessions, e.g. https://hooks.example.com. "
        "Default: the origin the minting request was made to.",
    )
    frame_ancestors: list[Annotated[str, AfterValidator(_check_frame_ancestor)]] = Field(
        default_factory=list,
        max_length=32,
        description="Origins allowed to embed the portal in a frame (CSP frame-ancestors), "
        "e.g. ['https://app.example.com'] or ['self']. Default []: no framing.",
    )
    sign_ins_per_minute: int = Field(
        60,
        ge=1,
        le=100_000,
        description="Sign-ins (POST /admin/api/sign-in) allowed per client address and minute, "
        "across replicas; past it 429 with Retry-After. Default 60.",
    )


class Settings(BaseSettings):
    """The whole process configuration."""

    model_config = SettingsConfigDict(
        env_prefix="SIDECAR_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    listen: ListenAddress = Field("0.0.0.0:8080", description="Proxy listener host:port.")
    admin_listen: ListenAddress = Field("127.0.0.1:9000", description="Admin listener.")
    upstream: HttpUrl = Field("http://127.0.0.1:8000", description="Default upstream origin.")
    redis_url: Annotated[
        Annotated[str, AfterValidator(_check_redis_url)] | None, BeforeValidator(_blank_is_none)
    ] = Field(None, description="Needed for stream waits and webhooks.")
    redis_cluster: Literal["auto", "true", "false"] | bool = Field(
        "auto",
        description="auto: ask the node redis_url names whether it belongs to a Redis Cluster "
        "(at start); true/false force it. Default auto.",
    )
    redis_sentinel: RedisSentinel | None = Field(
        None,
        description="A Sentinel-guarded primary; redis_url then gives the scheme and database "
        "only (redis://primary/0).",
    )
    redis_username: str | None = Field(None, description="Redis ACL user. Default: none.")
    redis_password: Annotated[SecretStr | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="Redis password (or in redis_url). Default: none."
    )
    redis_password_file: SecretFile = None
    redis_tls: RedisTls | None = Field(None, description="TLS settings for rediss:// URLs.")
    key_prefix: str = Field(
        "sidecar", pattern=r"^[A-Za-z0-9_.:-]+$", description="Prefix of every owned Redis key."
    )
    admin_token: Annotated[SecretStr | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="Operator bearer token."
    )
    admin_token_file: SecretFile = None
    tenancy: Tenancy = Field(default_factory=Tenancy)
    correlation_header: HeaderName = Field("X-Correlation-ID", description="Correlation header.")
    shutdown_grace: Duration = Field(30.0, ge=0, description="Drain time on SIGTERM.")
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        1,
        description="Worker processes sharing the listeners (SO_REUSEPORT, Linux); auto: one "
        "per core. Held calls and max_waiting are per worker. Default 1.",
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto",
        description="The event loop: uvloop (faster, less memory per connection) or asyncio's "
        "own. auto: uvloop when installed. Default auto.",
    )
    tracking_ttl: Duration = Field(
        86400.0, gt=0, description="How long a 202'd call is remembered in Redis. Default 24h."
    )
    proxy: Proxy = Field(default_factory=Proxy)
    clients: Clients = Field(default_factory=Clients)
    stream_reader: StreamReader = Field(default_factory=StreamReader)
    log: Log = Field(default_factory=Log)
    readiness: Readiness = Field(default_factory=Readiness)
    routes: list[Route] = Field(default_factory=list, description="Ordered; first match wins.")
    webhooks: Webhooks = Field(default_factory=Webhooks)
    portal: Portal = Field(default_factory=Portal)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init kwargs; env vars win over it.
        return (env_settings, init_settings)

    @model_validator(mode="before")
    @classmethod
    def _files(cls, data: Any) -> Any:
        return secret_from_file(secret_from_file(data, "admin_token"), "redis_password")

    @property
    def cluster_mode(self) -> bool | None:
        """True/False when forced, None to detect."""
        if isinstance(self.redis_cluster, bool):
            return self.redis_cluster
        return None if self.redis_cluster == "auto" else self.redis_cluster == "true"

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        problems = cross_check(self.model_dump(mode="python"))
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def stream_keys(self) -> list[str]:
        """Every stream key a route waits on, in route order, without repeats."""
        keys = [r.wait.stream.key for r in self.routes if r.wait and r.wait.stream]
        return list(dict.fromkeys(keys))


def cross_check(raw: Mapping[str, Any]) -> list[str]:
    """Rules spanning several keys, checked on raw (possibly invalid) data so they add to
    field errors instead of hiding behind them."""
    problems: list[str] = []
    routes = raw.get("routes")
    if not isinstance(routes, Sequence) or isinstance(routes, str):
        return problems
    seen: dict[str, int] = {}
    has_redis = bool(raw.get("redis_url"))
    for index, route in enumerate(routes):
        if not isinstance(route, Mapping):
            continue
        name = route.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(
                    f"routes[{index}].name: duplicate route name {name!r} "
                    f"(first used by routes[{seen[name]}])"
                )
            else:
                seen[name] = index
        wait = route.get("wait")
        if not has_redis and isinstance(wait, Mapping) and wait.get("stream"):
            problems.append(f"routes[{index}].wait.stream: a stream wait needs redis_url")
    webhooks = raw.get("webhooks")
    if not has_redis and isinstance(webhooks, Mapping) and webhooks.get("subscriptions"):
        problems.append("webhooks.subscriptions: webhooks need redis_url")
    return problems


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every one, each with its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, path: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(
                f"{path or '<root>'}: environment variable {name} is not set "
                f"(use ${{{name}:-default}} for a default)"
            )
            return ""

        return _INTERPOLATION.sub(replace, node)
    if isinstance(node, dict):
        return {
            k: _interpolate(v, f"{path}.{k}" if path else str(k), env, problems)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", env, problems) for i, v in enumerate(node)]
    return node


_WORDING = {
    "extra_forbidden": "unknown key (check the spelling against config/sidecar.yaml)",
    "missing": "required key is missing",
}


def format_validation_error(error: ValidationError) -> list[str]:
    """One `key.path: reason` line per problem, in the order pydantic found them."""
    return describe(error, _WORDING)


def parse_settings(
    raw: Mapping[str, Any] | None, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Settings:
    """Validate a parsed YAML mapping (after `${VAR}` interpolation) plus env overrides."""
    env = os.environ if env is None else env
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(source, ["<root>: the file must be a mapping of keys to values"])
    data = _interpolate(dict(raw), "", env, problems)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        unset = {problem.partition(": ")[0] for problem in problems}
        found = [p for p in format_validation_error(exc) if p.partition(": ")[0] not in unset]
        env_redis = next(
            (v for k, v in os.environ.items() if k.upper() == "SIDECAR_REDIS_URL" and v), None
        )
        checked = {**data, "redis_url": env_redis} if env_redis else data
        problems += found + [p for p in cross_check(checked) if p not in found]
    if problems:
        raise ConfigError(source, problems)
    return settings


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, interpolate and validate the YAML file at `path` (default `$SIDECAR_CONFIG`)."""
    path = Path(path or os.environ.get("SIDECAR_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"{where}invalid YAML ({reason})"]) from None
    return parse_settings(raw, str(path))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for editors (`sidecar schema`)."""
    schema = Settings.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Synchronising sidecar configuration"
    return schema
