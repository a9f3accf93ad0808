"""Kafka (and Kafka-protocol brokers) as a completion source, through aiokafka.

    waiters   a consumer with no group per process: every partition of each topic assigned by
              hand, starting `look_back` before now (an event published just before the 202,
              or before the process started, is still seen); after a reconnect it resumes
              from the offsets it had reached
    webhooks  one consumer group (`group`) for the deployment, subscribed to the topics;
              offsets committed by hand, only up to the first message not yet handed to the
              outbox (`Offsets`); a partition the group has never committed starts where the
              process started (less `look_back`), so a first deployment does not dispatch the
              topic's whole history, and nothing published after it started is skipped

aiokafka reconnects to brokers and rejoins the group by itself; this module uses its
`ConsumerRebalanceListener` to place new partitions and forget revoked ones, and probes the
cluster (a metadata round trip) to say whether it is reachable. Topics are the API's: the sidecar
lists the cluster's topics (a request for all topics never creates one) and names the missing
ones; it never asks for a topic by name before it knows it exists, since a broker with
`auto.create.topics.enable` would create it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord

from ..completions.completion import Message
from ..config import kafka_servers
from .base import (
    Received,
    Source,
    SourceFault,
    SourceMissing,
    SourceStale,
    finish,
    tls_context,
)

METADATA_MAX_AGE_MS = 30_000
FETCH_MAX_WAIT_MS = 50  # new partitions of a topic are noticed within this


def consumer_options(source: Source) -> dict[str, Any]:
    """The connection options of a source's consumers: servers, TLS, SASL, timeouts."""
    config = source.config
    options: dict[str, Any] = {
        "bootstrap_servers": kafka_servers(config.url),
        "client_id": f"sidecar-{source.role}",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",  # only when a position is gone (retention, a new log)
        "retry_backoff_ms": 100,
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
        "check_crcs": False,  # TCP and the broker already check them; it costs CPU per record
        # The longest a fetch waits for data: a broker answers as soon as a record arrives, but
        # one that waits the whole time (Tansu) would add it to every completion's latency.
        "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
    }
    tls = tls_context(config)
    if tls is not None:
        options["ssl_context"] = tls
    if config.username is not None:
        options["security_protocol"] = "SASL_SSL" if tls is not None else "SASL_PLAINTEXT"
        options["sasl_mechanism"] = config.sasl_mechanism
        options["sasl_plain_username"] = config.username
        password = config.password.get_secret_value() if config.password else ""
        options["sasl_plain_password"] = password
    elif tls is not None:
        options["security_protocol"] = "SSL"
    return options


def as_message(record: ConsumerRecord[Any, Any]) -> Message:
    """A Kafka record as the decoder reads it: headers, value, `@key`, time stamp."""
    headers = {name: value or b"" for name, value in record.headers or ()}
    properties = {"@key": record.key} if record.key is not None else {}
    return Message(
        f"{record.partition}:{record.offset}",
        record.value or b"",
        headers,
        properties,
        record.timestamp / 1000 if record.timestamp and record.timestamp > 0 else None,
    )


class Offsets:
    """What may be committed per partition: up to the first offset read and not yet
    acknowledged (Kafka commits a position, not single messages)."""

    def __init__(self) -> None:
        self._open: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}

    def read(self, tp: TopicPartition, offset: int) -> None:
        """An offset handed to the dispatcher."""
        self._open.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        """An offset handed to the outbox (or with nothing to hand)."""
        self._open.get(tp, set()).discard(offset)

    def commits(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The position to commit per partition: its first open offset, else past the last."""
        out = {}
        for tp in partitions:
            if tp in self._next:
                still = self._open.get(tp)
                out[tp] = min(still) if still else self._next[tp]
        return out

    def clear(self) -> None:
        """Forget everything (the consumer is gone)."""
        self._open.clear()
        self._next.clear()

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions revoked: their open offsets are another consumer's now."""
        for tp in partitions:
            self._open.pop(tp, None)
            self._next.pop(tp, None)


class Placement(ConsumerRebalanceListener):  # type: ignore[misc]
    """The group's rebalance listener: partitions the group never committed start where the
    process started (less look-back); revoked partitions are forgotten."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.source.offsets.forget(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        consumer = self.source.consumer
        if consumer is None:
            return
        since_ms = int((self.source.started_at - self.source.config.look_back) * 1000)
        fresh = [tp for tp in assigned if await consumer.committed(tp) is None]
        if fresh:
            await self.source.seek_to_time(fresh, since_ms)
        self.source.joined.set()


class KafkaSource(Source):
    """One Kafka cluster, read by one consumer (see the module docstring)."""

    kind = "kafka"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumer: AIOKafkaConsumer | None = None
        self.offsets = Offsets()
        self._positions: dict[TopicPartition, int] = {}  # the waiters' read: where it got to
        self._assigned: set[TopicPartition] = set()
        self._stream_ids = {s.key: self.stream_id(s.key) for s in self.streams}
        self.joined = asyncio.Event()  # the group gave this consumer its first assignment

    @property
    def connect_timeout_s(self) -> float:
        """Joining the group takes up to a rebalance (the session timeout) on top."""
        extra = self.config.session_timeout if self.role == "webhooks" else 0.0
        return self.config.connect_timeout + extra

    @property
    def topics(self) -> list[str]:
        """The topics routes wait on."""
        return [s.key for s in self.streams]

    async def connect(self) -> None:
        options = consumer_options(self)
        if self.role == "webhooks":
            options.update(
                group_id=self.group,
                session_timeout_ms=int(self.config.session_timeout * 1000),
                heartbeat_interval_ms=int(self.config.heartbeat_interval * 1000),
                rebalance_timeout_ms=int(self.config.session_timeout * 1000),
            )
        self.consumer = AIOKafkaConsumer(**options)
        try:
            await self.consumer.start()
            await self._check_topics()
            if self.role == "webhooks":
                # Connected means joined: the group's read is placed, and a consumer is never
                # stopped while aiokafka is still finding its coordinator.
                self.joined.clear()
                self.consumer.subscribe(self.topics, listener=Placement(self))
                await self.joined.wait()
            else:
                await self._assign()
        except KafkaError as exc:
            raise SourceFault(f"Kafka: {exc}") from None

    async def _check_topics(self) -> set[str]:
        assert self.consumer is not None
        known: set[str] = await self.consumer.topics()
        missing = [t for t in self.topics if t not in known]
        if missing:
            raise SourceMissing(
                f"Kafka topic(s) missing: {', '.join(missing)} (the API's to create)"
            )
        return known

    def _partitions(self) -> set[TopicPartition]:
        assert self.consumer is not None
        return {
            TopicPartition(topic, p)
            for topic in self.topics
            for p in self.consumer.partitions_for_topic(topic) or ()
        }

    async def _assign(self) -> None:
        """The waiters' read: every partition, from where it got to, or from the look-back."""
        assert self.consumer is not None
        partitions = self._partitions()
        self.consumer.assign(list(partitions))
        self._assigned = partitions
        new = [tp for tp in partitions if tp not in self._positions]
        for tp in partitions:
            if tp in self._positions:
                self.consumer.seek(tp, self._positions[tp])
        if new:
            await self.seek_to_time(new, int((time.time() - self.config.look_back) * 1000))

    async def seek_to_time(self, partitions: Sequence[TopicPartition], since_ms: int) -> None:
        """Place partitions at their first message since `since_ms` (else at their end)."""
        assert self.consumer is not None
        found = await self.consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
        ends = [tp for tp in partitions if found.get(tp) is None]
        for tp, at in found.items():
            if at is not None:
                self.consumer.seek(tp, at.offset)
        if ends:
            await self.consumer.seek_to_end(*ends)

    async def read(self, timeout_s: float) -> list[Received]:
        assert self.consumer is not None
        try:
            batches = await self.consumer.getmany(
                timeout_ms=int(timeout_s * 1000), max_records=self.config.batch
            )
        except KafkaError as exc:
            raise SourceFault(f"Kafka: {exc}") from None
        out: list[Received] = []
        for tp, records in batches.items():
            stream = self._stream_ids.get(tp.topic, self.stream_id(tp.topic))
            for record in records:
                out.append(Received(stream, as_message(record), (tp, record.offset)))
                if self.role == "webhooks":
                    self.offsets.read(tp, record.offset)
            if records and self.role == "waiters":
                self._positions[tp] = records[-1].offset + 1
        return out

    async def ack(self, received: Sequence[Received]) -> None:
        if self.role != "webhooks" or self.consumer is None or not received:
            return
        touched = set()
        for item in received:
            tp, offset = item.token
            self.offsets.done(tp, offset)
            touched.add(tp)
        commits = self.offsets.commits(touched & self.consumer.assignment())
        if not commits:
            return
        try:
            await self.consumer.commit(commits)
        except CommitFailedError:
            # The group rebalanced: these partitions are another consumer's now, which reads
            # them again from the last commit (the outbox makes a second enqueue a no-op).
            self.offsets.forget(commits)
        except KafkaError as exc:
            raise SourceFault(f"Kafka commit: {exc}") from None

    async def probe(self) -> None:
        if self.consumer is None:
            raise SourceFault("not connected")
        try:
            await self._check_topics()
        except KafkaError as exc:
            raise SourceFault(f"Kafka: {exc}") from None
        if self.role == "waiters" and self._partitions() - self._assigned:
            raise SourceStale("partitions were added to a topic: assigning them")

    async def close(self) -> None:
        consumer, self.consumer = self.consumer, None
        self.offsets.clear()  # the group reads again from its last commit
        if consumer is not None:
            await finish(consumer.stop(), self.config.connect_timeout)
