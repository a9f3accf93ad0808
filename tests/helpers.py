"""Small test helpers: awaiting a condition or a consumer group, reading a metric."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from sidecar.state import METRICS


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for `condition()` to hold (checked every few ms), or fail after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the state belongs to the code under test
            await asyncio.sleep(0.002)


def registry(client: TestClient) -> CollectorRegistry:
    """The sidecar app's own metrics registry."""
    return client.app[METRICS].registry


def metric(client: TestClient, name: str, **labels: str) -> float:
    """Current value of a sample (0.0 when it was never set)."""
    return registry(client).get_sample_value(name, labels) or 0.0


async def acknowledged(
    redis: aioredis.Redis, stream: str, group: str, entry_id: bytes | None = None
) -> None:
    """Wait until a consumer group has read every entry of `stream` up to `entry_id` (default:
    the last one) and acknowledged them all."""
    async with asyncio.timeout(10):
        while True:
            last = entry_id or (await redis.xrevrange(stream, count=1))[0][0]
            mine = [g for g in await redis.xinfo_groups(stream) if g["name"] == group.encode()]
            read = mine and _entry(mine[0]["last-delivered-id"]) >= _entry(last)
            if read and not mine[0]["pending"]:
                return
            await asyncio.sleep(0.005)


def _entry(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)
