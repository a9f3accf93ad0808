"""The one small interface every broker source offers, and what its readers hand over.

    Source        one broker, read one way (`role`) by one loop of one process:
                  connect · read · ack · close, and `probe` (is the broker there?)
    Received      one message read, with the stream it came from and what `ack` needs
    SourceFault   the broker cannot be reached or refused us: the loop backs off and retries
    SourceMissing what the API owns (a topic, an exchange, a JetStream stream) is not there:
                  named, and retried like a fault (the API may create it later)
    SourceStale   the read no longer matches the broker (partitions added): set up again

Two roles, as for Redis Streams:

    waiters   every process reads every completion (Kafka: partitions assigned by hand, no
              group; AMQP: an exclusive auto-delete queue; NATS: an ordered ephemeral
              consumer), for the held calls of that process; nothing is acknowledged
    webhooks  the replicas share one acknowledged read (Kafka: a consumer group; AMQP: one
              durable queue; NATS: one durable consumer); `ack` after the outbox write

Each role has its own connection (its own consumers for Kafka), so a webhook read that waits on
Redis never holds back the held calls' read. The waiters and the webhook dispatcher see only
this module and `completions.Message`: no broker library above `sources/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..completions.completion import Message
from ..config import Settings, StreamWait
from ..config import Source as SourceConfig

Role = Literal["waiters", "webhooks"]

# The broker libraries log every failed reconnect attempt at ERROR, with tracebacks; the
# sidecar logs one line per outage itself (`sources.loop`), so theirs are kept for debugging.
LIBRARY_LOGGERS = ("aiokafka", "aio_pika", "aiormq", "nats")


class SourceFault(Exception):
    """The broker cannot be reached, or refused what the sidecar asked (a fault, retried)."""


class SourceMissing(SourceFault):
    """A topic, exchange or JetStream stream the routes name does not exist (the API's to
    create; the sidecar never creates them)."""


class SourceStale(SourceFault):
    """What the read was set up for no longer matches the broker (partitions added): the loop
    connects again."""


@dataclass(frozen=True, slots=True)
class Received:
    """One message a source read: the stream id it belongs to (`<source>/<key>`), the message,
    and what `ack` needs to acknowledge it (the library's own object or position)."""

    stream: str
    message: Message
    token: Any = None


@dataclass(frozen=True, slots=True)
class Stream:
    """One key of a source some route waits on, and (AMQP) the bindings the routes ask for."""

    key: str  # topic · exchange · subject
    bindings: tuple[str, ...] = ()

    def stream_id(self, source: str) -> str:
        """The id the hub and the metrics know it by."""
        return f"{source}/{self.key}"


def streams_of(settings: Settings, source: str) -> list[Stream]:
    """The streams of `source` that routes wait on, in route order (bindings merged)."""
    bindings: dict[str, list[str]] = {}
    for route in settings.routes:
        spec: StreamWait | None = route.wait.stream if route.wait else None
        if spec is None or spec.source != source:
            continue
        found = bindings.setdefault(spec.key, [])
        if spec.amqp_binding not in found:
            found.append(spec.amqp_binding)
    return [Stream(key, tuple(found)) for key, found in bindings.items()]


class Source(ABC):
    """One broker read one way by one loop of one process (see the module docstring).

    The loop (`sources.loop.SourceLoop`) calls `connect()` until it succeeds, then `read()`
    over and over; on a `SourceFault` it calls `close()` and starts again after a backoff.
    Libraries that reconnect by themselves (aio-pika's robust connection, nats-py) keep doing
    so under `read()`, which says so through `probe()`."""

    kind: str = ""

    def __init__(
        self,
        name: str,
        config: SourceConfig,
        streams: Sequence[Stream],
        role: Role,
        *,
        group: str,
        started_at: float,
    ) -> None:
        self.name = name
        self.config = config
        self.streams = list(streams)
        self.role = role
        self.group = group  # the shared read's name (webhooks)
        self.started_at = started_at  # wall clock: the waiters' read looks back from it

    @property
    def connect_timeout_s(self) -> float:
        """How long `connect()` may take before the loop calls it a fault."""
        return self.config.connect_timeout

    def stream_id(self, key: str) -> str:
        """The stream id of one of this source's keys."""
        return f"{self.name}/{key}"

    @abstractmethod
    async def connect(self) -> None:
        """Connect and set up this role's read: check (passively) that the API's topics,
        exchanges or streams exist, create the sidecar's own queue or consumer. Raises
        `SourceMissing` naming what is missing, `SourceFault` for the rest."""

    @abstractmethod
    async def read(self, timeout_s: float) -> list[Received]:
        """The messages that arrived, waiting up to `timeout_s` for the first. Raises
        `SourceFault` when the read cannot go on (the loop reconnects)."""

    @abstractmethod
    async def ack(self, received: Sequence[Received]) -> None:
        """Acknowledge messages of the webhooks' read, handed to the outbox (the waiters'
        read acknowledges nothing). Raises `SourceFault`; unacknowledged messages are read
        again (by this replica or another)."""

    @abstractmethod
    async def probe(self) -> None:
        """Raise `SourceFault` unless the broker answers now (called when reads are idle)."""

    @abstractmethod
    async def close(self) -> None:
        """Let go of the connection (never raises)."""


async def finish(cleanup: Awaitable[None], limit_s: float) -> None:
    """Run a client's cleanup to its end even when the caller is cancelled meanwhile, for up
    to `limit_s` (then it is cancelled): a broker client stopped halfway leaves its sockets
    open (aiokafka's consumer, cancelled while it rejoins its group). A cancellation of the
    caller is raised once the cleanup is over."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(cleanup)
    deadline = loop.time() + limit_s
    interrupted = False
    while not task.done():
        try:
            await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - loop.time()))
        except asyncio.CancelledError:
            interrupted = True
        except TimeoutError:
            task.cancel()
            break
        except Exception:
            break
    if not task.done():
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    elif not task.cancelled():
        task.exception()  # retrieved: a failed cleanup is not an error worth a traceback
    if interrupted:
        raise asyncio.CancelledError


def tls_context(config: SourceConfig, *, tls_url: bool = False) -> ssl.SSLContext | None:
    """The TLS context of a source: its `tls:` block, or the system's CAs for a TLS URL
    (amqps://, tls://) without one; None for plain connections."""
    tls = config.tls
    if tls is None:
        return ssl.create_default_context() if tls_url else None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    context.check_hostname = tls.check_hostname
    return context


def quiet_libraries(level: str) -> None:
    """Keep the broker libraries' reconnect noise out of the logs, unless debugging."""
    for logger_name in LIBRARY_LOGGERS:
        logging.getLogger(logger_name).setLevel(
            logging.DEBUG if level == "debug" else logging.CRITICAL
        )
