"""The delivery worker on its own, for the tests of delivery and of what it records: a
`DeliveryWorker` of a key prefix running in the background, with every service it needs built
as the app builds them (no proxy, no dispatcher)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from sidecar.config import Settings, Webhooks
from sidecar.connections import RedisConnections
from sidecar.tracking import CallTracker
from sidecar.webhooks.attempt import create_webhook_session
from sidecar.webhooks.delivery import DeliveryWorker
from sidecar.webhooks.metrics import WebhookMetrics
from sidecar.webhooks.runtime import WebhookRuntime
from sidecar.webhooks.targets import TargetPolicy

CONFIG = Webhooks(allow_private_targets=True, schedule=[0.05, 0.1, 0.1], timeout=1.0)
"""Three retries 50-100 ms apart (a failing message is dead after its fourth attempt)."""


@contextlib.asynccontextmanager
async def built(
    redis: aioredis.Redis,
    prefix: str,
    redis_url: str,
    config: Webhooks = CONFIG,
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[DeliveryWorker]:
    """A delivery worker of `prefix` (webhooks: `config`, CONFIG unless told; its metrics on
    `registry`, a fresh one unless told), built but not started (its loops are called by hand)."""
    policy = TargetPolicy.from_settings(config)
    session = create_webhook_session(policy, 8)
    # Copied in unchecked: a test may freeze an attempt past its claim (timeout > claim_after).
    settings = Settings(key_prefix=prefix, webhooks=CONFIG, redis_url=redis_url).model_copy(
        update={"webhooks": config}
    )
    tracker = CallTracker(redis, prefix, settings.tracking_ttl)
    metrics = WebhookMetrics(registry or CollectorRegistry())
    connections = RedisConnections(settings)
    runtime = WebhookRuntime(settings, connections, tracker, session, policy, metrics)
    try:
        yield DeliveryWorker(runtime)
    finally:
        await session.close()
        await connections.aclose()


@contextlib.asynccontextmanager
async def worker(
    redis: aioredis.Redis,
    prefix: str,
    redis_url: str,
    config: Webhooks = CONFIG,
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[DeliveryWorker]:
    """A delivery worker of `prefix` (as `built`) running until the block ends."""
    async with built(redis, prefix, redis_url, config, registry) as w:
        task = asyncio.create_task(w.run())
        try:
            yield w
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
