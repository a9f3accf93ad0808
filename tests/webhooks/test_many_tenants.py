"""Many tenants cost the others nothing: fan-out reads the subscriptions of the owners a
completion concerns (its caller's and the operator's), never every subscription; the operator's
views read one index, a page at a time, however many owners there are."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from devtools.redis_server import RedisServer
from sidecar.state import HASHER
from sidecar.webhooks import WEBHOOKS

from ..admin_support import OP, Admin
from ..conftest import FakeApiFactory, SidecarFactory, StartAdmin

TENANTS = 400


async def hgetalls(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def test_a_completion_reads_only_its_callers_and_the_operators_subscriptions(
    own_redis: RedisServer,
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    aiohttp_server: Any,
) -> None:
    got: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await got.put((request.match_info["name"], orjson.loads(await request.read())))
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/{name}", hook)
    hooks = await aiohttp_server(receiver)
    api = await fake_api(accept="POST /jobs")
    stream = "jobs.events"
    client = await start_sidecar(
        api,
        redis_url=own_redis.url,
        stream_reader={"block": "50ms"},
        webhooks={"allow_private_targets": True, "schedule": ["50ms"], "timeout": "2s"},
        routes=[
            {
                "name": "job",
                "method": "POST",
                "path": "/jobs",
                "wait": {"stream": {"key": stream, "success": ["Done"]}},
            }
        ],
    )
    store = client.app[WEBHOOKS].store
    for n in range(TENANTS):  # tenants nobody will call for
        await store.create(f"t_{n:040x}", str(hooks.make_url(f"/other-{n}")), ["*"])
    mine = await client.app[HASHER].tenant("Bearer mine")
    assert mine is not None
    await store.create(mine, str(hooks.make_url("/mine")), ["*"])
    redis = aioredis.Redis.from_url(own_redis.url)
    try:
        resp = await client.post(
            "/jobs",
            json={},
            headers={"Authorization": "Bearer mine", "Prefer": "respond-async"},
        )
        assert resp.status == 202
        before = await hgetalls(redis)
        cid = resp.headers["X-Correlation-ID"]
        await redis.xadd(stream, {"correlation_id": cid, "type": "Done", "payload": "{}"})
        name, body = await asyncio.wait_for(got.get(), 10)
        assert (name, body["correlation_id"]) == ("mine", cid)
        read = await hgetalls(redis) - before
    finally:
        await redis.aclose()
    # The call's record, its caller's one subscription, the message: a handful, not 400+.
    assert read < 20, read
    assert got.empty()


async def test_the_operator_pages_through_every_clients_subscriptions(
    start_admin: StartAdmin,
) -> None:
    admin: Admin = await start_admin(webhooks={"allow_private_targets": True})
    store = admin.app[WEBHOOKS].store
    made = [
        (await store.create(f"t_{n:040x}", f"http://127.0.0.1:9/{n}", ["*"])).id for n in range(45)
    ]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = f"?limit=20&cursor={cursor}" if cursor else "?limit=20"
        page = await admin.call("GET", f"/subscriptions{query}", OP)
        assert page.status == 200
        assert len(page.body["subscriptions"]) <= 20
        seen += [s["id"] for s in page.body["subscriptions"]]
        pages += 1
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
    assert (pages, seen) == (3, made)  # oldest first, each once
    bad = await admin.call("GET", "/subscriptions?cursor=--1:x", OP)
    assert bad.status == 422
