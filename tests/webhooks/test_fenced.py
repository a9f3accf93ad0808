"""Outcomes recorded only under a live claim, and messages whose record Redis lost dead-lettered
(sidecar/webhooks/fence.py, outcome.py, delivery.py) on real Redis against real receivers: a
message lost while its attempt is in flight, a record found incomplete, and a stale worker whose
claim another took over while its attempt hung."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from devtools.redis_server import RedisServer, RedisUnavailable
from sidecar.webhooks.keys import (
    DELIVERY_GROUP,
    due_key,
    message_key,
    message_log_key,
    message_owner_key,
    queue_key,
)
from sidecar.webhooks.messages import MessageLog
from sidecar.webhooks.outbox import Outbox
from sidecar.webhooks.store import Subscription, SubscriptionStore

from ..helpers import until, until_true
from .delivering import CONFIG, worker

BODY = orjson.dumps({"type": "user.created", "data": {"id": 7}})


class Receiver:
    """Holds the first request until released (then answers `first_status`); answers 204 to
    every later one. Notes every request's webhook-id."""

    def __init__(self, first_status: int) -> None:
        self.first_status = first_status
        self.ids: list[str] = []
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.answered_first = asyncio.Event()

    async def hook(self, request: web.Request) -> web.Response:
        self.ids.append(request.headers["webhook-id"])
        if len(self.ids) > 1:
            return web.Response(status=204)
        self.holding.set()
        await self.release.wait()
        self.answered_first.set()
        return web.Response(status=self.first_status)

    async def url(self, aiohttp_server: Any) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        server = await aiohttp_server(app)
        return str(server.make_url("/hook"))


def dead_lettered(registry: CollectorRegistry, reason: str) -> float:
    """The dead-lettered counter of `reason`."""
    value = registry.get_sample_value(
        "sidecar_webhook_messages_dead_lettered_total", {"reason": reason}
    )
    return value or 0.0


async def setup(
    redis: aioredis.Redis, prefix: str, url: str, message_id: str
) -> tuple[Subscription, Outbox]:
    store = SubscriptionStore(redis, prefix)
    sub = await store.create("t_a", url, ["*"])
    outbox = Outbox(redis, prefix)
    assert await outbox.enqueue(message_id, sub.owner, sub.id, "user.created", BODY)
    return sub, outbox


async def test_a_message_lost_while_its_attempt_is_in_flight_is_dead_lettered_once(
    redis: aioredis.Redis, key_prefix: str, redis_url: str, aiohttp_server: Any
) -> None:
    receiver = Receiver(first_status=500)  # a failure: a retry would be scheduled
    sub, outbox = await setup(redis, key_prefix, await receiver.url(aiohttp_server), "msg_lost")
    registry = CollectorRegistry()
    async with worker(redis, key_prefix, redis_url, registry=registry) as w:
        await asyncio.wait_for(receiver.holding.wait(), 10)
        # Redis loses the message and its queue (a failover to a replica without the latest
        # writes, a primary restarted empty) while the receiver holds the attempt.
        await redis.delete(
            message_key(key_prefix, sub.owner, "msg_lost"),
            message_log_key(key_prefix, sub.owner, "msg_lost"),
            queue_key(key_prefix, sub.owner, sub.id),
            message_owner_key(key_prefix, "msg_lost"),
        )
        receiver.release.set()
        await until(lambda: dead_lettered(registry, "record_lost") == 1, 10, what="dead-lettered")
        await until(lambda: w.slots.in_flight == 0, 5)
        # Nothing is left to retry: no scheduled retry, no queue entry, nothing to move.
        assert await redis.zcard(due_key(key_prefix, sub.owner)) == 0
        assert await redis.xlen(queue_key(key_prefix, sub.owner, sub.id)) == 0
        assert await outbox.move_due() == 0
        # The admin API's view: a dead message that says why, with no payload to resend.
        shown = await MessageLog(redis, key_prefix, SubscriptionStore(redis, key_prefix)).message(
            None, "msg_lost"
        )
        assert shown is not None
        assert shown["state"] == "dead"
        assert shown["sub_id"] == sub.id
        assert shown["type"] == "user.created"
        assert "lost" in shown["dead_reason"]
        assert shown["created_at"][:4] != "1970"
        assert await outbox.redeliver(sub.owner, sub.id, ["msg_lost"], "manual") == {}
        assert dead_lettered(registry, "record_lost") == 1
    assert receiver.ids == ["msg_lost"]  # sent once, never again


async def test_an_incomplete_record_is_dead_lettered_not_retried(
    redis: aioredis.Redis, key_prefix: str, redis_url: str, aiohttp_server: Any
) -> None:
    receiver = Receiver(first_status=204)
    store = SubscriptionStore(redis, key_prefix)
    sub = await store.create("t_a", await receiver.url(aiohttp_server), ["*"])
    # What an earlier version left behind when a message was lost mid-attempt: the outcome's
    # fields without the message's own, and a retry of it queued.
    mkey = message_key(key_prefix, sub.owner, "msg_partial")
    await redis.hset(mkey, mapping={"state": "scheduled", "attempts": "1", "headers": "{}"})
    queue = queue_key(key_prefix, sub.owner, sub.id)
    await redis.xgroup_create(queue, DELIVERY_GROUP, id="0", mkstream=True)
    await redis.xadd(queue, {"m": "msg_partial", "n": "2", "t": "scheduled"})
    outbox = Outbox(redis, key_prefix)
    await outbox.mark_ready([(sub.owner, sub.id)])
    registry = CollectorRegistry()
    async with worker(redis, key_prefix, redis_url, registry=registry):
        await until(
            lambda: dead_lettered(registry, "record_incomplete") == 1, 10, what="dead-lettered"
        )

        async def drained() -> bool:
            return int(await redis.xlen(queue)) == 0

        await until_true(drained, 5)
        fields = await redis.hgetall(mkey)
        assert fields[b"state"] == b"dead"
        assert b"incomplete" in fields[b"dead_reason"]
    assert receiver.ids == []  # nothing to send: there is no body
    await redis.delete(mkey)


async def test_a_stale_worker_does_not_undo_a_delivery_made_after_its_claim_moved(
    redis: aioredis.Redis, key_prefix: str, redis_url: str, aiohttp_server: Any
) -> None:
    # A worker frozen mid-attempt past its claim (`claim_after`), as a SIGSTOPped replica is:
    # its attempt outlives the lease, another worker claims the entry and delivers, and then
    # the first one's failed attempt comes back.
    frozen = CONFIG.model_copy(update={"timeout": 10.0, "claim_after": 0.3})
    receiver = Receiver(first_status=500)
    sub, outbox = await setup(redis, key_prefix, await receiver.url(aiohttp_server), "msg_stale")
    log = MessageLog(redis, key_prefix, SubscriptionStore(redis, key_prefix))

    async def delivered() -> bool:
        shown = await log.message(sub.owner, "msg_stale")
        return shown is not None and shown["state"] == "delivered"

    registry = CollectorRegistry()
    async with worker(redis, key_prefix, redis_url, frozen, registry) as first:
        await asyncio.wait_for(receiver.holding.wait(), 10)
        async with worker(redis, key_prefix, redis_url, frozen):
            await until_true(delivered, 10, what="the second worker delivered")
            receiver.release.set()  # the stale attempt comes back: a 500
            await asyncio.wait_for(receiver.answered_first.wait(), 5)
            await until(lambda: first.slots.in_flight == 0, 5)
            assert await delivered()  # still delivered, not "scheduled"
            assert await redis.zcard(due_key(key_prefix, sub.owner)) == 0
            assert await outbox.move_due() == 0
            assert registry.get_sample_value("sidecar_webhook_stale_outcomes_total") == 1
    assert receiver.ids == ["msg_stale", "msg_stale"]  # the held one and the delivery only


async def test_an_outcome_a_redis_outage_keeps_back_is_one_counted_warning_then_delivered(
    aiohttp_server: Any, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    try:
        server = RedisServer(persist=True).start()  # keeps its data across the outage (AOF)
    except RedisUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    redis = aioredis.from_url(server.url)
    receiver = Receiver(first_status=204)
    try:
        sub, _outbox = await setup(
            redis, key_prefix, await receiver.url(aiohttp_server), "msg_outage"
        )
        config = CONFIG.model_copy(update={"claim_after": 1.5})
        faults: list[int] = []
        with caplog.at_level(logging.WARNING, logger="sidecar.webhooks"):
            async with worker(redis, key_prefix, server.url, config) as w:
                w.on_fault = lambda: faults.append(1)
                await asyncio.wait_for(receiver.holding.wait(), 10)
                server.stop()  # Redis goes away while the receiver holds the attempt
                receiver.release.set()
                await asyncio.wait_for(receiver.answered_first.wait(), 10)
                await until(lambda: w.recording == 0, 10, what="the attempt's end")
                kept_back = [r for r in caplog.records if "not recorded" in r.getMessage()]
                assert len(kept_back) == 1
                assert kept_back[0].levelno == logging.WARNING
                assert kept_back[0].exc_info is None
                assert faults
                server.start()  # back, with what it had: the entry is still pending
                # Taken over once its claim lapses and made again: delivered, at least once.
                await until(lambda: len(receiver.ids) >= 2, 15, what="the attempt made again")
                state = message_key(key_prefix, sub.owner, "msg_outage")
                await until_true(
                    lambda: _state_is(redis, state, b"delivered"), 10, what="delivered"
                )
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert set(receiver.ids) == {"msg_outage"}
    finally:
        await redis.aclose()
        server.close()


async def _state_is(redis: aioredis.Redis, key: str, state: bytes) -> bool:
    return bool(await redis.hget(key, "state") == state)  # type: ignore[misc]
