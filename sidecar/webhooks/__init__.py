"""Webhooks: signed, tenant-scoped, durable fan-out of completions (issue 5).

Modules, bottom up: `keys` (Redis key layout), `signing` (Standard Webhooks), `targets` (SSRF
policy, guarded resolver), `store` (subscriptions), `outbox`, `attempt` (one signed POST),
`delivery` (workers), `fanout`, `dispatcher` (completion streams → outbox), `runtime`, and the
admin API: `bodies` (request bodies) and `api` (the endpoints).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from ..completion import Completion
from ..config import Route
from ..state import METRICS, RUNTIME
from ..sync import PUBLISH
from ..tasks import TaskSet
from ..tracking import TrackedCall
from .attempt import create_webhook_session
from .delivery import DeliveryWorker, supervised
from .dispatcher import Dispatcher, group_name
from .fanout import messages_for
from .keys import outbox_key
from .metrics import WebhookMetrics
from .outbox import GROUP
from .runtime import WEBHOOKS, WebhookRuntime
from .targets import TargetPolicy

__all__ = ["WEBHOOKS", "publish_completion", "webhooks_ctx"]

logger = logging.getLogger(__name__)

PREPARE_WAIT_S = 1.0  # startup waits this long for Redis before going on without it
PREPARE_RETRY_S = 1.0


async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the dispatcher and delivery workers when Redis is configured; stop them on cleanup."""
    settings = app[RUNTIME].settings
    if not settings.redis_url:
        yield
        return
    redis: aioredis.Redis = aioredis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=2.0,
        socket_timeout=10.0,
        health_check_interval=10,
    )
    config = settings.webhooks
    session = create_webhook_session(TargetPolicy.from_settings(config), config.concurrency)
    runtime = WebhookRuntime(settings, redis, session, WebhookMetrics(app[METRICS].registry))
    app[WEBHOOKS] = runtime
    worker = DeliveryWorker(
        redis, runtime.prefix, config, session, runtime.metrics, runtime.consumer, runtime.store
    )
    dispatcher = Dispatcher(redis, app[RUNTIME], runtime.store, runtime.outbox, runtime.consumer)
    app[PUBLISH] = publish_completion
    tasks = TaskSet("webhooks")
    try:
        prepared = await asyncio.wait_for(_prepare(runtime, dispatcher, worker), PREPARE_WAIT_S)
    except TimeoutError:
        prepared = False
    if not prepared:  # Redis is down: start anyway (calls degrade to 202) and keep trying
        tasks.spawn(_prepare_until_done(runtime, dispatcher, worker))
    tasks.spawn(worker.run())
    tasks.spawn(supervised("dispatcher", dispatcher.run))
    yield
    await tasks.close()
    streams = [(s, group_name(runtime.prefix)) for s in app[RUNTIME].settings.stream_keys]
    await _leave_groups(redis, [*streams, (outbox_key(runtime.prefix), GROUP)], runtime.consumer)
    await session.close()
    await redis.aclose()


async def _leave_groups(redis: aioredis.Redis, groups: list[tuple[str, str]], name: str) -> None:
    """Remove this process's consumer from each group it has nothing pending in, so the groups'
    consumer lists do not grow with every deploy. One with pending entries stays: deleting it
    would make them unclaimable (another replica claims them after the claim timeout)."""
    for stream, group in groups:
        try:
            consumers = await redis.xinfo_consumers(stream, group)
            mine = [c for c in consumers if c["name"].decode() == name]
            if mine and not mine[0]["pending"]:
                await redis.xgroup_delconsumer(stream, group, name)
        except RedisError as exc:
            logger.info("consumer not removed", extra={"stream": stream, "error": str(exc)})


async def _prepare(runtime: WebhookRuntime, dispatcher: Dispatcher, worker: DeliveryWorker) -> bool:
    """Save YAML-declared subscriptions and create the consumer groups, so that completions
    published from now on are dispatched; False (logged) while Redis is unreachable."""
    try:
        await runtime.store.declare(runtime.settings.webhooks.subscriptions)
        await dispatcher.ensure_groups()
        await worker.ensure_group()
    except RedisError as exc:
        logger.warning(
            "webhooks not prepared yet (Redis down); retrying", extra={"error": str(exc)}
        )
        return False
    return True


async def _prepare_until_done(
    runtime: WebhookRuntime, dispatcher: Dispatcher, worker: DeliveryWorker
) -> None:
    while not await _prepare(runtime, dispatcher, worker):  # noqa: ASYNC110 - polls Redis
        await asyncio.sleep(PREPARE_RETRY_S)


async def publish_completion(
    app: web.Application, route: Route, completion: Completion, tracked: TrackedCall | None
) -> None:
    """Fan out a poll-detected completion once across replicas; never raises to the caller."""
    runtime = app.get(WEBHOOKS)
    if runtime is None:
        return
    cid = completion.correlation_id
    try:
        # Message ids derive from the call, so the stream's dispatcher, a replica's poller and
        # this one all enqueue the same messages: the first wins, the others are no-ops.
        subs = await runtime.store.snapshot()
        messages = messages_for(
            subs,
            route,
            completion.status,
            completion.data,
            cid,
            tracked,
            time.time(),
            f"poll/{cid}",
        )
        await runtime.outbox.enqueue_many(messages)
    except RedisError as exc:
        logger.warning(
            "poll completion not published (Redis fault)",
            extra={"route": route.name, "correlation_id": cid, "error": str(exc)},
        )
