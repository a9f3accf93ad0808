"""Consumers left in the consumer groups by replicas killed without a shutdown are removed
(sidecar/webhooks/consumers.py), unless they still hold pending entries; a live replica's
consumer stays."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from sidecar.webhooks import WEBHOOKS
from sidecar.webhooks.keys import DELIVERY_GROUP, dispatch_group, queue_key

from ..conftest import FakeApiFactory, SidecarFactory
from ..helpers import metric, until


async def names(redis: aioredis.Redis, stream: str, group: str) -> set[str]:
    return {c["name"].decode() for c in await redis.xinfo_consumers(stream, group)}


async def test_consumers_of_killed_replicas_are_removed_unless_they_hold_pending_entries(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> None:
    stream = f"{key_prefix}:jobs.events"
    group = dispatch_group(key_prefix)
    # Two replicas that were killed: one had acknowledged what it read, one had not.
    await redis.xgroup_create(stream, group, id="$", mkstream=True)
    await redis.xadd(stream, {"correlation_id": "c-1", "type": "Other"})
    await redis.xadd(stream, {"correlation_id": "c-2", "type": "Other"})
    [(_, [(first, _f)])] = await redis.xreadgroup(group, "killed-idle", {stream: ">"}, count=1)
    await redis.xack(stream, group, first)
    await redis.xreadgroup(group, "killed-pending", {stream: ">"}, count=1)

    settings: dict[str, Any] = {
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        "routes": [
            {
                "name": "jobs",
                "method": "POST",
                "path": "/jobs",
                "wait": {"stream": {"key": stream, "success": ["Done"]}},
            }
        ],
        "webhooks": {"allow_private_targets": True, "timeout": "200ms", "claim_after": "300ms"},
    }
    client = await start_sidecar(await fake_api(), **settings)
    runtime = client.app[WEBHOOKS]
    sub = await runtime.store.create("operator", "https://hooks.example.com/a", ["*"])
    queue = queue_key(key_prefix, sub.owner, sub.id)
    await redis.xgroup_create(queue, DELIVERY_GROUP, id="$", mkstream=True)
    await redis.xadd(queue, {"m": "msg_gone", "n": "1", "t": "event"})
    [(_, [(entry, _f)])] = await redis.xreadgroup(DELIVERY_GROUP, "killed-worker", {queue: ">"})
    await redis.xack(queue, DELIVERY_GROUP, entry)

    await until(
        lambda: (
            metric(client, "sidecar_stale_consumers_removed_total", group="dispatch") == 1
            and metric(client, "sidecar_stale_consumers_removed_total", group="delivery") == 1
        ),
        timeout_s=10,
    )
    left = await names(redis, stream, group)
    assert "killed-idle" not in left
    assert "killed-pending" in left  # its entry is claimed by a live replica first
    assert "killed-worker" not in await names(redis, queue, DELIVERY_GROUP)
