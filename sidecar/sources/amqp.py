"""RabbitMQ (AMQP 0-9-1) as a completion source, through aio-pika.

    waiters   an exclusive, auto-delete, server-named queue per process, bound to each
              exchange with each route's `binding`: every process gets every completion; the
              queue goes with the connection. Nothing is acknowledged (no-ack delivery).
    webhooks  one durable queue (`group`) shared by the replicas, bound the same way;
              deliveries acknowledged one by one after the outbox write, `batch` of them
              unacknowledged at most (the prefetch); a replica that dies hands its
              unacknowledged deliveries back to the broker, which gives them to another

The exchanges are the API's: they are checked passively (a declare with `passive`, which only
says whether one exists), each on a channel of its own since a missing one closes the channel.
aio-pika's robust connection reconnects by itself and declares the queues, bindings and
consumers again; this module reads what its consumer puts in an in-memory inbox, and says the
connection is lost while the robust connection is reconnecting. AMQP has no look-back: a
completion published while a process was not connected is not seen by its waiters (the durable
queue keeps it for the webhooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, ChannelNotFoundEntity
from yarl import URL

from ..completions.completion import Message
from .base import Received, Source, SourceFault, SourceMissing, finish, tls_context

RECONNECT_INTERVAL_S = 1.0


def header_bytes(value: Any) -> bytes:
    """An AMQP header value (a field table holds many types) as the decoder reads headers."""
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else str(value)).encode()


def position(delivery: AbstractIncomingMessage) -> str:
    """A position that stays the same when the message is delivered again (a delivery tag
    does not): its message id when the publisher set one, else a digest of what it carries.
    Webhook messages of a completion whose call is not tracked derive their id from it."""
    if delivery.message_id:
        return f"id:{delivery.message_id}"
    digest = hashlib.blake2b(digest_size=12)
    for part in (delivery.exchange or "", delivery.routing_key or ""):
        digest.update(part.encode() + b"\0")
    digest.update(delivery.body)
    return f"sum:{digest.hexdigest()}"


def as_message(delivery: AbstractIncomingMessage) -> Message:
    """An AMQP delivery as the decoder reads it: headers, body, the properties named with @."""
    headers = {k: header_bytes(v) for k, v in (delivery.headers or {}).items()}
    properties: dict[str, bytes] = {}
    for name, value in (
        ("@routing_key", delivery.routing_key),
        ("@correlation_id", delivery.correlation_id),
        ("@message_id", delivery.message_id),
        ("@type", delivery.type),
    ):
        if value:
            properties[name] = value.encode()
    stamp = delivery.timestamp
    return Message(
        position(delivery),
        delivery.body,
        headers,
        properties,
        stamp.timestamp() if stamp is not None else None,
    )


def connection_url(url: str, username: str | None, password: str | None) -> URL:
    """The broker URL with the configured user (which wins over the URL's)."""
    parsed = URL(url)
    if username is not None:
        parsed = parsed.with_user(username).with_password(password)
    return parsed.update_query(reconnect_interval=RECONNECT_INTERVAL_S)


class AmqpSource(Source):
    """One RabbitMQ broker (vhost), read through one robust connection (see the docstring)."""

    kind = "amqp"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection: AbstractRobustConnection | None = None
        self.queue: AbstractQueue | None = None
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._open: set[int] = set()  # the webhooks' read: delivery tags read, not acked
        self._stream_ids: Mapping[str, str] = {s.key: self.stream_id(s.key) for s in self.streams}

    async def connect(self) -> None:
        config = self.config
        password = config.password.get_secret_value() if config.password else None
        url = connection_url(config.url, config.username, password)
        try:
            self.connection = await aio_pika.connect_robust(
                url,
                ssl_context=tls_context(config, tls_url=url.scheme == "amqps"),
                timeout=config.connect_timeout,
                client_properties={"connection_name": f"sidecar-{self.role}"},
            )
            await self._check_exchanges(self.connection)
            channel = await self.connection.channel()
            await channel.set_qos(prefetch_count=config.batch)
            if self.role == "waiters":
                queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
            else:
                queue = await channel.declare_queue(self.group, durable=True)
            for stream in self.streams:
                for binding in stream.bindings:
                    await queue.bind(stream.key, binding)
            await queue.consume(self._deliver, no_ack=self.role == "waiters")
            self.queue = queue
        except SourceMissing:
            raise
        except (AMQPError, OSError, ConnectionError) as exc:
            raise SourceFault(f"AMQP: {exc.__class__.__name__}: {exc}") from None

    async def _deliver(self, delivery: AbstractIncomingMessage) -> None:
        """The consumer's callback (a coroutine function: aio-pika formats a warning, with the
        callback's repr, on every message handed to a plain function)."""
        self._inbox.put_nowait(delivery)

    async def _check_exchanges(self, connection: AbstractRobustConnection) -> None:
        missing = []
        for stream in self.streams:
            channel = await connection.channel()
            try:
                await channel.get_exchange(stream.key, ensure=True)
            except ChannelNotFoundEntity:
                missing.append(stream.key)
            finally:
                with contextlib.suppress(AMQPError, RuntimeError):
                    await channel.close()
        if missing:
            raise SourceMissing(
                f"AMQP exchange(s) missing: {', '.join(missing)} (the API's to declare)"
            )

    async def read(self, timeout_s: float) -> list[Received]:
        try:
            first = await asyncio.wait_for(self._inbox.get(), timeout_s)
        except TimeoutError:
            return []
        deliveries = [first]
        while len(deliveries) < self.config.batch and not self._inbox.empty():
            deliveries.append(self._inbox.get_nowait())
        if self.role == "webhooks":
            self._open.update(d.delivery_tag for d in deliveries if d.delivery_tag is not None)
        return [
            Received(
                self._stream_ids.get(d.exchange or "", self.stream_id(d.exchange or "")),
                as_message(d),
                d,
            )
            for d in deliveries
        ]

    async def ack(self, received: Sequence[Received]) -> None:
        if self.role != "webhooks" or not received:
            return
        deliveries: list[AbstractIncomingMessage] = [item.token for item in received]
        for tag in (d.delivery_tag for d in deliveries):
            self._open.discard(tag)
        deliveries.sort(key=lambda d: d.delivery_tag or 0)
        last = deliveries[-1]
        # One `multiple` ack for the batch when nothing read before its last delivery is still
        # held (a completion waiting for its call's record), else one ack each.
        together = not self._open or min(self._open) > (last.delivery_tag or 0)
        # A delivery of a channel lost since cannot be acknowledged: the broker has requeued
        # it, and it comes again (the outbox makes the second enqueue a no-op).
        with contextlib.suppress(AMQPError, RuntimeError):
            if together:
                await last.ack(multiple=True)
                return
            for delivery in deliveries:
                await delivery.ack()

    async def probe(self) -> None:
        connection = self.connection
        if connection is None or connection.is_closed or not connection.connected.is_set():
            raise SourceFault("AMQP connection lost; aio-pika is reconnecting")

    async def close(self) -> None:
        connection, self.connection, self.queue = self.connection, None, None
        self._inbox = asyncio.Queue()
        self._open = set()
        if connection is not None:
            await finish(connection.close(), self.config.connect_timeout)
