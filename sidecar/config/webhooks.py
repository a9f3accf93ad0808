"""The webhook blocks: delivery settings, operator-owned subscriptions declared in YAML, and the
client portal."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from .types import ByteSize, Duration, HttpUrl, Model, WebhookUrl, blank_is_none, check_cidr


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


LINGERING_PER_SLOT = 3  # attempts past breaker.linger_after, per slot of concurrency
RETENTION_MIN_S = 1.0
RETENTION_MAX_S = 90 * 86400.0
SEVEN_DAYS_S = 7 * 86400.0


def _shown(seconds: float) -> str:
    """A duration as a user would write it: 2161h, 90m, 30s, 500ms."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms" if 0 < seconds < 1 else f"{seconds:g}s"


def _check_retention(value: float) -> float:
    if not RETENTION_MIN_S <= value <= RETENTION_MAX_S:
        raise ValueError(f"must be between 1s and 2160h (90 days), not {_shown(value)}")
    return value


def _check_open_for(value: float) -> float:
    if not 0 < value <= 86400:
        raise ValueError(f"must be more than 0s and at most 24h, not {_shown(value)}")
    return value


RetentionTime = Annotated[Duration, AfterValidator(_check_retention)]
OpenTime = Annotated[Duration, AfterValidator(_check_open_for)]


class Retention(Model):
    """How long delivery records are kept in Redis: what storage grows with."""

    messages: RetentionTime = Field(
        SEVEN_DAYS_S,
        description="How long a message (its payload, headers and its own attempts) is kept "
        "after its last attempt, for the message view and redelivery. 1s to 2160h. "
        "Default 7 days (168h).",
    )
    attempts: RetentionTime = Field(
        SEVEN_DAYS_S,
        description="How long an attempt stays in the logs (the message log of each owner and "
        "of everyone, a subscription's attempts, dead letters); older entries are trimmed, "
        "besides the logs' count bounds. 1s to 2160h. Default 7 days (168h).",
    )


class Breaker(Model):
    """The circuit breaker of each endpoint (per process): closed, open, half-open."""

    enabled: bool = Field(
        True,
        description="false: every endpoint always gets per_subscription slots. Default true.",
    )
    failures: int = Field(
        5,
        ge=1,
        le=1000,
        description="Failed attempts in a row (timeouts, refused connections, 5xx, 429; an "
        "attempt in flight past linger_after counts at once), none older than window, that "
        "open the breaker. Default 5.",
    )
    window: Duration = Field(
        60.0,
        gt=0,
        le=86400,
        description="Failures older than this are forgotten. Default 60s.",
    )
    open_for: list[OpenTime] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 300.0],
        min_length=1,
        max_length=20,
        description="How long the breaker stays open before one probe attempt (half-open): "
        "the n-th for the n-th opening in a row, the last repeated; a delivered probe closes "
        "it. Default 5s,30s,2m,5m.",
    )
    linger_after: Duration = Field(
        2.0,
        gt=0,
        description="An attempt still in flight after this long gives its process-wide slot "
        "back (it still counts against its owner's and its endpoint's), up to 3 x concurrency "
        "such attempts, so hanging receivers cannot hold every slot. Default 2s.",
    )


class Webhooks(Model):
    """Webhook delivery settings."""

    allow_private_targets: bool = Field(
        False, description="Allow loopback/private targets. Metadata is always refused."
    )
    allowed_networks: list[Annotated[str, AfterValidator(check_cidr)]] = Field(
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
        description="Deliveries in flight per subscription while its breaker is closed (1 "
        "while half-open, none while open). Default 4.",
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
    max_subscriptions: int = Field(
        10_000,
        ge=0,
        description="Subscriptions of all clients together (the operator's are not counted "
        "against it); past it a client's create answers 409. A bound that holds however many "
        "clients there are (without tenancy.verify, any string is a client). 0: no limit. "
        "Default 10000.",
    )
    test_sends_per_minute_total: int = Field(
        300,
        ge=0,
        description="Test messages all clients together may send per minute (sliding window; "
        "the operator is not limited); past it 429 with Retry-After. 0: no limit. Default 300.",
    )
    test_data_per_hour: ByteSize = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Bytes of test data all clients together may send per hour (what test "
        "messages can hold in Redis at most, with test_retention at 1h); past it 429 with "
        "Retry-After. 0: no limit. Default 64MiB.",
    )
    test_retention: Duration = Field(
        3600.0,
        gt=0,
        description="How long a test message (its payload and headers) is kept after it was "
        "sent; its attempts stay in the logs. Default 1h.",
    )
    outbox_maxlen: int = Field(
        100_000,
        ge=100,
        description="Dead letters kept (approximate). Default 100000.",
    )
    retention: Retention = Field(
        default_factory=Retention,
        description="How long messages and attempts are kept (Redis storage grows with it).",
    )
    breaker: Breaker = Field(
        default_factory=Breaker,
        description="Each endpoint's circuit breaker: failing endpoints wait without slots.",
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
    def delivery_connections(self) -> int:
        """Connections webhook attempts may have open at once: the slots, and the attempts
        lingering past breaker.linger_after."""
        return self.concurrency * (1 + LINGERING_PER_SLOT)

    @property
    def claim_after_s(self) -> float:
        """Seconds before an attempt in flight on a silent replica is taken over."""
        return self.claim_after if self.claim_after is not None else self.timeout + 5.0


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

    public_url: Annotated[HttpUrl | None, BeforeValidator(blank_is_none)] = Field(
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
        description="Sign-ins (POST /admin/api/sign-in) allowed per client address (the peer's; "
        "with proxy.trust_forwarded_headers, the right-most X-Forwarded-For entry) and minute, "
        "across replicas; past it 429 with Retry-After. Default 60.",
    )
