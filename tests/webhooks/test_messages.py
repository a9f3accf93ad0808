"""The message log on a real Redis and a real receiver: newest first, filters, cursor pages,
one message whole, what "recover" redelivers, and the operator's view across owners."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from sidecar.webhooks.keys import owner_log_key
from sidecar.webhooks.messages import MessageLog
from sidecar.webhooks.outbox import Outbox
from sidecar.webhooks.store import SubscriptionStore

from ..helpers import deliveries_settled, until_true
from .delivering import worker


async def test_the_log_pages_filters_and_shows_one_message_whole(
    redis: aioredis.Redis, key_prefix: str, redis_url: str, aiohttp_server: Any
) -> None:
    async def hook(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return web.Response(status=204 if name == "ok" else 500, text=f"answer of {name}")

    app = web.Application()
    app.router.add_post("/{name}", hook)
    server = await aiohttp_server(app)
    store = SubscriptionStore(redis, key_prefix)
    ok = await store.create("t_a", str(server.make_url("/ok")), ["*"])
    bad = await store.create("t_a", str(server.make_url("/bad")), ["*"])
    other = await store.create("t_b", str(server.make_url("/ok")), ["*"])
    outbox = Outbox(redis, key_prefix)
    for n in range(6):
        await outbox.enqueue(f"msg_ok{n}", "t_a", ok.id, "user.created", b'{"n": %d}' % n)
    await outbox.enqueue("msg_bad", "t_a", bad.id, "user.deleted", b'{"bad": true}')
    await outbox.enqueue("msg_b", "t_b", other.id, "user.created", b"{}")
    async with worker(redis, key_prefix, redis_url):  # schedule: 3 retries, then dead
        await until_true(lambda: deliveries_settled(redis, key_prefix))
    log = MessageLog(redis, key_prefix, store)

    page, cursor = await log.attempts("t_a", limit=4)
    assert len(page) == 4 and cursor is not None
    rest, end = await log.attempts("t_a", cursor=cursor, limit=50)
    assert end is None
    every = page + rest
    assert len(every) == 6 + 4  # six delivered, and four attempts of the failing one
    # Newest first: in the order the attempts were recorded, latest first.
    recorded = await redis.xrevrange(owner_log_key(key_prefix, "t_a"))
    assert [(a["message_id"], a["attempt"]) for a in every] == [
        (orjson.loads(f[b"a"])["message_id"], orjson.loads(f[b"a"])["attempt"]) for _, f in recorded
    ]
    assert {a["sub_id"] for a in every} == {ok.id, bad.id}  # never another owner's

    failed, _ = await log.attempts("t_a", status="failed")
    assert [a["attempt"] for a in failed] == [4, 3, 2, 1]
    assert {a["response_status"] for a in failed} == {500}
    succeeded, _ = await log.attempts("t_a", status="succeeded", event_type="user.created")
    assert len(succeeded) == 6
    assert await log.attempts("t_a", sub_id=other.id) == ([], None)

    one = await log.message("t_a", "msg_bad")
    assert one is not None
    assert (one["type"], one["state"], one["payload"]) == ("user.deleted", "failed", {"bad": True})
    assert one["headers"]["webhook-id"] == "msg_bad"
    assert [a["attempt"] for a in one["attempts"]] == [4, 3, 2, 1]
    assert one["attempts"][0]["response_excerpt"] == "answer of bad"
    assert await log.message("t_b", "msg_bad") is None  # another owner's: not there
    assert (await log.message(None, "msg_bad")) == one  # the operator finds it

    assert await log.failed_since("t_a", bad.id, 0) == ["msg_bad"]
    assert await log.failed_since("t_a", ok.id, 0) == []

    everyone, _ = await log.attempts(None, limit=100)
    assert len(everyone) == 11 and {a["sub_id"] for a in everyone} == {ok.id, bad.id, other.id}
