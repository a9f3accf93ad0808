"""A route on a Kafka topic, black-box through the real sidecar and a real Kafka-protocol broker
(Tansu): synchronised answers, failures, the budget, the early-event race, malformed messages,
the broker restarted mid-wait, and webhooks across replicas (one per completion, none lost to a
SIGKILL). Kafka only: the record key as the id (`@key`)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from devtools.brokers import KafkaPublisher, TansuServer

from ..conftest import SidecarFactory, Upstream
from ..helpers import until
from ..processes import StartProcess
from ..replicas.support import Receiver
from . import replicas, support
from .conftest import KAFKA_OPTIONS, unique
from .support import OK, Broker, Env, EnvFactory


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


async def test_success_answers_200_with_the_event_data(kafka: Broker, make_env: EnvFactory) -> None:
    await support.success_answers_200_with_the_event_data(await make_env(kafka))


async def test_failure_maps_to_a_problem(kafka: Broker, make_env: EnvFactory) -> None:
    await support.failure_maps_to_a_problem(await make_env(kafka))


async def test_budget_falls_back_to_the_202(kafka: Broker, make_env: EnvFactory) -> None:
    await support.budget_falls_back_to_the_202(await make_env(kafka, budget="200ms"))


async def test_event_before_the_202_with_the_id_from_the_location(
    kafka: Broker, make_env: EnvFactory
) -> None:
    env = await make_env(kafka, correlation={"source": "location"})
    await support.event_before_the_202_with_the_id_from_the_location(env)


async def test_malformed_messages_are_skipped_and_counted(
    kafka: Broker, make_env: EnvFactory
) -> None:
    await support.malformed_messages_are_skipped_and_counted(await make_env(kafka))


async def test_the_record_key_is_the_id(kafka: Broker, make_env: EnvFactory) -> None:
    env = await make_env(kafka, support.stream_wait(kafka, id_field="@key"))
    task = asyncio.create_task(env.order("o-key"))
    await until(lambda: env.waiting == 1)
    await kafka.publish(None, OK, {"by": "key"}, key=b"o-key")
    resp = await task
    assert resp.status == 200
    assert await resp.json() == {"by": "key"}


async def test_broker_restarted_mid_wait(
    own_tansu: TansuServer, make_env: EnvFactory, receiver: Receiver
) -> None:
    """Tansu keeps everything in memory: after its restart the topic is created again, as
    the API's deployment would (a real Kafka keeps it)."""
    publisher = KafkaPublisher(own_tansu.bootstrap)
    broker = Broker("kafka", own_tansu.url, publisher, "orders.restart", dict(KAFKA_OPTIONS))
    await publisher.create(broker.key)
    env = await make_env(broker, budget="20s")

    async def stop() -> None:
        await publisher.reset()
        await asyncio.to_thread(own_tansu.kill)  # Tansu's own shutdown takes seconds

    async def start() -> None:
        await asyncio.to_thread(own_tansu.start)
        await publisher.create(broker.key)

    try:
        await support.broker_restarted_mid_wait(env, stop, start)
    finally:
        await publisher.close()


async def test_a_missing_topic_is_named_and_read_once_created(
    kafka: Broker,
    redis: aioredis.Redis,
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    redis_url: str,
    key_prefix: str,
) -> None:
    broker = replace(kafka, key=unique("orders.missing"))
    env = await support.start_env(
        broker, start_upstream, start_sidecar, redis_url, key_prefix, ready=False
    )
    await support.what_is_missing_is_named_until_the_api_creates_it(env, "Kafka topic(s) missing")


async def test_two_replicas_one_webhook_per_completion(
    kafka: Broker,
    processes: StartProcess,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    aiohttp_server: Any,
    redis_url: str,
    key_prefix: str,
) -> None:
    api: TestServer = await aiohttp_server(replicas.api_app(kafka))
    await replicas.two_replicas_one_webhook_per_completion(
        kafka, processes, http, receiver, support.url_of(api), redis_url, key_prefix
    )


async def test_a_replica_killed_loses_no_webhook(
    kafka: Broker,
    processes: StartProcess,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    aiohttp_server: Any,
    redis_url: str,
    key_prefix: str,
) -> None:
    api: TestServer = await aiohttp_server(replicas.api_app(kafka))
    await replicas.replica_killed_loses_no_webhook(
        kafka, processes, http, receiver, support.url_of(api), redis_url, key_prefix
    )
