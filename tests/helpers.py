"""Small test helpers: awaiting a condition or a consumer group, reading a metric.

Every wait of the suite for something to happen goes through `until` (a condition on this
process's state) or `until_true` (an async check: Redis, another process, an HTTP answer); a
test never sleeps to let something happen."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from sidecar.metrics import METRICS

What = str | Callable[[], str] | None
"""What a wait was for, said when it times out: a text, or a function of the state then."""


def _timed_out(what: What, timeout_s: float) -> AssertionError:
    text = what() if callable(what) else what
    return AssertionError(f"{text} (waited {timeout_s:g}s)")


async def until(
    condition: Callable[[], bool],
    timeout_s: float = 5.0,
    *,
    every_s: float = 0.002,
    what: What = None,
) -> None:
    """Wait for `condition()` to hold (checked every few ms), or fail after `timeout_s`: with
    TimeoutError, or an AssertionError saying `what` when given."""
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():  # noqa: ASYNC110 - the state belongs to the code under test
                await asyncio.sleep(every_s)
    except TimeoutError:
        if what is None:
            raise
        raise _timed_out(what, timeout_s) from None


async def until_true(
    check: Callable[[], Awaitable[bool]],
    timeout_s: float = 10.0,
    *,
    every_s: float = 0.02,
    what: What = None,
) -> None:
    """Wait for an async `check()` to hold (polled every 20 ms), or fail after `timeout_s`: with
    TimeoutError, or an AssertionError saying `what` when given. A check may fail the test at
    once itself (a process that exited, say)."""
    try:
        async with asyncio.timeout(timeout_s):
            while not await check():  # noqa: ASYNC110 - the state is in Redis or elsewhere
                await asyncio.sleep(every_s)
    except TimeoutError:
        if what is None:
            raise
        raise _timed_out(what, timeout_s) from None


def registry(client: TestClient) -> CollectorRegistry:
    """The sidecar app's own metrics registry."""
    return client.app[METRICS].registry


def metric(client: TestClient, name: str, **labels: str) -> float:
    """Current value of a sample (0.0 when it was never set)."""
    return registry(client).get_sample_value(name, labels) or 0.0


async def drained(redis: aioredis.Redis, stream: str, group: str) -> bool:
    """True when `group` has read every entry of `stream` and acknowledged all it read.

    (Not XINFO's `lag`: once trimming has removed unread entries, it counts them forever.)
    """
    for g in await redis.xinfo_groups(stream):
        if g["name"].decode() == group:
            if g["pending"]:
                return False
            unread = await redis.xrange(stream, f"({g['last-delivered-id'].decode()}", "+", 1)
            return not unread
    return False


async def acknowledged(redis: aioredis.Redis, stream: str, group: str) -> None:
    """Wait until a consumer group has read and acknowledged every entry of `stream`."""
    await until_true(lambda: drained(redis, stream, group))


async def pending(redis: aioredis.Redis, stream: str, group: str) -> int:
    """How many entries of `stream` `group` has read and not acknowledged yet."""
    summary = await redis.xpending(stream, group)
    return int(summary["pending"])


async def keys_like(redis: aioredis.Redis, pattern: str) -> list[str]:
    """Every key matching a SCAN pattern."""
    return [k.decode() async for k in redis.scan_iter(match=pattern, count=1000)]


async def enqueued(redis: aioredis.Redis, prefix: str) -> list[dict[str, str]]:
    """Every webhook message enqueued under `prefix` (its hash fields, decoded), oldest first."""
    out = []
    for key in await keys_like(redis, f"{prefix}:wh:*:msg:*"):
        if key.endswith(":log"):
            continue
        fields = await redis.hgetall(key)  # type: ignore[misc]
        out.append({k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()})
    return sorted(out, key=lambda m: int(m.get("created_ms", "0")))


async def deliveries_settled(redis: aioredis.Redis, prefix: str) -> bool:
    """True when every subscription queue is empty (each entry handled and deleted) and no
    retry is scheduled: no further webhook attempt can start. Read in one transaction, so an
    attempt moving between its queue and the due set is seen in one of them."""
    queues = await keys_like(redis, f"{prefix}:wh:*:q:*")
    owners = {q.split(":q:", 1)[0] for q in queues}  # `{prefix}:wh:{owner}`
    dues = [f"{owner}:due" for owner in owners]
    async with redis.pipeline(transaction=True) as pipe:
        for key in queues:
            pipe.xlen(key)
        for key in dues:
            pipe.zcard(key)
        counts = await pipe.execute()
    return not any(counts)
