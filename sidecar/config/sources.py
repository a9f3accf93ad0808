"""`sources:`: the brokers a route may wait on besides the Redis at `redis_url`.

    sources:
      orders-bus: {kind: kafka, url: 'kafka://k1:9092,k2:9092'}

A route names one with `wait.stream.source`; without it the route waits on a Redis stream, as
before. Each kind needs its client library (an optional extra of the package); a config naming a
kind whose library is missing is refused with the `pip install` command that adds it.

The rules that tie routes to sources (a source that exists, `binding` on AMQP only, message
properties such as `@key` on the kind that has them) are checked on the raw file by
`check_sources`, so they add to the field errors instead of hiding behind them.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .blocks import RedisTls
from .types import Duration, Model, SecretFile, blank_is_none, secret_from_file

Kind = Literal["kafka", "amqp", "nats"]
KINDS: tuple[Kind, ...] = ("kafka", "amqp", "nats")
SOURCE_NAME = r"^[A-Za-z0-9_.-]{1,64}$"

# The client library of each kind (the module to find) and the extra that installs it.
LIBRARIES: dict[str, tuple[str, str]] = {
    "kafka": ("aiokafka", "sidecar[kafka]"),
    "amqp": ("aio_pika", "sidecar[amqp]"),
    "nats": ("nats", "sidecar[nats]"),
}

# Message properties a field may name with a leading `@` (not a header, not the body), and the
# kind that has each.
PROPERTIES: dict[str, Kind] = {
    "@key": "kafka",
    "@routing_key": "amqp",
    "@correlation_id": "amqp",
    "@message_id": "amqp",
    "@type": "amqp",
    "@subject": "nats",
}

_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def kafka_servers(url: str) -> list[str]:
    """`kafka://h1:9092,h2:9092` → ['h1:9092', 'h2:9092']; ValueError saying what is wrong."""
    if not url.startswith("kafka://"):
        raise ValueError(f"invalid Kafka URL {url!r} (use kafka://host:port[,host:port...])")
    servers = [part.strip() for part in url.removeprefix("kafka://").rstrip("/").split(",")]
    for server in servers:
        if not _HOST_PORT.match(server):
            raise ValueError(
                f"invalid Kafka URL {url!r}: {server!r} is not host:port "
                "(use kafka://host:port[,host:port...])"
            )
    return servers


def nats_servers(url: str) -> list[str]:
    """`nats://h1:4222,h2:4222` (or full URLs after the comma) → one URL per server."""
    scheme = urlsplit(url).scheme
    if scheme not in ("nats", "tls"):
        raise ValueError(f"invalid NATS URL {url!r} (use nats://host:port[,host:port...])")
    out = []
    for part in url.split(","):
        part = part.strip()
        full = part if "://" in part else f"{scheme}://{part}"
        try:
            parts = urlsplit(full)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            parts = None
        if parts is None or not parts.hostname or parts.scheme not in ("nats", "tls"):
            raise ValueError(f"invalid NATS URL {url!r}: {part!r} is not a server address")
        out.append(full)
    return out


def _check_amqp(url: str) -> None:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018
    except ValueError:
        parts = None  # type: ignore[assignment]
    if parts is None or parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ValueError(f"invalid AMQP URL {url!r} (use amqp://user:pass@host:port/vhost)")


def check_url(kind: str, url: str) -> None:
    """Raise ValueError when `url` is not a URL of `kind`."""
    if kind == "kafka":
        kafka_servers(url)
    elif kind == "nats":
        nats_servers(url)
    elif kind == "amqp":
        _check_amqp(url)


def missing_library(kind: str) -> str | None:
    """The problem of a kind whose client library is not installed (None when it is)."""
    module, extra = LIBRARIES[kind]
    if importlib.util.find_spec(module) is None:
        return f"kind {kind} needs the {module} library: pip install '{extra}'"
    return None


class SourceTls(RedisTls):
    """TLS to a broker: whom to trust, and the client certificate (mutual TLS)."""


# Keys that mean something for one kind only: set on another kind, they are an error.
KIND_ONLY: dict[str, Kind] = {
    "sasl_mechanism": "kafka",
    "session_timeout": "kafka",
    "heartbeat_interval": "kafka",
    "creds_file": "nats",
    "ack_wait": "nats",
}


class Source(Model):
    """One broker the API publishes completions on."""

    kind: Kind = Field(..., description="kafka | amqp | nats. Required.")
    url: str = Field(
        ...,
        min_length=1,
        description="kafka://host:port[,host:port...] · amqp://user:pass@host:port/vhost "
        "(amqps:// for TLS) · nats://host:port[,host:port...] (tls:// for TLS). Required.",
    )
    username: str | None = Field(
        None,
        description="User (Kafka: SASL; AMQP and NATS: instead of the one in the URL). "
        "Default: none.",
    )
    password: Annotated[SecretStr | None, BeforeValidator(blank_is_none)] = Field(
        None, description="The user's password. Default: none."
    )
    password_file: SecretFile = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="Kafka only: the SASL mechanism used with username. Default PLAIN."
    )
    creds_file: str | None = Field(
        None, description="NATS only: a .creds file (JWT and NKey seed). Default: none."
    )
    tls: SourceTls | None = Field(
        None,
        description="TLS (Kafka: turns TLS on; amqps:// and tls:// URLs use it). Default: none "
        "(Kafka and plain URLs: no TLS; TLS URLs: the system's CAs).",
    )
    group: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,200}$",
        description="Name of the sidecar's shared, acknowledged read (the webhooks'): the Kafka "
        "consumer group, the durable AMQP queue, the durable NATS consumer. Default: "
        "<key_prefix>-webhooks (characters other than letters, digits, _ and - become -).",
    )
    look_back: Duration = Field(
        10.0,
        ge=0,
        description="Kafka and NATS: the waiters' read starts this far back in time, so an "
        "event published just before a process started is still seen. Default 10s.",
    )
    batch: int = Field(
        500, ge=1, le=100_000, description="Messages read at once (prefetch). Default 500."
    )
    connect_timeout: Duration = Field(
        5.0, gt=0, description="Connecting (and each health probe). Default 5s."
    )
    session_timeout: Duration = Field(
        10.0,
        gt=0,
        description="Kafka only: the consumer group's session timeout (a replica silent this "
        "long loses its partitions to the others). Default 10s.",
    )
    heartbeat_interval: Duration = Field(
        3.0, gt=0, description="Kafka only: heartbeats to the group coordinator. Default 3s."
    )
    ack_wait: Duration = Field(
        30.0,
        gt=0,
        description="NATS only: a message of the shared read not acknowledged within this is "
        "delivered again (to any replica). Default 30s.",
    )

    @model_validator(mode="before")
    @classmethod
    def _files(cls, data: Any) -> Any:
        return secret_from_file(data, "password")

    @field_validator("url")
    @classmethod
    def _url_of_kind(cls, value: str, info: ValidationInfo) -> str:
        check_url(info.data.get("kind", ""), value)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Source:
        if self.kind == "kafka" and self.heartbeat_interval >= self.session_timeout:
            raise ValueError("heartbeat_interval must be shorter than session_timeout")
        return self

    def group_name(self, key_prefix: str) -> str:
        """The shared read's name: `group`, else `<key_prefix>-webhooks` made safe for every
        broker (NATS forbids dots in consumer names)."""
        return self.group or re.sub(r"[^A-Za-z0-9_-]", "-", f"{key_prefix}-webhooks")


Sources = dict[Annotated[str, Field(pattern=SOURCE_NAME)], Source]


def _field_problems(index: int, spec: Mapping[str, Any], kind: str | None) -> list[str]:
    """Where `id_field`, `type_field`, `data_field` point at something `kind` has not."""
    problems = []
    where = f"routes[{index}].wait.stream"
    for key in ("id_field", "type_field", "data_field"):
        value = spec.get(key)
        if not isinstance(value, str):
            continue
        if kind is None:  # a Redis stream: entries are flat fields
            if value.startswith(("/", "@")) or (value == "" and key == "data_field"):
                problems.append(
                    f"{where}.{key}: {value!r} needs a broker source (a Redis stream entry has "
                    "named fields only)"
                )
            continue
        if value.startswith("@"):
            owner = PROPERTIES.get(value)
            if owner is None:
                known = ", ".join(f"{p} ({k})" for p, k in PROPERTIES.items())
                problems.append(f"{where}.{key}: unknown message property {value!r} ({known})")
            elif owner != kind:
                problems.append(f"{where}.{key}: {value} is a property of {owner} messages only")
        elif value == "" and key != "data_field":
            problems.append(f"{where}.{key}: must name a header, a member or a JSON pointer")
    return problems


def _source_problems(name: str, source: Mapping[str, Any]) -> list[str]:
    """Keys of another kind, and a kind whose library is missing."""
    kind = source.get("kind")
    if kind not in KINDS:
        return []
    where = f"sources.{name}"
    problems = [
        f"{where}.{key}: for {owner} sources only (this one is {kind})"
        for key, owner in KIND_ONLY.items()
        if key in source and owner != kind
    ]
    if kind == "amqp" and "look_back" in source:
        problems.append(
            f"{where}.look_back: for kafka and nats sources only (AMQP cannot look back)"
        )
    missing = missing_library(str(kind))
    if missing:
        problems.append(f"{where}.kind: {missing}")
    return problems


def check_sources(raw: Mapping[str, Any]) -> list[str]:
    """The rules tying routes to `sources:`, on raw (possibly invalid) data."""
    problems: list[str] = []
    sources = raw.get("sources")
    sources = sources if isinstance(sources, Mapping) else {}
    kinds = {}
    for name, source in sources.items():
        if isinstance(source, Mapping):
            kinds[name] = source.get("kind")
            problems += _source_problems(str(name), source)
    routes = raw.get("routes")
    if not isinstance(routes, Sequence) or isinstance(routes, str):
        return problems
    for index, route in enumerate(routes):
        wait = route.get("wait") if isinstance(route, Mapping) else None
        spec = wait.get("stream") if isinstance(wait, Mapping) else None
        if not isinstance(spec, Mapping):
            continue
        name = spec.get("source")
        kind = kinds.get(name) if isinstance(name, str) else None
        if name is not None and name not in kinds:
            known = ", ".join(sorted(map(str, kinds))) or "none is declared"
            problems.append(
                f"routes[{index}].wait.stream.source: no source {name!r} in sources ({known})"
            )
            continue
        if spec.get("binding") is not None and kind != "amqp":
            what = f"source {name!r} is {kind}" if name is not None else "this is a Redis stream"
            problems.append(
                f"routes[{index}].wait.stream.binding: binding is for AMQP sources only ({what})"
            )
        if name is None:
            problems += _field_problems(index, spec, None)
        elif kind in KINDS:
            problems += _field_problems(index, spec, str(kind))
    return problems
