"""Fair delivery: one tenant's dead, slow or backlogged endpoints never delay another tenant's
webhooks; an endpoint failing for too long is disabled."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.routing import RUNTIME
from sidecar.state import HASHER
from sidecar.webhooks import WEBHOOKS
from sidecar.webhooks.outbox import Message

from ..conftest import FakeApiFactory, SidecarFactory
from ..helpers import metric, until, until_true

A, B = "Bearer key-a", "Bearer key-b"


@dataclass
class Receivers:
    """`/hang/*` never answers (until released); `/slow/*` answers after 50 ms; `/fast/*` at
    once; `/fail/*` answers 500. Every arrival is timed."""

    server: TestServer
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    hanging: int = 0
    most_hanging: int = 0

    def url(self, kind: str, name: str) -> str:
        return str(self.server.make_url(f"/{kind}/{name}"))

    def got(self, name: str) -> int:
        return len(self.arrivals.get(name, []))


@pytest.fixture
async def receivers(aiohttp_server: Any) -> AsyncIterator[Receivers]:
    box: list[Receivers] = []

    async def hook(request: web.Request) -> web.Response:
        rec = box[0]
        kind, name = request.match_info["kind"], request.match_info["name"]
        rec.arrivals.setdefault(name, []).append(time.monotonic())
        await request.read()
        if kind == "hang":
            rec.hanging += 1
            rec.most_hanging = max(rec.most_hanging, rec.hanging)
            try:
                await rec.release.wait()
            finally:
                rec.hanging -= 1
        elif kind == "slow":
            await asyncio.sleep(0.05)
        elif kind == "fail":
            return web.Response(status=500)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{kind}/{name}", hook)
    box.append(Receivers(await aiohttp_server(app)))
    yield box[0]
    box[0].release.set()


Start = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def start(
    fake_api: FakeApiFactory, start_sidecar: SidecarFactory, redis_url: str, key_prefix: str
) -> Start:
    async def go(**webhooks: Any) -> TestClient:
        stream = f"{key_prefix}:jobs.events"
        client = await start_sidecar(
            await fake_api(accept="POST /jobs", location="/jobs/{cid}", accepted={}),
            redis_url=redis_url,
            key_prefix=key_prefix,
            stream_reader={"block": "50ms"},
            routes=[
                {
                    "name": "jobs",
                    "method": "POST",
                    "path": "/jobs",
                    "wait": {"stream": {"key": stream, "success": ["Done"]}},
                    "webhook_events": {"success": "job.done"},
                }
            ],
            webhooks={"allow_private_targets": True, **webhooks},
        )
        return client

    return go


async def tenant(client: TestClient, credential: str) -> str:
    owner = await client.app[HASHER].tenant(credential)
    assert owner is not None
    return owner


async def backlog(client: TestClient, owner: str, sub_ids: list[str], count: int) -> None:
    """`count` messages for `owner`'s subscriptions, round-robin, enqueued as fan-out would."""
    outbox = client.app[WEBHOOKS].outbox
    now = int(time.time() * 1000)
    messages = [
        Message(f"msg_bulk{n:08d}", owner, sub_ids[n % len(sub_ids)], "job.done", b"{}", now)
        for n in range(count)
    ]
    for start in range(0, count, 5000):
        await outbox.enqueue_many(messages[start : start + 5000])


async def complete_as(
    client: TestClient, redis: aioredis.Redis, credential: str, cid: str
) -> float:
    """A real call of `credential`'s (answered 202 at once), then its completion event; the
    time the event was published."""
    resp = await client.post(
        "/jobs",
        headers={"Authorization": credential, "X-Correlation-ID": cid, "Prefer": "respond-async"},
    )
    assert resp.status == 202
    spec = client.app[RUNTIME].settings.routes[0].wait
    assert spec is not None and spec.stream is not None
    stream = spec.stream.key
    published = time.monotonic()
    await redis.xadd(stream, {"correlation_id": cid, "type": "Done", "payload": "{}"})
    return published


async def test_one_tenants_dead_endpoints_do_not_delay_anothers_webhooks(
    start: Start, receivers: Receivers, redis: aioredis.Redis
) -> None:
    client = await start(timeout="1s", schedule=["1s"], concurrency=32)
    store = client.app[WEBHOOKS].store
    owner_a = await tenant(client, A)
    dead = [await store.create(owner_a, receivers.url("hang", f"a{n}"), ["*"]) for n in range(20)]
    await backlog(client, owner_a, [s.id for s in dead], 2000)
    await until(lambda: receivers.hanging >= 16, timeout_s=10)  # tenant a's share is taken
    await store.create(await tenant(client, B), receivers.url("fast", "b"), ["*"])
    published = [await complete_as(client, redis, B, f"b-{n}") for n in range(5)]
    await until(lambda: receivers.got("b") == 5, timeout_s=10)
    delays = [got - sent for got, sent in zip(receivers.arrivals["b"], published, strict=True)]
    assert max(delays) < 3.0, delays
    # Tenant a never held more than its share of the process's 32 delivery slots.
    assert receivers.most_hanging <= 16


async def test_a_backlog_of_one_tenant_does_not_delay_a_new_tenants_first_webhook(
    start: Start, receivers: Receivers, redis: aioredis.Redis
) -> None:
    client = await start(timeout="2s")
    store = client.app[WEBHOOKS].store
    owner_a = await tenant(client, A)
    busy = await store.create(owner_a, receivers.url("slow", "a"), ["*"])
    await backlog(client, owner_a, [busy.id], 20_000)  # ~250 s of work for that endpoint
    await until(lambda: receivers.got("a") >= 4)
    await store.create(await tenant(client, B), receivers.url("fast", "b"), ["*"])
    sent = await complete_as(client, redis, B, "b-first")
    await until(lambda: receivers.got("b") == 1, timeout_s=10)
    assert receivers.arrivals["b"][0] - sent < 3.0
    assert receivers.got("a") < 2000  # the backlog was still there


async def test_an_endpoint_failing_for_too_long_is_disabled(
    start: Start, receivers: Receivers, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client = await start(disable_after="300ms", schedule=["50ms"] * 20, timeout="1s")
    runtime = client.app[WEBHOOKS]
    owner_a = await tenant(client, A)
    failing = await runtime.store.create(owner_a, receivers.url("fail", "a"), ["*"])
    healthy = await runtime.store.create(owner_a, receivers.url("fast", "h"), ["*"])
    await complete_as(client, redis, A, "a-1")

    async def disabled() -> bool:
        sub = await runtime.store.get(failing.id)
        return sub is not None and not sub.enabled

    await until_true(disabled, timeout_s=10, what="the failing subscription disabled")
    sub = await runtime.store.get(failing.id)
    assert sub is not None and sub.disabled_reason == "failing"
    assert sub.public()["disabled_reason"] == "failing"
    assert metric(client, "sidecar_webhook_subscriptions_disabled_total", reason="failing") == 1
    warned = [r for r in caplog.records if r.getMessage() == "webhook subscription disabled"]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    # It failed from its first attempt on, for at least disable_after.
    assert receivers.arrivals["a"][-1] - receivers.arrivals["a"][0] >= 0.25
    still = await runtime.store.get(healthy.id)
    assert still is not None and still.enabled and not still.failing_since


async def test_a_success_ends_the_failing_streak(
    start: Start, aiohttp_server: Any, redis: aioredis.Redis
) -> None:
    answers = iter([500, 500, 204])

    async def flaky(request: web.Request) -> web.Response:
        return web.Response(status=next(answers, 204))

    app = web.Application()
    app.router.add_post("/flaky", flaky)
    server = await aiohttp_server(app)
    client = await start(disable_after="1h", schedule=["50ms"] * 5)
    runtime = client.app[WEBHOOKS]
    sub = await runtime.store.create(await tenant(client, A), str(server.make_url("/flaky")), ["*"])
    await complete_as(client, redis, A, "a-2")

    async def attempts() -> list[dict[str, Any]]:
        key = f"{runtime.prefix}:wh:{{{sub.owner}}}:attempts:{sub.id}"
        return [orjson.loads(x) for x in await redis.lrange(key, 0, -1)]  # type: ignore[misc]

    async def three_attempts() -> bool:
        return len(await attempts()) >= 3

    await until_true(three_attempts, timeout_s=10, what="three attempts logged")
    after = await runtime.store.get(sub.id)
    assert after is not None and after.enabled and after.failing_since == 0.0
