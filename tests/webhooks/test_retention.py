"""`webhooks.retention` (sidecar/webhooks/retention.py, the outbox's TTL): with a short retention,
messages expire and every attempt log is trimmed by age, in Redis and so in the admin API."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from sidecar.metrics import METRICS
from sidecar.webhooks import WEBHOOKS

from ..admin_support import OP, A, StartAdmin
from ..helpers import until_true

ROUTE = {
    "name": "create-user",
    "method": "POST",
    "path": "/api/users",
    "wait": {"poll": {}},
    "webhook_events": {"success": "user.created"},
}


async def test_a_short_retention_expires_messages_and_trims_every_log(
    start_admin: StartAdmin, aiohttp_server: Any, redis: aioredis.Redis, key_prefix: str
) -> None:
    async def hook(request: web.Request) -> web.Response:
        return web.Response(status=204 if request.match_info["kind"] == "ok" else 500)

    app = web.Application()
    app.router.add_post("/{kind}", hook)
    server = await aiohttp_server(app)
    admin = await start_admin(
        routes=[ROUTE],
        webhooks={
            "allow_private_targets": True,
            "schedule": ["20ms"],  # a failing message is dead after its second attempt
            "retention": {"messages": "1s", "attempts": "1s"},
        },
    )
    runtime = admin.app[WEBHOOKS]
    good = await admin.create(A, str(server.make_url("/ok")))
    bad = await admin.create(A, str(server.make_url("/bad")))
    sub = await runtime.store.get(good["id"])
    assert sub is not None
    owner = sub.owner
    for mid, sub_id in (("msg_kept_ok", good["id"]), ("msg_kept_bad", bad["id"])):
        await runtime.outbox.enqueue(mid, owner, sub_id, "user.created", b'{"n": 1}')
    every = await admin.attempts_until(A, lambda a: len(a) == 3)  # delivered; failed twice
    assert sorted(a["result"] for a in every) == ["dead", "delivered", "retry"]
    assert (await admin.call("GET", "/messages/msg_kept_ok", A)).status == 200
    assert await redis.xlen(f"{key_prefix}:wh:dead") == 1

    prefix = f"{key_prefix}:wh"
    streams = [f"{prefix}:{{{owner}}}:log", f"{prefix}:log", f"{prefix}:dead"]
    lists = [f"{prefix}:{{{owner}}}:attempts:{s['id']}" for s in (good, bad)]
    kept = [
        f"{prefix}:{{{owner}}}:msg:{mid}{tail}"
        for mid in ("msg_kept_ok", "msg_kept_bad")
        for tail in ("", ":log")
    ] + [f"{prefix}:owner-of:msg_kept_ok"]

    async def all_gone() -> bool:
        lengths = [await redis.xlen(k) for k in streams]
        lengths += [await redis.llen(k) for k in lists]  # type: ignore[misc]
        return not any(lengths) and not await redis.exists(*kept)

    await until_true(all_gone, timeout_s=10, what="messages expired and logs trimmed")
    for who in (A, OP):
        answer = await admin.call("GET", "/messages", who)
        assert (answer.status, answer.body["attempts"]) == (200, [])
    assert (await admin.call("GET", "/messages/msg_kept_ok", A)).status == 404
    attempts = await admin.call("GET", f"/subscriptions/{bad['id']}/attempts", A)
    assert (attempts.status, attempts.body["attempts"]) == (200, [])
    # Counted, by log (every replica trims; this one did all of it).
    registry = admin.app[METRICS].registry

    def trimmed(log: str) -> float:
        name = "sidecar_webhook_log_entries_trimmed_total"
        return registry.get_sample_value(name, {"log": log}) or 0.0

    assert (trimmed("owner"), trimmed("all"), trimmed("subscription"), trimmed("dead")) == (
        3,
        3,
        3,
        1,
    )
