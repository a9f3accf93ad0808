"""The delivery worker (sidecar/webhooks/delivery.py) on real Redis against real receivers:
retries with one webhook-id, 410, the last attempt dead-lettered, a replayed entry, Retry-After."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from sidecar.webhooks.keys import attempts_key, queue_key
from sidecar.webhooks.outbox import Outbox
from sidecar.webhooks.store import SubscriptionStore

from ..helpers import deliveries_settled, until_true
from .delivering import worker


async def test_fail_then_succeed_keeps_one_webhook_id(
    redis: aioredis.Redis, key_prefix: str, redis_url: str, aiohttp_server: Any
) -> None:
    seen: list[tuple[dict[str, str], bytes]] = []
    delivered = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read()))
        if len(seen) < 3:
            return web.Response(status=500)
        delivered.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    store = SubscriptionStore(redis, key_prefix)
    sub = await store.create("t_a", str(server.make_url("/hook")), ["*"])
    body = orjson.dumps({"type": "user.created", "data": {"id": 7}})
    outbox = Outbox(redis, key_prefix)
    assert await outbox.enqueue("msg_one", sub.owner, sub.id, "user.created", body)
    assert not await outbox.enqueue(
        "msg_one", sub.owner, sub.id, "user.created", body
    )  # idempotent
    async with worker(redis, key_prefix, redis_url):
        await asyncio.wait_for(delivered.wait(), 10)
    assert {h["webhook-id"] for h, _ in seen} == {"msg_one"}
    for headers, raw in seen:
        assert raw == body
        Webhook(sub.secret).verify(raw, headers)
    log = [
        orjson.loads(x)
        for x in await redis.lrange(attempts_key(key_prefix, sub.owner, sub.id), 0, -1)
    ]  # type: ignore[misc]
    assert [e["result"] for e in log] == ["delivered", "retry", "retry"]
    assert [e["attempt"] for e in log] == [3, 2, 1]


async def test_410_disables_and_last_attempt_dead_letters(
    redis: aioredis.Redis, key_prefix: str, redis_url: str, aiohttp_server: Any
) -> None:
    calls: asyncio.Queue[int] = asyncio.Queue()

    async def gone(request: web.Request) -> web.Response:
        await calls.put(410)
        return web.Response(status=410)

    async def broken(request: web.Request) -> web.Response:
        await calls.put(500)
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/gone", gone)
    app.router.add_post("/broken", broken)
    server = await aiohttp_server(app)
    store = SubscriptionStore(redis, key_prefix)
    sub_gone = await store.create("t_a", str(server.make_url("/gone")), ["*"])
    sub_broken = await store.create("t_a", str(server.make_url("/broken")), ["*"])
    outbox = Outbox(redis, key_prefix)
    await outbox.enqueue("msg_g", sub_gone.owner, sub_gone.id, "x", b"{}")
    await outbox.enqueue("msg_b", sub_broken.owner, sub_broken.id, "x", b"{}")
    broken_log = attempts_key(key_prefix, sub_broken.owner, sub_broken.id)
    log: list[bytes] = []

    async def dead_lettered() -> bool:
        nonlocal log
        log = await redis.lrange(broken_log, 0, 0)  # type: ignore[misc]
        return bool(log) and orjson.loads(log[0])["result"] == "dead"

    async with worker(redis, key_prefix, redis_url):
        statuses = [await asyncio.wait_for(calls.get(), 10) for _ in range(5)]
        await until_true(dead_lettered, timeout_s=3, every_s=0.05, what=lambda: f"log: {log}")
    assert sorted(statuses) == [410, 500, 500, 500, 500]
    after = await store.get(sub_gone.id)
    assert after is not None and not after.enabled
    assert orjson.loads(log[0])["result"] == "dead"


async def test_a_replayed_outbox_entry_is_not_sent_again(
    redis: aioredis.Redis, key_prefix: str, redis_url: str, aiohttp_server: Any
) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await got.put(request.headers["webhook-id"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    sub = await SubscriptionStore(redis, key_prefix).create(
        "t", str(server.make_url("/hook")), ["*"]
    )
    outbox = Outbox(redis, key_prefix)
    async with worker(redis, key_prefix, redis_url):
        await outbox.enqueue("msg_once", sub.owner, sub.id, "user.created", b"{}")
        assert await asyncio.wait_for(got.get(), 10) == "msg_once"
        # The same attempt again, as a consumer group recreated from the stream's start reads it.
        queue = queue_key(key_prefix, sub.owner, sub.id)
        await redis.xadd(queue, {"m": "msg_once", "n": "1", "t": "scheduled"})
        await outbox.enqueue("msg_next", sub.owner, sub.id, "user.created", b"{}")
        assert await asyncio.wait_for(got.get(), 10) == "msg_next"
        await until_true(lambda: deliveries_settled(redis, key_prefix))  # the replay too
    assert got.empty()
    log = await redis.lrange(attempts_key(key_prefix, sub.owner, sub.id), 0, -1)  # type: ignore[misc]
    assert [orjson.loads(e)["message_id"] for e in log] == ["msg_next", "msg_once"]


async def test_retry_after_pushes_the_next_attempt_later(
    redis: aioredis.Redis, key_prefix: str, redis_url: str, aiohttp_server: Any
) -> None:
    arrivals: asyncio.Queue[float] = asyncio.Queue()

    async def busy_once(request: web.Request) -> web.Response:
        await arrivals.put(time.monotonic())
        if arrivals.qsize() == 1:
            return web.Response(status=503, headers={"Retry-After": "1"})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", busy_once)
    server = await aiohttp_server(app)
    sub = await SubscriptionStore(redis, key_prefix).create(
        "t", str(server.make_url("/hook")), ["*"]
    )
    await Outbox(redis, key_prefix).enqueue("msg_later", sub.owner, sub.id, "user.created", b"{}")
    async with worker(redis, key_prefix, redis_url):
        first = await asyncio.wait_for(arrivals.get(), 10)
        second = await asyncio.wait_for(arrivals.get(), 10)
    # The schedule says 50ms (±20 %); the receiver asked for 1 s, and got at least that.
    assert second - first >= 1.0
    log = await redis.lrange(attempts_key(key_prefix, sub.owner, sub.id), 0, -1)  # type: ignore[misc]
    retry = orjson.loads(log[-1])
    assert (retry["result"], retry["response_status"]) == ("retry", 503)
