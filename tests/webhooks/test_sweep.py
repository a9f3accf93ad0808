"""The delivery workers' periodic walks (sidecar/webhooks/sweep.py) with many subscriptions: an
idle tick costs the same whatever their number, and what the walks are for still happens (an
abandoned attempt is taken over, a queue left unindexed is delivered, the depth gauges add up)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from devtools.redis_server import RedisServer
from sidecar.config import Webhooks
from sidecar.webhooks.keys import DELIVERY_GROUP, due_key, queue_key, ready_key
from sidecar.webhooks.outbox import Outbox, ready_member
from sidecar.webhooks.store import Subscription, SubscriptionStore

from ..helpers import until
from .delivering import built, worker

TAKEOVER = Webhooks(allow_private_targets=True, schedule=[0.05, 0.1], timeout=0.5, claim_after=1.0)
"""An attempt unanswered after 0.5 s has failed; one pending 1 s is a dead process's."""


async def subscribe_many(store: SubscriptionStore, n: int, url: str) -> list[Subscription]:
    """`n` subscriptions, each of an owner of its own."""
    made: list[Subscription] = []
    for start in range(0, n, 200):
        made += await asyncio.gather(
            *(store.create(f"t_{i}", url, ["*"]) for i in range(start, min(n, start + 200)))
        )
    return made


async def commands_of_an_idle_tick(url: str, prefix: str, subscriptions: int) -> int:
    """Commands Redis ran for one claim step, one depth sample and one reconcile tick of an
    idle worker with `subscriptions` subscriptions and nothing queued."""
    redis = aioredis.from_url(url)
    try:
        await subscribe_many(SubscriptionStore(redis, prefix), subscriptions, "http://x/")
        async with built(redis, prefix, url) as w:
            await w.claim_once()  # once first, so scripts are loaded and connections open
            await redis.config_resetstat()
            await w.claim_once()
            await w._sample_depth()
            await w.reconcile()
            stats = await redis.info("commandstats")
    finally:
        await redis.flushall()
        await redis.aclose()
    counted = {k: v for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config")}
    return sum(int(v["calls"]) for v in counted.values())


async def test_an_idle_tick_costs_the_same_whatever_the_number_of_subscriptions(
    key_prefix: str,
) -> None:
    server = RedisServer().start()  # its own: INFO commandstats counts this test only
    try:
        few = await commands_of_an_idle_tick(server.url, key_prefix, 1_000)
        many = await commands_of_an_idle_tick(server.url, key_prefix, 3_000)
    finally:
        server.close()
    assert many < 3_000, f"{many} commands for 3,000 idle subscriptions"
    # The same bounded batch either way (HSCAN's COUNT is a hint: a few more or fewer).
    assert many <= few * 1.2, f"{few} commands with 1,000 subscriptions, {many} with 3,000"


class Receiver:
    """A webhook receiver that holds its first request (until the test ends) and answers
    every later one 204, noting the `webhook-id` of each."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.release = asyncio.Event()

    async def hook(self, request: web.Request) -> web.Response:
        self.ids.append(request.headers["webhook-id"])
        if len(self.ids) == 1:
            await self.release.wait()
        return web.Response(status=204)


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Any:
    got = Receiver()
    app = web.Application()
    app.router.add_post("/hook", got.hook)
    server = await aiohttp_server(app)
    yield got, str(server.make_url("/hook"))
    got.release.set()


async def test_an_abandoned_attempt_among_many_subscriptions_is_taken_over(
    redis: aioredis.Redis, key_prefix: str, redis_url: str, receiver: Any
) -> None:
    got, url = receiver
    store = SubscriptionStore(redis, key_prefix)
    await subscribe_many(store, 2_000, "http://127.0.0.1:9/never")
    sub = await store.create("t_real", url, ["*"])
    assert await Outbox(redis, key_prefix).enqueue("msg_held", sub.owner, sub.id, "a.b", b"{}")
    async with worker(redis, key_prefix, redis_url, TAKEOVER):
        await until(lambda: got.ids == ["msg_held"])
    # That process is gone with its attempt in flight (the receiver still holds it). Another
    # takes it over within claim_after plus one claim interval (half of it), plus the attempt.
    async with worker(redis, key_prefix, redis_url, TAKEOVER) as second:
        await until(lambda: len(got.ids) == 2, timeout_s=1.0 + 0.5 + 1.0)
        assert got.ids == ["msg_held", "msg_held"]
        assert second.sweep.claim_pass_done  # the read index held one queue, not 2,001


async def test_a_queue_left_unindexed_by_a_dead_process_is_delivered(
    redis: aioredis.Redis, key_prefix: str, redis_url: str, receiver: Any
) -> None:
    got, url = receiver
    got.ids.append("")  # answer every request at once
    store = SubscriptionStore(redis, key_prefix)
    await subscribe_many(store, 1_500, "http://127.0.0.1:9/never")
    sub = await store.create("t_real", url, ["*"])
    outbox = Outbox(redis, key_prefix)
    assert await outbox.enqueue("msg_lost", sub.owner, sub.id, "a.b", b"{}")
    # As if the process died between writing the entry and marking its queue ready.
    await redis.zrem(ready_key(key_prefix), ready_member(sub.owner, sub.id))
    async with built(redis, key_prefix, redis_url, TAKEOVER) as w:
        ticks = 1
        while not await w.reconcile():
            ticks += 1
        assert ticks > 1  # a pass is made of bounded ticks
    async with worker(redis, key_prefix, redis_url, TAKEOVER):
        await until(lambda: got.ids == ["", "msg_lost"])


async def test_an_attempt_pending_in_a_queue_no_index_names_is_taken_over_after_a_pass(
    redis: aioredis.Redis, key_prefix: str, redis_url: str, receiver: Any
) -> None:
    got, url = receiver
    got.ids.append("")  # answer every request at once
    store = SubscriptionStore(redis, key_prefix)
    sub = await store.create("t_real", url, ["*"])
    outbox = Outbox(redis, key_prefix)
    assert await outbox.enqueue("msg_old", sub.owner, sub.id, "a.b", b"{}")
    # Read by a consumer that died, and no index names the queue (a Redis that lost them, or
    # entries left by an older version).
    queue = queue_key(key_prefix, sub.owner, sub.id)
    assert await redis.xreadgroup(DELIVERY_GROUP, "dead", {queue: ">"})
    await redis.delete(ready_key(key_prefix))
    async with built(redis, key_prefix, redis_url, TAKEOVER) as w:
        while not await w.reconcile():
            pass
    # Another process takes it over as it would one its reader had indexed: within claim_after
    # plus one claim interval, plus the attempt (well before its own reconcile tick).
    async with worker(redis, key_prefix, redis_url, TAKEOVER):
        await until(lambda: got.ids == ["", "msg_old"], timeout_s=1.0 + 0.5 + 1.0)


async def test_the_depth_gauges_count_what_is_queued_scheduled_and_in_flight(
    redis: aioredis.Redis, key_prefix: str, redis_url: str
) -> None:
    store = SubscriptionStore(redis, key_prefix)
    a, b = await subscribe_many(store, 2, "http://127.0.0.1:9/never")
    outbox = Outbox(redis, key_prefix)
    for n in range(3):
        await outbox.enqueue(f"msg_a{n}", a.owner, a.id, "a.b", b"{}")
    await outbox.enqueue("msg_b", b.owner, b.id, "a.b", b"{}")
    await redis.zadd(due_key(key_prefix, b.owner), {f"{b.id}|msg_c|2|scheduled": 1})
    await outbox.scheduled(b.owner, 1)
    async with built(redis, key_prefix, redis_url) as w:
        await w._sample_depth()
        assert gauge(w, "outbox") == 4
        assert gauge(w, "scheduled") == 1
        # b's entry read by a consumer, and its queue then found empty of new work.
        queue = queue_key(key_prefix, b.owner, b.id)
        pipe = redis.pipeline(transaction=False)
        pipe.execute_command(*w.sweep.note_reads_args([ready_member(b.owner, b.id)]))
        pipe.xreadgroup(DELIVERY_GROUP, "busy", {queue: ">"})
        await pipe.execute()
        await redis.zrem(ready_key(key_prefix), ready_member(b.owner, b.id))
        await w.claim_once()
        await w._sample_depth()
        assert gauge(w, "outbox") == 4  # the one in flight still counts


def gauge(w: Any, queue: str) -> float:
    """The `sidecar_webhook_queue_depth{queue=…}` the worker last set."""
    [family] = w.metrics.queue_depth.collect()
    return next(s.value for s in family.samples if s.labels["queue"] == queue)
