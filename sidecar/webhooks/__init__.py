"""Webhooks: signed, tenant-scoped, durable fan-out of completions (issue 5).

Modules, bottom up: `keys` (Redis key layout), `signing` (Standard Webhooks), `targets` (SSRF
policy, guarded resolver), `store` (subscriptions), `outbox`, `attempt` (one signed POST),
`delivery` (workers), `fanout`, `dispatcher` (completion streams → outbox), `runtime`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from ..completion import Completion
from ..config import Route
from ..state import METRICS, RUNTIME
from ..tasks import TaskSet
from ..tracking import TrackedCall
from .attempt import create_webhook_session
from .delivery import DeliveryWorker, supervised
from .dispatcher import Dispatcher
from .fanout import fan_out
from .keys import done_key
from .metrics import WebhookMetrics
from .runtime import WEBHOOKS, WebhookRuntime
from .targets import TargetPolicy

__all__ = ["WEBHOOKS", "publish_completion", "webhooks_ctx"]

logger = logging.getLogger(__name__)


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
    try:
        await runtime.store.declare(config.subscriptions)
    except RedisError as exc:
        logger.warning("declared subscriptions not saved (Redis down)", extra={"error": str(exc)})
    worker = DeliveryWorker(
        redis, runtime.prefix, config, session, runtime.metrics, runtime.consumer
    )
    dispatcher = Dispatcher(redis, app[RUNTIME], runtime.store, runtime.outbox, runtime.consumer)
    tasks = TaskSet("webhooks")
    tasks.spawn(worker.run())
    tasks.spawn(supervised("dispatcher", dispatcher.run))
    yield
    await tasks.close()
    await session.close()
    await redis.aclose()


async def publish_completion(
    app: web.Application, route: Route, completion: Completion, tracked: TrackedCall | None
) -> None:
    """Fan out a poll-detected completion once across replicas; never raises to the caller."""
    runtime = app.get(WEBHOOKS)
    if runtime is None:
        return
    cid = completion.correlation_id
    key = done_key(runtime.prefix, cid)
    try:
        ttl_ms = int(runtime.settings.tracking_ttl * 1000)
        if not await runtime.redis.set(key, "1", nx=True, px=ttl_ms):
            return
        await fan_out(
            runtime.store,
            runtime.outbox,
            route,
            completion.status,
            completion.data,
            cid,
            tracked,
            time.time(),
            f"poll/{cid}",
        )
    except RedisError as exc:
        logger.warning(
            "poll completion not published (Redis fault)",
            extra={"route": route.name, "correlation_id": cid, "error": str(exc)},
        )
        with contextlib.suppress(RedisError):
            await runtime.redis.delete(key)
