"""`Settings`: the whole file, and the rules that span several keys."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .blocks import (
    Clients,
    Log,
    Proxy,
    Readiness,
    RedisSentinel,
    RedisTls,
    StreamReader,
    Tenancy,
    TrackingBacklog,
)
from .operations import Operations
from .routes import Route
from .sources import Sources, check_sources
from .types import (
    Duration,
    HeaderName,
    HttpUrl,
    ListenAddress,
    SecretFile,
    blank_is_none,
    check_redis_url,
    secret_from_file,
)
from .webhooks import Portal, Webhooks

# The environment whose `SIDECAR_*` variables override the file, for the `Settings` being built:
# given by the caller (`loading.parse_settings`), never read from `os.environ` behind its back.
# Empty unless set: a `Settings(...)` built directly reads no variable.
_ENV: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "env", default=MappingProxyType({})
)


@contextmanager
def overrides_from(env: Mapping[str, str]) -> Iterator[None]:
    """Within the block, `Settings(...)` takes its `SIDECAR_*` overrides from `env`."""
    token = _ENV.set(env)
    try:
        yield
    finally:
        _ENV.reset(token)


class ExplicitEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, over the mapping `overrides_from` gives."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENV.get()
        return dict(env) if self.case_sensitive else {k.lower(): v for k, v in env.items()}


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
        Annotated[str, AfterValidator(check_redis_url)] | None, BeforeValidator(blank_is_none)
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
    redis_password: Annotated[SecretStr | None, BeforeValidator(blank_is_none)] = Field(
        None, description="Redis password (or in redis_url). Default: none."
    )
    redis_password_file: SecretFile = None
    redis_tls: RedisTls | None = Field(None, description="TLS settings for rediss:// URLs.")
    key_prefix: str = Field(
        "sidecar", pattern=r"^[A-Za-z0-9_.:-]+$", description="Prefix of every owned Redis key."
    )
    admin_token: Annotated[SecretStr | None, BeforeValidator(blank_is_none)] = Field(
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
    tracking_backlog: TrackingBacklog = Field(default_factory=TrackingBacklog)
    proxy: Proxy = Field(default_factory=Proxy)
    clients: Clients = Field(default_factory=Clients)
    stream_reader: StreamReader = Field(default_factory=StreamReader)
    log: Log = Field(default_factory=Log)
    readiness: Readiness = Field(default_factory=Readiness)
    sources: Sources = Field(
        default_factory=dict,
        description="Brokers a route may wait on (wait.stream.source), by name: Kafka, AMQP, "
        "NATS JetStream. Default: none (streams are read from the Redis at redis_url).",
    )
    routes: list[Route] = Field(default_factory=list, description="Ordered; first match wins.")
    webhooks: Webhooks = Field(default_factory=Webhooks)
    portal: Portal = Field(default_factory=Portal)
    operations: Operations = Field(default_factory=Operations)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init kwargs; env vars (the explicit mapping) win over it.
        return (ExplicitEnvSource(settings_cls), init_settings)

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
        problems = cross_check(self.model_dump(mode="python", exclude_unset=True))
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def stream_keys(self) -> list[str]:
        """Every Redis stream key a route waits on, in route order, without repeats (streams
        of broker sources are not Redis keys)."""
        keys = [
            r.wait.stream.key
            for r in self.routes
            if r.wait and r.wait.stream and r.wait.stream.source is None
        ]
        return list(dict.fromkeys(keys))

    @property
    def sources_used(self) -> list[str]:
        """Every source some route waits on, in route order, without repeats."""
        names = [r.wait.stream.source for r in self.routes if r.wait and r.wait.stream]
        return list(dict.fromkeys(n for n in names if n is not None))


def cross_check(raw: Mapping[str, Any]) -> list[str]:
    """Rules spanning several keys, checked on raw (possibly invalid) data so they add to
    field errors instead of hiding behind them."""
    problems: list[str] = []
    routes = raw.get("routes", [])
    if not isinstance(routes, Sequence) or isinstance(routes, str):
        routes = []
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
        stream = wait.get("stream") if isinstance(wait, Mapping) else None
        on_redis = not (isinstance(stream, Mapping) and stream.get("source") is not None)
        if not has_redis and stream and on_redis:
            problems.append(f"routes[{index}].wait.stream: a stream wait needs redis_url")
        problems += _operations_need(route, index, has_redis)
    # Sources first, then every route's problems in route order.
    linked = check_sources(raw)
    on_routes = [p for p in (*problems, *linked) if p.startswith("routes[")]
    problems = [p for p in linked if not p.startswith("routes[")] + sorted(
        on_routes, key=lambda p: int(p[len("routes[") : p.index("]")])
    )
    webhooks = raw.get("webhooks")
    if not has_redis and isinstance(webhooks, Mapping) and webhooks.get("subscriptions"):
        problems.append("webhooks.subscriptions: webhooks need redis_url")
    return problems


def _operations_need(route: Mapping[str, Any], index: int, has_redis: bool) -> list[str]:
    """What a route's idempotency and sidecar Location need: a wait, and Redis."""
    problems = []
    if route.get("idempotency") is not None:
        if not route.get("wait"):
            problems.append(
                f"routes[{index}].idempotency: needs wait (only synchronised routes hold calls "
                "retries can attach to)"
            )
        if not has_redis:
            problems.append(f"routes[{index}].idempotency: needs redis_url")
    respond = route.get("respond")
    if isinstance(respond, Mapping) and respond.get("location") == "sidecar" and not has_redis:
        problems.append(f"routes[{index}].respond.location: sidecar needs redis_url")
    return problems
