"""NATS JetStream as a completion source, through nats-py.

    waiters   an ordered, ephemeral push consumer per subject and process (nats-py recreates
              it itself after a gap, or when its heartbeats stop: a server restart), starting
              at the first message of the last `look_back`; after one of the sidecar's own
              reconnects it resumes after the last stream sequence it saw. Nothing is
              acknowledged.
    webhooks  one durable pull consumer per subject for the deployment, named
              `<group>-<subject>` (dots and wildcards become _), created where the process
              started (less `look_back`) the first time; each message acknowledged after the
              outbox write; one not acknowledged within `ack_wait` is delivered again, to any
              replica

The JetStream streams are the API's: the sidecar asks which stream captures each subject and
names the subjects no stream captures; it creates only its own consumers. nats-py reconnects
by itself (forever, every second); its callbacks tell this module the connection's state, and
its error callback keeps its complaints out of the logs (the loop says one line per outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from ..completions.completion import Message
from ..config import nats_servers
from .base import (
    Received,
    Source,
    SourceFault,
    SourceMissing,
    SourceStale,
    finish,
    tls_context,
)

RECONNECT_WAIT_S = 1
IDLE_HEARTBEAT_S = 1.0
PROBE_INACTIVE_S = 5.0  # the server removes the look-back's short-lived consumer after this
FAULTS = (NatsError, OSError, ConnectionError, TimeoutError)


def as_message(msg: Msg) -> Message:
    """A JetStream message as the decoder reads it: headers, data, `@subject`, time stamp."""
    headers = {k: v.encode() for k, v in (msg.headers or {}).items()}
    meta = msg.metadata
    return Message(
        str(meta.sequence.stream),
        msg.data,
        headers,
        {"@subject": msg.subject.encode()},
        meta.timestamp.timestamp() if meta.timestamp else None,
    )


def durable_name(group: str, subject: str) -> str:
    """The durable consumer of one subject: a consumer name allows no dots or wildcards."""
    return f"{group}-{re.sub(r'[^A-Za-z0-9_-]', '_', subject)}"


def moment(epoch_s: float) -> datetime:
    """A time as JetStream's `opt_start_time` takes it."""
    return datetime.fromtimestamp(epoch_s, UTC)


class NatsSource(Source):
    """One NATS cluster's JetStream, read through one connection (see the docstring)."""

    kind = "nats"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client: Client | None = None
        self.js: JetStreamContext | None = None
        self._inbox: asyncio.Queue[Received] = asyncio.Queue()
        self._pulls: list[tuple[str, JetStreamContext.PullSubscription]] = []
        self._last_seq: dict[str, int] = {}  # the waiters' read: the last sequence per subject
        self._stale = False  # reconnected: the waiters' consumers are made again at once

    async def connect(self) -> None:
        config = self.config
        servers = nats_servers(config.url)
        options: dict[str, Any] = {
            "servers": servers,
            "name": f"sidecar-{self.role}",
            "connect_timeout": max(1, int(config.connect_timeout)),
            "reconnect_time_wait": RECONNECT_WAIT_S,
            "max_reconnect_attempts": -1,
            "error_cb": self._quiet,
            "reconnected_cb": self._reconnected,
            "tls": tls_context(config, tls_url=servers[0].startswith("tls://")),
        }
        if config.username is not None:
            options["user"] = config.username
            options["password"] = config.password.get_secret_value() if config.password else ""
        if config.creds_file is not None:
            options["user_credentials"] = config.creds_file
        try:
            self.client = await nats.connect(**options)
            self.js = self.client.jetstream()
            names = await self._check_streams(self.js)
            for stream in self.streams:
                if self.role == "waiters":
                    await self._follow(self.js, stream.key, names[stream.key])
                else:
                    await self._share(self.js, stream.key, names[stream.key])
        except SourceMissing:
            raise
        except FAULTS as exc:
            raise SourceFault(f"NATS: {exc.__class__.__name__}: {exc}") from None

    async def _quiet(self, exc: Exception) -> None:
        """nats-py's error callback: the loop says what matters, once per outage."""

    async def _reconnected(self) -> None:
        """nats-py reconnected: a restarted server may have lost the waiters' ephemeral
        consumers, which nats-py would make again only after missing two heartbeats."""
        self._stale = True

    async def _check_streams(self, js: JetStreamContext) -> dict[str, str]:
        names, missing = {}, []
        for stream in self.streams:
            try:
                names[stream.key] = await js.find_stream_name_by_subject(stream.key)
            except NotFoundError:
                missing.append(stream.key)
        if missing:
            raise SourceMissing(
                f"no JetStream stream captures subject(s) {', '.join(missing)} "
                "(the API's to create)"
            )
        return names

    def _deliver(self, key: str) -> Callable[[Msg], Awaitable[None]]:
        stream_id = self.stream_id(key)

        async def on_message(msg: Msg) -> None:
            self._last_seq[key] = msg.metadata.sequence.stream
            self._inbox.put_nowait(Received(stream_id, as_message(msg)))

        return on_message

    async def _follow(self, js: JetStreamContext, key: str, stream_name: str) -> None:
        """The waiters' ordered consumer of one subject, from the look-back (first connect)
        or after the last sequence seen (a reconnect of the sidecar's own)."""
        last = self._last_seq.get(key)
        start = last + 1 if last is not None else await self._start_sequence(js, key, stream_name)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        await js.subscribe(
            key,
            cb=self._deliver(key),
            ordered_consumer=True,
            config=config,
            # Missed heartbeats are how nats-py notices a consumer the server lost (a restart)
            # and makes it again, from the next sequence.
            idle_heartbeat=IDLE_HEARTBEAT_S,
        )

    async def _start_sequence(self, js: JetStreamContext, key: str, stream_name: str) -> int:
        """The first sequence of `key` within the look-back, found with a short-lived
        consumer. (The ordered consumer itself starts by sequence: nats-py's recovery of an
        ordered consumer sets a start sequence and keeps a start time, which the server
        refuses.)"""
        last = (await js.stream_info(stream_name)).state.last_seq
        probe = await js.pull_subscribe(
            key,
            stream=stream_name,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=moment(time.time() - self.config.look_back),
                ack_policy=AckPolicy.NONE,
                inactive_threshold=PROBE_INACTIVE_S,
            ),
        )
        try:
            if not (await probe.consumer_info()).num_pending:
                return last + 1
            first = await probe.fetch(1, timeout=self.config.connect_timeout)
            return int(first[0].metadata.sequence.stream)
        finally:
            with contextlib.suppress(*FAULTS):
                await probe.unsubscribe()

    async def _share(self, js: JetStreamContext, key: str, stream_name: str) -> None:
        """The webhooks' durable pull consumer of one subject (created once, then bound)."""
        config = ConsumerConfig(
            ack_wait=self.config.ack_wait,
            max_ack_pending=max(self.config.batch * 4, 1000),
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=moment(self.started_at - self.config.look_back),
        )
        pull = await js.pull_subscribe(
            key, durable=durable_name(self.group, key), stream=stream_name, config=config
        )
        self._pulls.append((self.stream_id(key), pull))

    async def read(self, timeout_s: float) -> list[Received]:
        if self.role == "waiters":
            if self._stale:
                raise SourceStale("NATS reconnected: following the subjects again")
            return await self._drain(timeout_s)
        client = self.client
        if client is None or not client.is_connected:
            await asyncio.sleep(timeout_s)  # nats-py is reconnecting: nothing to fetch
            return []
        fetched = await asyncio.gather(
            *(pull.fetch(self.config.batch, timeout=timeout_s) for _, pull in self._pulls),
            return_exceptions=True,
        )
        out: list[Received] = []
        for (stream_id, _), got in zip(self._pulls, fetched, strict=True):
            if isinstance(got, NatsTimeout | TimeoutError):
                continue
            if isinstance(got, BaseException):
                if isinstance(got, FAULTS):
                    raise SourceFault(f"NATS fetch: {got.__class__.__name__}: {got}")
                raise got
            out += [Received(stream_id, as_message(msg), msg) for msg in got]
        return out

    async def _drain(self, timeout_s: float) -> list[Received]:
        try:
            first = await asyncio.wait_for(self._inbox.get(), timeout_s)
        except TimeoutError:
            return []
        out = [first]
        while len(out) < self.config.batch and not self._inbox.empty():
            out.append(self._inbox.get_nowait())
        return out

    async def ack(self, received: Sequence[Received]) -> None:
        if self.role != "webhooks" or self.client is None or not received:
            return
        # An ack that does not arrive is made good by a redelivery after ack_wait (the outbox
        # makes the second enqueue a no-op).
        with contextlib.suppress(*FAULTS):
            for item in received:
                msg: Msg = item.token
                await msg.ack()
            await self.client.flush(timeout=max(1, int(self.config.connect_timeout)))

    async def probe(self) -> None:
        client, js = self.client, self.js
        if client is None or js is None or not client.is_connected:
            raise SourceFault("NATS connection lost; nats-py is reconnecting")
        try:
            await self._check_streams(js)
        except SourceMissing:
            raise
        except FAULTS as exc:
            raise SourceFault(f"NATS: {exc.__class__.__name__}: {exc}") from None

    async def close(self) -> None:
        client, self.client, self.js = self.client, None, None
        self._stale = False
        self._pulls = []
        self._inbox = asyncio.Queue()
        if client is not None:
            await finish(client.close(), self.config.connect_timeout)
