"""The real sidecar app: a stream completion of a tracked call is delivered, signed, per tenant."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from sidecar.tracking import CallTracker, TrackedCall
from sidecar.webhooks import WEBHOOKS
from sidecar.webhooks.keys import dispatch_group

from ..helpers import enqueued, pending, until_true

ROUTE = {
    "name": "create-user",
    "method": "POST",
    "path": "/api/users",
    "wait": {"stream": {"key": "", "success": ["UserCreated"], "failure": ["UserNotCreated"]}},
    "webhook_events": {"success": "user.created", "failure": "user.creation_failed"},
}


async def test_stream_completion_fans_out_to_its_tenant_and_the_operator(
    redis: aioredis.Redis, redis_url: str, key_prefix: str, start_sidecar: Any, aiohttp_server: Any
) -> None:
    got: asyncio.Queue[tuple[str, dict[str, str], bytes]] = asyncio.Queue()

    def hook(name: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            await got.put((name, dict(request.headers), await request.read()))
            return web.Response(status=200)

        return handler

    receiver = web.Application()
    for name in ("a", "b", "op"):
        receiver.router.add_post(f"/{name}", hook(name))
    server = await aiohttp_server(receiver)
    stream = f"{key_prefix}:users.events"
    route = {**ROUTE, "wait": {"stream": {**ROUTE["wait"]["stream"], "key": stream}}}  # type: ignore[index]
    client = await start_sidecar(
        "http://127.0.0.1:9",
        redis_url=redis_url,
        key_prefix=key_prefix,
        routes=[route],
        webhooks={"allow_private_targets": True, "schedule": ["50ms", "100ms"], "timeout": "1s"},
    )
    runtime = client.app[WEBHOOKS]
    sub_a = await runtime.store.create("t_a", str(server.make_url("/a")), ["user.created"])
    await runtime.store.create("t_b", str(server.make_url("/b")), ["*"])
    op = await runtime.store.create("operator", str(server.make_url("/op")), ["*"])
    await redis.xadd(
        stream, {"correlation_id": "c-1", "type": "UserCreated", "payload": '{"id":7}'}
    )
    # The event beats the 202: the dispatcher has read it (and holds it) before the call is
    # recorded.

    async def held() -> bool:
        return await pending(redis, stream, dispatch_group(key_prefix)) == 1

    await until_true(held, what="the completion read by the dispatcher")
    await CallTracker(redis, key_prefix, 60).record(
        TrackedCall(
            "c-1", "create-user", "t_a", "/api/users/7/status", None, created_at=time.time()
        )
    )
    first = await asyncio.wait_for(got.get(), 10)
    second = await asyncio.wait_for(got.get(), 10)
    deliveries = {first[0]: first, second[0]: second}
    assert set(deliveries) == {"a", "op"}
    _, headers, body = deliveries["a"]
    Webhook(sub_a.secret).verify(body, headers)
    Webhook(op.secret).verify(deliveries["op"][2], deliveries["op"][1])
    assert orjson.loads(body) == {
        "type": "user.created",
        "timestamp": orjson.loads(body)["timestamp"],
        "data": {"id": 7},
        "correlation_id": "c-1",
        "operation_id": None,
        "route": "create-user",
        "location": "/api/users/7/status",
        "status": "succeeded",
    }
    # Tenant b never receives tenant a's completion: fan-out made exactly these two messages.
    subs = {m["sub"] for m in await enqueued(redis, key_prefix)}
    assert subs == {sub_a.id, op.id}
    assert got.empty()
