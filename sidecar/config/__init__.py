"""The operators' contract: process settings and routes, from a YAML file and `SIDECAR_*`
environment variables.

    types      durations, sizes, addresses, URLs, header names, secrets from files; `Model`
    routes     a route: match, correlation, wait (stream, poll), respond, idempotency, webhook
               events
    operations the sidecar's own status monitor (path, retention, stored results)
    blocks     process-level blocks: clients, proxy, stream reader, tenancy, readiness, log, Redis
    webhooks   webhook delivery, YAML-declared subscriptions, the portal
    sources    the brokers routes may wait on (`sources:`): Kafka, AMQP, NATS JetStream
    settings   `Settings` (the whole file) and the rules spanning several keys
    loading    YAML, `${VAR}`, overrides from an explicit environment, every problem at once
    advice     what a valid config may still get wrong (warned, never fatal)

Every model forbids unknown keys (typos are errors) and is frozen. Durations are floats in
seconds, sizes ints in bytes.
"""

from .blocks import Clients, Log, Proxy, Readiness, RedisSentinel, RedisTls, StreamReader, Tenancy
from .loading import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    config_path,
    format_validation_error,
    json_schema,
    load_settings,
    parse_settings,
)
from .operations import Operations
from .routes import (
    EVENT_TYPE_PATTERN,
    HTTP_METHODS,
    Correlation,
    EventType,
    Idempotency,
    PollWait,
    Respond,
    Route,
    StreamWait,
    Wait,
    WebhookEvents,
    compile_path_template,
    path_template_parts,
)
from .settings import Settings
from .sources import KINDS, LIBRARIES, Source, SourceTls, kafka_servers, nats_servers
from .types import ByteSize, Duration, Model, parse_duration, parse_size
from .webhooks import DeclaredSubscription, Portal, Webhooks

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "EVENT_TYPE_PATTERN",
    "HTTP_METHODS",
    "KINDS",
    "LIBRARIES",
    "ByteSize",
    "Clients",
    "ConfigError",
    "Correlation",
    "DeclaredSubscription",
    "Duration",
    "EventType",
    "Idempotency",
    "Log",
    "Model",
    "Operations",
    "PollWait",
    "Portal",
    "Proxy",
    "Readiness",
    "RedisSentinel",
    "RedisTls",
    "Respond",
    "Route",
    "Settings",
    "Source",
    "SourceTls",
    "StreamReader",
    "StreamWait",
    "Tenancy",
    "Wait",
    "WebhookEvents",
    "Webhooks",
    "compile_path_template",
    "config_path",
    "format_validation_error",
    "json_schema",
    "kafka_servers",
    "load_settings",
    "nats_servers",
    "parse_duration",
    "parse_settings",
    "parse_size",
    "path_template_parts",
]
