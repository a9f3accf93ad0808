"""Call tracking on a real Redis: a burst of calls is recorded whole, through few connections."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from devtools.redis_server import RedisServer
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
        got = await CallTracker(redis, key_prefix, 60).get_many([c.wait_id for c in calls])
    finally:
        await client.aclose()
    assert [g.tenant if g else None for g in got] == [c.tenant for c in calls]
    assert await CallTracker(redis, key_prefix, 60).by_location("http://u/s/2999") == got[-1]


async def test_a_record_is_written_once_by_the_call_that_owns_its_id(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    tracker = CallTracker(redis, key_prefix, 60)
    assert await tracker.claim("op-1", "call-a")
    assert not await tracker.claim("op-1", "call-b")  # held: in use, or used recently
    first = TrackedCall("op-1", "r", "t_a", "/a", None, created_at=1.0, correlation_id="call-a")
    assert await tracker.record(first)
    later = TrackedCall("op-1", "r", "t_b", "/b", None, created_at=2.0, correlation_id="call-b")
    assert not await tracker.record(later)  # another call's id: never overwritten
    assert not await tracker.record(first)  # and written once even by its owner
    got = await tracker.get("op-1")
    assert got is not None and (got.tenant, got.identity, got.location) == ("t_a", "call-a", "/a")
    # An unclaimed id is claimed by the record that names it.
    fresh = TrackedCall("op-2", "r", None, None, None, created_at=1.0, correlation_id="call-c")
    assert await tracker.record(fresh)
    assert not await tracker.claim("op-2", "call-d")


async def test_one_batch_of_mixed_records_leads_each_location_to_its_own_call(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    # Calls with and without a Location, and one whose id another call owns, written together
    # (several chunks of the record script): each Location leads to the call that wrote it.
    tracker = CallTracker(redis, key_prefix, 60)
    assert await tracker.claim("taken", "someone-else")
    calls = [
        TrackedCall(
            "taken" if i == 40 else f"m-{i}",
            "r",
            f"t_{i}",
            f"/s/{i}",
            f"http://u/s/{i}?n={i}" if i % 3 else None,
            created_at=1.0,
            correlation_id=f"call-{i}",
        )
        for i in range(100)
    ]
    written = await asyncio.gather(*(tracker.record(call) for call in calls))
    assert written == [i != 40 for i in range(100)]
    for i in (1, 2, 41, 98):
        got = await tracker.by_location(f"http://u/s/{i}?n={i}")
        assert got is not None and (got.wait_id, got.tenant) == (f"m-{i}", f"t_{i}")
    assert await tracker.by_location("http://u/s/40?n=40") is None  # not this call's id
    assert await tracker.by_location("http://u/s/3?n=3") is None  # it had no Location
    got = await tracker.get("m-3")
    assert got is not None and got.upstream_location is None and got.location == "/s/3"


async def test_finishing_an_untracked_call_creates_nothing(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    tracker = CallTracker(redis, key_prefix, 60)
    assert not await tracker.finish("nobody", "succeeded")
    assert await tracker.get("nobody") is None
    await tracker.record(TrackedCall("c", "r", None, None, None, created_at=1.0))
    assert await tracker.finish("c", "succeeded")
    assert not await tracker.finish("c", "failed")  # the first verdict stays
    got = await tracker.get("c")
    assert got is not None and got.state == "succeeded"


async def test_records_are_written_after_redis_lost_its_scripts(own_redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(own_redis.url)
    tracker = CallTracker(client, "scripts", 60)
    try:
        assert await tracker.record(TrackedCall("a", "r", "t", "/a", None, created_at=1.0))
        await client.script_flush()  # as after a restart without persistence of scripts
        assert await tracker.record(TrackedCall("b", "r", "t", "/b", None, created_at=1.0))
        assert not await tracker.record(TrackedCall("b", "r", "t", "/b", None, created_at=1.0))
        got = await tracker.get_many(["a", "b"])
        assert [g.location if g else None for g in got] == ["/a", "/b"]
    finally:
        await client.aclose()
