"""The Redis Streams reader (sidecar/sources/redis_streams.py) on a real Redis: where new streams
start, resuming after a lost connection without missing or repeating an entry, following a
reload, the lag of each stream, and staying quiet while Redis is away.

The first tests run a reader of their own in front of a hub (`Reader`); the others the reader of
a running sidecar, through a synchronised route (tests/streams.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from devtools.redis_server import RedisServer
from sidecar.completions.hub import CompletionHub
from sidecar.config import Settings, parse_settings
from sidecar.connections import RedisConnections
from sidecar.metrics import Metrics
from sidecar.sources.redis_streams import RedisStreamReader, entry_age_s

from ..helpers import metric, until
from ..streams import OK, StreamEnvFactory, post_user

READER = "sidecar-completions"  # the reader's client name in CLIENT LIST


def reader_settings(url: str, *streams: str) -> Settings:
    routes = [
        {"name": f"r{n}", "path": f"/r{n}", "wait": {"stream": {"key": key, "success": ["Done"]}}}
        for n, key in enumerate(streams)
    ]
    return parse_settings({"redis_url": url, "routes": routes}, "<test>", env={})


@dataclass
class Reader:
    """A hub, and a reader of its streams running in the background."""

    hub: CompletionHub
    reader: RedisStreamReader
    redis: aioredis.Redis

    def count(self, stream: str, result: str = "unmatched") -> float:
        labels = {"stream": stream, "result": result}
        value = self.hub.metrics.registry.get_sample_value("sidecar_stream_events_total", labels)
        return value or 0.0

    async def publish(self, stream: str, cid: str) -> None:
        await self.redis.xadd(stream, {"correlation_id": cid, "type": "Done"})

    def cached(self, stream: str, cid: str) -> bool:
        """True when the hub saw an event of `cid` (a late waiter is resolved at once)."""
        spec = self.hub.decoder.readings[stream][0].spec
        waiter = self.hub.add(spec, cid)
        self.hub.discard(waiter)
        return waiter.future.done()


@contextlib.asynccontextmanager
async def reading(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[Reader]:
    """Run a stream reader for `settings` until the block ends; connected when it starts."""
    connections = RedisConnections(settings)
    await connections.open()
    hub = CompletionHub(settings, Metrics(CollectorRegistry()))
    reader = RedisStreamReader(connections, hub, block_s=0.05, count=100)
    task = asyncio.create_task(reader.run())
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        yield Reader(hub, reader, redis)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await connections.aclose()


async def test_a_new_stream_is_read_from_its_current_end(
    redis: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    stream = f"{key_prefix}:orders.events"
    await redis.xadd(stream, {"correlation_id": "before", "type": "Done"})
    async with reading(reader_settings(redis_url, stream), redis) as reader:
        await reader.publish(stream, "after")
        await until(lambda: reader.count(stream) == 1)
        assert reader.cached(stream, "after")
        assert not reader.cached(stream, "before")  # written before the reader started


async def test_an_empty_or_missing_stream_is_read_from_its_start(
    redis: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    stream = f"{key_prefix}:orders.events"  # does not exist yet
    async with reading(reader_settings(redis_url, stream), redis) as reader:
        await reader.publish(stream, "first")  # the stream's very first entry
        await until(lambda: reader.count(stream) == 1)
        assert reader.cached(stream, "first")


async def test_after_a_lost_connection_the_reader_resumes_where_it_was(
    own_redis: RedisServer, key_prefix: str
) -> None:
    stream = f"{key_prefix}:orders.events"
    redis = aioredis.Redis.from_url(own_redis.url)
    try:
        async with reading(reader_settings(own_redis.url, stream), redis) as reader:
            await reader.publish(stream, "c-0")
            await until(lambda: reader.count(stream) == 1)
            killed = 0
            for client in await redis.client_list():
                if client.get("name") == READER:
                    await redis.client_kill_filter(_id=client["id"])
                    killed += 1
            assert killed == 1
            for n in range(1, 4):  # while the reader reconnects
                await reader.publish(stream, f"c-{n}")
            await until(lambda: reader.count(stream) == 4)
            assert all(reader.cached(stream, f"c-{n}") for n in range(4))
            await reader.publish(stream, "c-4")  # counted fifth: none was read twice
            await until(lambda: reader.count(stream) == 5)
    finally:
        await redis.aclose()


async def test_a_reload_adds_a_stream_read_from_its_end(
    redis: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    first, second = f"{key_prefix}:a.events", f"{key_prefix}:b.events"
    await redis.xadd(second, {"correlation_id": "old", "type": "Done"})
    async with reading(reader_settings(redis_url, first), redis) as reader:
        reader.hub.update(reader_settings(redis_url, first, second))
        # The reader regrouped, and knows where the new stream starts (its last entry now).
        await until(lambda: second in reader.reader._last_ids)
        await reader.publish(second, "new")
        await reader.publish(first, "still")
        await until(lambda: reader.count(second) == 1 and reader.count(first) == 1)
        assert reader.cached(second, "new") and not reader.cached(second, "old")


def test_the_age_of_an_entry_comes_from_its_id() -> None:
    assert 29 < entry_age_s(f"{int((time.time() - 30) * 1000)}-0") < 31
    assert entry_age_s(f"{int((time.time() + 30) * 1000)}-5") == 0.0  # never negative
    assert entry_age_s("not-an-id") == 0.0


# --------------------------------------------------------------------------------------------
# The reader of a running sidecar
# --------------------------------------------------------------------------------------------


async def test_redis_connection_killed_mid_wait_recovers(
    stream_env: StreamEnvFactory, own_redis: RedisServer
) -> None:
    env = await stream_env(url=own_redis.url)
    task = asyncio.create_task(post_user(env, "u-kill"))
    await until(lambda: env.hub_waiting == 1)
    killed = 0
    for entry in await env.redis.client_list():
        if entry.get("name") == READER:
            await env.redis.client_kill_filter(_id=entry["id"])
            killed += 1
    assert killed == 1
    await env.publish("u-kill", OK, {"after": "kill"})  # lands while the reader reconnects
    resp = await task
    assert resp.status == 200
    assert await resp.json() == {"after": "kill"}
    await env.redis.aclose()


async def test_the_stream_lag_is_the_age_of_the_last_entry_read(
    stream_env: StreamEnvFactory,
) -> None:
    env = await stream_env()
    # An event written 30 s ago (explicit entry id) is read now: the reader is 30 s behind.
    old_ms = int((time.time() - 30) * 1000)
    await env.redis.xadd(env.stream, {"correlation_id": "late", "type": OK}, id=f"{old_ms}-0")
    await until(lambda: metric(env.client, "sidecar_stream_lag_seconds", stream=env.stream) > 25)
    await env.publish("now")  # caught up again
    await until(lambda: metric(env.client, "sidecar_stream_lag_seconds", stream=env.stream) < 5)


async def test_redis_down_is_quiet_and_honest(
    stream_env: StreamEnvFactory, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    env = await stream_env(url=own_redis.url)
    hub = env.hub
    await until(lambda: metric(env.client, "sidecar_redis_up") == 1)
    await asyncio.to_thread(own_redis.stop)
    await until(lambda: metric(env.client, "sidecar_redis_up") == 0)
    await until(lambda: not hub.connected.is_set())
    caplog.clear()
    # Not a wait for anything: Redis stays down for two seconds (two health probes, several
    # reconnect attempts), and what the sidecar says meanwhile is the subject.
    await asyncio.sleep(2.0)
    noisy = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(noisy) <= 2, [r.getMessage() for r in noisy]  # state changes only, if any
    assert not [r for r in caplog.records if r.getMessage() == "completion reader connected"]
    assert metric(env.client, "sidecar_redis_up") == 0  # never a false "up" meanwhile
    await asyncio.to_thread(own_redis.start)
    await asyncio.wait_for(hub.connected.wait(), 10)
    await until(lambda: metric(env.client, "sidecar_redis_up") == 1)
    back = [r.getMessage() for r in caplog.records]
    assert back.count("completion reader connected") == 1
    assert back.count("Redis answers") == 1
    await env.redis.aclose()
