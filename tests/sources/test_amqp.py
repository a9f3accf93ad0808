"""A route on a RabbitMQ exchange, black-box through the real sidecar and a real broker:
synchronised answers, failures, the budget, the early-event race, malformed messages, the
broker restarted mid-wait (a node of the test session's own: its broker application stopped and
started), and webhooks across replicas (one per completion, none lost to a SIGKILL). AMQP only:
`binding` (routing-key patterns) and the message's own properties (`@correlation_id`)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from devtools.brokers import AmqpPublisher, RabbitServer

from ..conftest import SidecarFactory, Upstream
from ..helpers import until
from ..processes import StartProcess
from ..replicas.support import Receiver
from . import replicas, support
from .conftest import AMQP_OPTIONS, unique
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


async def test_success_answers_200_with_the_event_data(amqp: Broker, make_env: EnvFactory) -> None:
    await support.success_answers_200_with_the_event_data(await make_env(amqp))


async def test_failure_maps_to_a_problem(amqp: Broker, make_env: EnvFactory) -> None:
    await support.failure_maps_to_a_problem(await make_env(amqp))


async def test_budget_falls_back_to_the_202(amqp: Broker, make_env: EnvFactory) -> None:
    await support.budget_falls_back_to_the_202(await make_env(amqp, budget="200ms"))


async def test_event_before_the_202_with_the_id_from_the_location(
    amqp: Broker, make_env: EnvFactory
) -> None:
    env = await make_env(amqp, correlation={"source": "location"})
    await support.event_before_the_202_with_the_id_from_the_location(env)


async def test_malformed_messages_are_skipped_and_counted(
    amqp: Broker, make_env: EnvFactory
) -> None:
    await support.malformed_messages_are_skipped_and_counted(await make_env(amqp))


async def test_the_binding_picks_the_routing_keys(amqp: Broker, make_env: EnvFactory) -> None:
    env = await make_env(amqp, support.stream_wait(amqp, binding="orders.eu.*"))
    task = asyncio.create_task(env.order("o-eu"))
    await until(lambda: env.waiting == 1)
    await amqp.publish("o-eu", OK, {"region": "us"}, routing_key="orders.us.placed")
    await amqp.publish("o-eu", OK, {"region": "eu"}, routing_key="orders.eu.placed")
    resp = await task
    assert resp.status == 200
    assert await resp.json() == {"region": "eu"}  # the us one never reached the queue
    assert env.count("matched") == 1 and env.count("unmatched") == 0


async def test_the_amqp_correlation_id_property_is_the_id(
    amqp: Broker, make_env: EnvFactory
) -> None:
    env = await make_env(amqp, support.stream_wait(amqp, id_field="@correlation_id"))
    task = asyncio.create_task(env.order("o-prop"))
    await until(lambda: env.waiting == 1)
    await amqp.publish(None, OK, {"by": "property"}, correlation_id="o-prop")
    resp = await task
    assert resp.status == 200
    assert await resp.json() == {"by": "property"}


async def test_a_missing_exchange_is_named_and_read_once_declared(
    amqp: Broker,
    redis: aioredis.Redis,
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    redis_url: str,
    key_prefix: str,
) -> None:
    broker = replace(amqp, key=unique("orders.missing"))
    env = await support.start_env(
        broker, start_upstream, start_sidecar, redis_url, key_prefix, ready=False
    )
    await support.what_is_missing_is_named_until_the_api_creates_it(env, "AMQP exchange(s) missing")


async def test_two_replicas_one_webhook_per_completion(
    amqp: Broker,
    processes: StartProcess,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    aiohttp_server: Any,
    redis_url: str,
    key_prefix: str,
) -> None:
    api: TestServer = await aiohttp_server(replicas.api_app(amqp))
    await replicas.two_replicas_one_webhook_per_completion(
        amqp, processes, http, receiver, support.url_of(api), redis_url, key_prefix
    )


async def test_a_replica_killed_loses_no_webhook(
    amqp: Broker,
    processes: StartProcess,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    aiohttp_server: Any,
    redis_url: str,
    key_prefix: str,
) -> None:
    api: TestServer = await aiohttp_server(replicas.api_app(amqp))
    await replicas.replica_killed_loses_no_webhook(
        amqp, processes, http, receiver, support.url_of(api), redis_url, key_prefix
    )


# Last: the session's own node started in the background meanwhile (conftest.py).
async def test_broker_restarted_mid_wait(rabbit_node: RabbitServer, make_env: EnvFactory) -> None:
    """The broker application of the session's own node is stopped (every connection
    closed, the port silent) and started again; the exchange and the durable queue stay."""
    publisher = AmqpPublisher(rabbit_node.url)
    broker = Broker("amqp", rabbit_node.url, publisher, "orders.restart", dict(AMQP_OPTIONS))
    await publisher.create(broker.key)
    env = await make_env(broker, budget="20s")

    async def stop() -> None:
        await publisher.reset()
        await asyncio.to_thread(rabbit_node.stop_broker)

    async def start() -> None:
        await asyncio.to_thread(rabbit_node.start_broker)

    try:
        await support.broker_restarted_mid_wait(env, stop, start)
    finally:
        await publisher.close()
