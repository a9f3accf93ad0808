"""Webhooks: the delivery engine, signed, tenant-scoped, durable fan-out of completions.

Modules, bottom up: `keys` (the Redis key layout), `signing` (Standard Webhooks), `targets`
(SSRF policy, guarded resolver), `store` (subscriptions), `outbox` (messages and their queues),
`messages` (the message log), `quotas`, `metrics`, `fanout` (payloads and messages of a
completion), `attempt` (one signed POST), `retry` (when an attempt is made again), `planner`
(fair slots), `outcome` (recording what an attempt led to), `runtime` (the services, built
once), `supervise`, `delivery` (the workers' loops), `handoff` (completions held until their
call is tracked, then written to the outbox), `dispatcher` (Redis completion streams → outbox),
`brokers` (each broker source's shared read → outbox), `consumers` (dead replicas' consumers
removed from the groups), `breaker` (each endpoint's circuit breaker), `retention` (the logs
trimmed by age).
`webhooks_ctx` runs them. The HTTP API over them lives in `sidecar.admin`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ..completions.publish import PUBLISHER
from ..connections import REDIS_FAULTS, Client
from ..metrics import METRICS
from ..operations import OPERATIONS
from ..routing import RUNTIME
from ..sources.health import SOURCE_HEALTH
from ..state import REDIS, TRACKER
from ..tasks import TaskSet
from .attempt import create_webhook_session
from .brokers import BrokerDispatcher
from .consumers import ConsumerSweeper
from .delivery import DeliveryWorker
from .dispatcher import Dispatcher
from .fanout import known_events
from .keys import DELIVERY_GROUP, dispatch_group
from .metrics import WebhookMetrics
from .retention import LogTrimmer
from .runtime import WEBHOOKS, WebhookRuntime
from .supervise import supervised
from .targets import TargetPolicy

__all__ = ["WEBHOOKS", "webhooks_ctx"]

logger = logging.getLogger(__name__)

PREPARE_WAIT_S = 1.0  # startup waits this long for Redis before going on without it
PREPARE_RETRY_S = 1.0


async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the dispatcher and delivery workers when Redis is configured; stop them on cleanup."""
    settings, connections, tracker = app[RUNTIME].settings, app[REDIS], app[TRACKER]
    if connections is None or tracker is None:
        yield
        return
    config = settings.webhooks
    policy = TargetPolicy.from_settings(config)
    # Room for the attempts lingering past breaker.linger_after besides those holding a slot.
    session = create_webhook_session(policy, config.delivery_connections)
    runtime = WebhookRuntime(
        settings,
        connections,
        tracker,
        session,
        policy,
        WebhookMetrics(app[METRICS].registry),
    )
    app[WEBHOOKS] = runtime
    app[PUBLISHER] = runtime
    runtime.metrics.initialise(sorted(known_events(settings)))
    worker = DeliveryWorker(runtime)
    worker.on_fault = app[METRICS].redis_faults.labels("webhook_loop").inc
    dispatcher = Dispatcher(runtime, app[RUNTIME], app.get(OPERATIONS))
    tasks = TaskSet("webhooks")
    try:
        prepared = await asyncio.wait_for(_prepare(runtime, dispatcher, worker), PREPARE_WAIT_S)
    except TimeoutError:
        prepared = False
    if not prepared:  # Redis is down: start anyway (calls degrade to 202) and keep trying
        tasks.spawn(_prepare_until_done(runtime, dispatcher, worker))
    tasks.spawn(worker.run())
    fault = app[METRICS].redis_faults.labels("webhook_loop").inc
    tasks.spawn(supervised("dispatcher", dispatcher.run, fault))
    sweeper = ConsumerSweeper(runtime.redis, settings, runtime.consumer, app[METRICS])
    tasks.spawn(supervised("consumers", sweeper.run, fault))
    trimmer = LogTrimmer(runtime.redis, runtime.prefix, config, runtime.metrics)
    tasks.spawn(supervised("log-trim", trimmer.run, fault))
    for name in settings.sources:  # each broker's shared read, acknowledged after the outbox
        broker = BrokerDispatcher(
            name, runtime, app[RUNTIME], app[SOURCE_HEALTH], app.get(OPERATIONS)
        )
        tasks.spawn(supervised(f"dispatcher {name}", broker.run, fault))
    yield
    await tasks.close()
    streams = [(s, dispatch_group(runtime.prefix)) for s in app[RUNTIME].settings.stream_keys]
    queues = [(q, DELIVERY_GROUP) for q in sorted(worker.read_from)]
    await _leave_groups(runtime.redis, [*streams, *queues], runtime.consumer)
    with contextlib.suppress(*REDIS_FAULTS):
        await sweeper.leave()
    await session.close()


async def _leave_groups(redis: Client, groups: list[tuple[str, str]], name: str) -> None:
    """Remove this process's consumer from each group it has nothing pending in, so the groups'
    consumer lists do not grow with every deploy. One with pending entries stays: deleting it
    would make them unclaimable (another replica claims them after the claim timeout)."""
    if not groups:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for stream, group in groups:
                pipe.xinfo_consumers(stream, group)
            replies = await pipe.execute(raise_on_error=False)
        idle = [
            (stream, group)
            for (stream, group), consumers in zip(groups, replies, strict=True)
            if isinstance(consumers, list)
            and any(c["name"].decode() == name and not c["pending"] for c in consumers)
        ]
        async with redis.pipeline(transaction=False) as pipe:
            for stream, group in idle:
                pipe.xgroup_delconsumer(stream, group, name)
            await pipe.execute(raise_on_error=False)
    except REDIS_FAULTS as exc:
        logger.info("consumers not removed", extra={"error": str(exc)})


async def _prepare(
    runtime: WebhookRuntime, dispatcher: Dispatcher, worker: DeliveryWorker, say: bool = True
) -> bool:
    """Save YAML-declared subscriptions and create the consumer groups, so that completions
    published from now on are dispatched; False (logged when `say`) while Redis is down."""
    try:
        await runtime.store.declare(runtime.settings.webhooks.subscriptions)
        await runtime.store.ensure_indexed()
        await dispatcher.ensure_groups()
        await worker.ensure_group()
    except REDIS_FAULTS as exc:
        if say:
            logger.warning(
                "webhooks not prepared yet (Redis down); retrying quietly",
                extra={"error": str(exc)},
            )
        return False
    return True


async def _prepare_until_done(
    runtime: WebhookRuntime, dispatcher: Dispatcher, worker: DeliveryWorker
) -> None:
    while not await _prepare(runtime, dispatcher, worker, say=False):  # noqa: ASYNC110
        await asyncio.sleep(PREPARE_RETRY_S)
    logger.info("webhooks prepared")
