"""Call tracking on a real Redis: a burst of calls is recorded whole, through few connections."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from sidecar.tracking import CallTracker, TrackedCall


async def test_a_burst_of_records_shares_round_trips_and_all_land(
    redis_url: str, redis: aioredis.Redis, key_prefix: str
) -> None:
    # One connection, and a caller waits at most 100 ms for it: one write per call would queue
    # 3,000 round trips on it and time out; written together they take a few.
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=0.1)
    client = aioredis.Redis.from_pool(pool)
    tracker = CallTracker(client, key_prefix, 60)
    calls = [
        TrackedCall(f"c-{i}", "r", f"t_{i}", f"/s/{i}", f"http://u/s/{i}", created_at=time.time())
        for i in range(3000)
    ]
    try:
        await asyncio.gather(*(tracker.record(call) for call in calls))
        got = await CallTracker(redis, key_prefix, 60).get_many([c.correlation_id for c in calls])
    finally:
        await client.aclose()
    assert [g.tenant if g else None for g in got] == [c.tenant for c in calls]
    assert await CallTracker(redis, key_prefix, 60).by_location("http://u/s/2999") == got[-1]
