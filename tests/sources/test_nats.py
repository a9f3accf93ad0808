"""A route on a NATS JetStream subject, black-box through the real sidecar and a real
`nats-server -js`: synchronised answers, failures, the budget, the early-event race, malformed
messages, the server restarted mid-wait (JetStream on disk: streams and consumers survive), and
webhooks across replicas (one per completion, none lost to a SIGKILL). NATS only: a wildcard
subject, with the subject itself as the type (`@subject`)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from devtools.brokers import NatsPublisher, NatsServer

from ..conftest import SidecarFactory, Upstream
from ..helpers import until
from ..processes import StartProcess
from ..replicas.support import Receiver
from . import replicas, support
from .conftest import NATS_OPTIONS, unique
from .support import Broker, Env, EnvFactory


@pytest.fixture
def make_env(
    redis: aioredis.Redis,
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    redis_url: str,
    key_prefix: str,
) -> EnvFactory:
    """Starts the sidecar on a broker (the test's Redis keys are deleted afterwards)."""

    async def make(broker: Broker, stream: dict[str, Any] | None = None, **route: Any) -> Env:
        return await support.start_env(
            broker,
            start_upstream,
            start_sidecar,
            redis_url,
            key_prefix,
            routes=[support.route(broker, stream, **route)],
        )

    return make


async def test_success_answers_200_with_the_event_data(nats: Broker, make_env: EnvFactory) -> None:
    await support.success_answers_200_with_the_event_data(await make_env(nats))


async def test_failure_maps_to_a_problem(nats: Broker, make_env: EnvFactory) -> None:
    await support.failure_maps_to_a_problem(await make_env(nats))


async def test_budget_falls_back_to_the_202(nats: Broker, make_env: EnvFactory) -> None:
    await support.budget_falls_back_to_the_202(await make_env(nats, budget="200ms"))


async def test_event_before_the_202_with_the_id_from_the_location(
    nats: Broker, make_env: EnvFactory
) -> None:
    env = await make_env(nats, correlation={"source": "location"})
    await support.event_before_the_202_with_the_id_from_the_location(env)


async def test_malformed_messages_are_skipped_and_counted(
    nats: Broker, make_env: EnvFactory
) -> None:
    await support.malformed_messages_are_skipped_and_counted(await make_env(nats))


async def test_a_wildcard_subject_with_the_subject_as_the_type(
    nats_server: NatsServer, make_env: EnvFactory
) -> None:
    base = unique("orders")
    publisher = NatsPublisher(nats_server.url)
    broker = Broker("nats", nats_server.url, publisher, f"{base}.*", dict(NATS_OPTIONS))
    await publisher.create(broker.key)
    placed, rejected = f"{base}.placed", f"{base}.rejected"
    spec = support.stream_wait(broker, type_field="@subject", success=[placed], failure=[rejected])
    env = await make_env(broker, spec)
    try:
        task = asyncio.create_task(env.order("o-sub"))
        await until(lambda: env.waiting == 1)
        await publisher.publish(
            placed, b'{"result": {"via": "subject"}}', {"x-correlation-id": "o-sub"}
        )
        resp = await task
        assert resp.status == 200
        assert await resp.json() == {"via": "subject"}
    finally:
        await publisher.close()


async def test_broker_restarted_mid_wait(own_nats: NatsServer, make_env: EnvFactory) -> None:
    """JetStream stores on disk: the stream and the sidecar's durable consumer survive."""
    publisher = NatsPublisher(own_nats.url)
    broker = Broker("nats", own_nats.url, publisher, "orders.restart", dict(NATS_OPTIONS))
    await publisher.create(broker.key)
    env = await make_env(broker, budget="20s")

    async def stop() -> None:
        await asyncio.to_thread(own_nats.stop)

    async def start() -> None:
        await asyncio.to_thread(own_nats.start)

    try:
        await support.broker_restarted_mid_wait(env, stop, start)
    finally:
        await publisher.close()


# The hand-off to the outbox is the same for every kind (the headers' reading is each kind's,
# and the replica tests below cover it): the trace of an untracked completion is tested once.
async def test_a_completion_reaches_a_webhook_with_its_trace(
    nats: Broker,
    redis: aioredis.Redis,
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    redis_url: str,
    key_prefix: str,
    receiver: Receiver,
) -> None:
    env = await support.start_env(
        nats,
        start_upstream,
        start_sidecar,
        redis_url,
        key_prefix,
        webhooks={
            "allow_private_targets": True,
            "subscriptions": [support.audit_subscription(receiver)],
        },
    )
    await support.completion_reaches_a_webhook_with_its_trace(env, receiver)


async def test_a_subject_no_stream_captures_is_named_and_read_once_captured(
    nats: Broker,
    redis: aioredis.Redis,
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    redis_url: str,
    key_prefix: str,
) -> None:
    broker = replace(nats, key=unique("orders.missing"))
    env = await support.start_env(
        broker, start_upstream, start_sidecar, redis_url, key_prefix, ready=False
    )
    await support.what_is_missing_is_named_until_the_api_creates_it(
        env, "no JetStream stream captures"
    )


async def test_two_replicas_one_webhook_per_completion(
    nats: Broker,
    processes: StartProcess,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    aiohttp_server: Any,
    redis_url: str,
    key_prefix: str,
) -> None:
    api: TestServer = await aiohttp_server(replicas.api_app(nats))
    await replicas.two_replicas_one_webhook_per_completion(
        nats, processes, http, receiver, support.url_of(api), redis_url, key_prefix
    )


async def test_a_replica_killed_loses_no_webhook(
    nats: Broker,
    processes: StartProcess,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    aiohttp_server: Any,
    redis_url: str,
    key_prefix: str,
) -> None:
    api: TestServer = await aiohttp_server(replicas.api_app(nats))
    await replicas.replica_killed_loses_no_webhook(
        nats, processes, http, receiver, support.url_of(api), redis_url, key_prefix
    )
