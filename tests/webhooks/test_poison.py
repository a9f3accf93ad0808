"""One poison completion never stops the line: data nested deeper than anything can write again
(orjson reads 1,024 levels, writes 255) is malformed at intake. The webhooks' read sets it
aside on its own (recorded, counted, acknowledged, never retried) and goes on with the rest;
a held call takes neither a 500 nor the poison as its answer."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from sidecar.state import HASHER, HUB
from sidecar.webhooks import WEBHOOKS

from ..conftest import FakeApiFactory, SidecarFactory
from ..helpers import acknowledged, metric, until

POISON = "[" * 300 + "]" * 300  # reads fine; cannot be written again


async def test_a_poison_completion_is_set_aside_and_the_rest_delivered(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    aiohttp_server: Any,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> None:
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await got.put(orjson.loads(await request.read()))
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    hooks = await aiohttp_server(receiver)
    stream = f"{key_prefix}:jobs"
    client = await start_sidecar(
        await fake_api(accept="POST /jobs"),
        redis_url=redis_url,
        key_prefix=key_prefix,
        stream_reader={"block": "50ms"},
        webhooks={"allow_private_targets": True, "schedule": ["50ms"], "timeout": "2s"},
        routes=[
            {
                "name": "job",
                "method": "POST",
                "path": "/jobs",
                "budget": "300ms",
                "wait": {"stream": {"key": stream, "success": ["Done"], "failure": ["Failed"]}},
            }
        ],
    )
    tenant = await client.app[HASHER].tenant("Bearer key-a")
    assert tenant is not None
    await client.app[WEBHOOKS].store.create(tenant, str(hooks.make_url("/hook")), ["*"])

    async def call() -> tuple[int, str]:
        resp = await client.post(
            "/jobs", json={}, headers={"Authorization": "Bearer key-a", "Prefer": "respond-async"}
        )
        assert resp.status == 202
        return resp.status, resp.headers["X-Correlation-ID"]

    _, poisoned = await call()
    good = [(await call())[1] for _ in range(5)]
    await redis.xadd(stream, {"correlation_id": poisoned, "type": "Failed", "payload": POISON})
    for cid in good:
        await redis.xadd(stream, {"correlation_id": cid, "type": "Done", "payload": '{"ok": 1}'})
    delivered = [await asyncio.wait_for(got.get(), 10) for _ in good]
    assert sorted(body["correlation_id"] for body in delivered) == sorted(good)
    await acknowledged(redis, stream, f"{key_prefix}:webhooks")  # nothing left pending
    [(_id, dead)] = await redis.xrange(f"{key_prefix}:wh:dead-completions")
    assert dead[b"reason"] == b"malformed"
    assert dead[b"detail"] == b"data nested deeper than 128 levels"
    assert client.app[WEBHOOKS].metrics.dead_completions.labels("malformed")._value.get() == 1
    assert metric(client, "sidecar_stream_events_total", stream=stream, result="malformed") == 1
    assert got.empty()


async def test_a_held_call_takes_no_poison_as_its_answer(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> None:
    stream = f"{key_prefix}:jobs"
    client = await start_sidecar(
        await fake_api(accept="POST /jobs"),
        redis_url=redis_url,
        key_prefix=key_prefix,
        stream_reader={"block": "50ms"},
        routes=[
            {
                "name": "job",
                "method": "POST",
                "path": "/jobs",
                "budget": "500ms",
                "wait": {"stream": {"key": stream, "success": ["Done"], "failure": ["Failed"]}},
            }
        ],
    )
    hub = client.app[HUB]
    assert hub is not None
    for kind in ("Failed", "Done"):
        cid = f"poisoned-{kind}"
        task = asyncio.ensure_future(
            client.post("/jobs", json={}, headers={"X-Correlation-ID": cid})
        )
        await until(lambda: hub.waiting == 1)  # held, its waiter registered before forwarding
        await redis.xadd(stream, {"correlation_id": cid, "type": kind, "payload": POISON})
        resp = await task
        assert resp.status == 202, await resp.text()  # the budget's fallback, never a 500
        assert resp.headers["X-Correlation-ID"] == cid
    malformed = metric(client, "sidecar_stream_events_total", stream=stream, result="malformed")
    assert malformed == 2
