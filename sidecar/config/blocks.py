"""The process-level blocks: Redis TLS and Sentinel, readiness, logging, client limits, the
upstream client, the completion reader, tenancy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator

from .types import (
    ByteSize,
    CountOrAuto,
    Duration,
    HeaderName,
    HttpUrl,
    ListenAddress,
    Model,
    SecretFile,
    blank_is_none,
    secret_from_file,
)


class Verify(Model):
    """Ask the upstream whether a client credential is real before the admin API or the portal
    acts on it: a request with the client's credential header to `path`; a 2xx admits it, a
    401 or 403 is refused (401), anything else (or no answer) is a 503: nothing is created for
    a credential the upstream does not know."""

    path: str = Field(
        ...,
        pattern=r"^/[^\s]*$",
        description="Path on the upstream (e.g. /v1/me), asked with the client's credential "
        "header only. Required.",
    )
    method: Literal["GET", "HEAD", "POST"] = Field(
        "GET", description="Method of the request. Default GET."
    )
    cache_for: Duration = Field(
        60.0,
        ge=0,
        description="How long a verdict is kept per credential (per process), admitted or "
        "refused. Default 60s.",
    )
    timeout: Duration = Field(
        5.0, gt=0, description="Longest wait for the upstream's answer. Default 5s."
    )


class Tenancy(Model):
    """How a client is identified for webhook ownership."""

    credential_header: HeaderName = Field(
        "Authorization", description="Request header naming the client. Default Authorization."
    )
    hash_key: Annotated[SecretStr | None, BeforeValidator(blank_is_none)] = Field(
        None,
        description="Key of the keyed hash (HMAC-SHA256) credentials are stored as. "
        "Default: derived from admin_token; set it explicitly in production.",
    )
    hash_key_file: SecretFile = None
    verify: Verify | None = Field(
        None,
        description="Admit only credentials the upstream accepts (what production should "
        "use: without it any string is a client of its own). Default: none.",
    )

    @model_validator(mode="before")
    @classmethod
    def _files(cls, data: Any) -> Any:
        return secret_from_file(data, "hash_key")


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
    password: Annotated[SecretStr | None, BeforeValidator(blank_is_none)] = Field(
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
        False,
        description="true: not ready (503) while Redis does not answer (or the completion reader "
        "is not connected), so every replica leaves the load balancer at once during a Redis "
        'outage. false: /readyz names the problem but answers 200 "ready (degraded)": the '
        "replica still serves (pass-through works, synchronised calls fall back to 202, their "
        "tracking is written once Redis is back). Default false.",
    )
    require_sources: bool = Field(
        True,
        description="Not ready while a broker source (sources:) is not read. false: /readyz "
        "names it but answers 200; calls on its routes fall back to 202 until it is back. "
        "Default true.",
    )


class TrackingBacklog(Model):
    """Tracking records whose write failed on a Redis fault, kept in this process's memory and
    written once Redis answers again, so a call made during a Redis outage still reaches its
    client's webhooks."""

    max_calls: int = Field(
        10_000,
        ge=0,
        le=1_000_000,
        description="Most records kept (about 1 KB each); when full the oldest is dropped. 0: "
        "none kept (such calls' completions reach operator subscriptions only). Default 10000.",
    )
    max_age: Duration = Field(
        300.0,
        gt=0,
        description="A record not written within this is dropped (its completion has likely "
        "been handed to operator subscriptions already). Default 5m.",
    )


class Log(Model):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


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
        "full before the upstream is called); on any route, the longest pause between two "
        "parts of a body. Else 408 and the connection is closed. Default 30s.",
    )
    idle_timeout: Duration = Field(
        75.0, gt=0, description="How long an idle keep-alive connection is kept. Default 75s."
    )
    max_connections: CountOrAuto = Field(
        "auto",
        description="Client connections per process and listener; past it new ones are closed "
        "at once (counted, logged at most once a second). auto: what the open-files limit "
        "holds once the sidecar has raised it to the hard limit, less the files the upstream "
        "pool (proxy.max_connections), Redis, webhook deliveries, the brokers and the rest "
        "need; stated at start. Default auto.",
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
        "bodies are not limited in size (their start is buffered: pass_through_buffer). "
        "Default 10MiB.",
    )
    buffer_budget: ByteSize = Field(
        256 * 1024 * 1024,
        ge=1,
        description="Bytes of request bodies one process holds in memory at once, all calls "
        "together: synchronised bodies until they are forwarded, the buffered start of "
        "pass-through bodies until an upstream connection takes it. A body that does not fit: "
        "503 + Retry-After. At least max_body. Default 256MiB.",
    )
    pass_through_buffer: ByteSize = Field(
        64 * 1024,
        ge=0,
        description="A pass-through body is read up to this many bytes before an upstream "
        "connection is taken (all of it when it is no larger, then sent with a Content-Length), "
        "so a slow sender holds a socket, never a pooled connection; the rest is streamed. 0: "
        "streamed from its first byte. Default 64KiB.",
    )
    min_body_rate: ByteSize = Field(
        240,
        ge=0,
        description="Bytes a second a request body must average once body_rate_grace has "
        "passed (time spent waiting for the upstream to take bytes does not count), else 408 "
        "and the connection is closed. 0: no minimum. Default 240 (Kestrel's).",
    )
    body_rate_grace: Duration = Field(
        5.0,
        ge=0,
        description="How long a body may take before min_body_rate applies. Default 5s.",
    )

    @model_validator(mode="after")
    def _budget_fits(self) -> Clients:
        if self.buffer_budget < self.max_body:
            raise ValueError("buffer_budget must be at least max_body (one body must fit)")
        if self.buffer_budget < self.pass_through_buffer:
            raise ValueError("buffer_budget must be at least pass_through_buffer")
        return self


class Proxy(Model):
    """Upstream connection behaviour."""

    connect_timeout: Duration = Field(5.0, gt=0, description="Upstream connect timeout.")
    read_timeout: Duration = Field(
        60.0, gt=0, description="Longest silence while reading the upstream's answer."
    )
    max_connections: int = Field(1000, ge=1, description="Pooled upstream connections.")
    client: Literal["pool", "session"] = Field(
        "pool",
        description="Deprecated: the sidecar has one upstream client, its own keep-alive pool "
        "(calls, polls and GETs of a Location alike). `session` is accepted and ignored, with a "
        "warning at start. Default pool.",
    )
    trust_forwarded_headers: bool = Field(
        False, description="Keep clients' X-Forwarded-* (behind a trusted load balancer)."
    )
    public_url: Annotated[HttpUrl | None, BeforeValidator(blank_is_none)] = Field(
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
