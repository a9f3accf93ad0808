"""Tracking writes that survive a Redis outage (sidecar/sync/backlog.py): a call answered while
Redis is down is tracked once Redis is back, so its completion reaches its client's webhooks;
the backlog is bounded, counted and said."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devtools.redis_server import RedisServer
from sidecar.state import HASHER
from sidecar.webhooks import WEBHOOKS

from ..conftest import FakeApiFactory, SidecarFactory
from ..helpers import metric, until

CLIENT = "Bearer key-a"


@pytest.fixture
async def hooks(aiohttp_server: Any) -> tuple[TestServer, dict[str, list[dict[str, Any]]]]:
    """A webhook receiver: what arrived at `/{name}`, as JSON payloads."""
    arrived: dict[str, list[dict[str, Any]]] = {}

    async def hook(request: web.Request) -> web.Response:
        payload = orjson.loads(await request.read())
        arrived.setdefault(request.match_info["name"], []).append(payload)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{name}", hook)
    return await aiohttp_server(app), arrived


async def start(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    url: str,
    key_prefix: str,
    **overrides: Any,
) -> TestClient:
    return await start_sidecar(
        await fake_api(accept="POST /jobs", location="/jobs/{cid}", accepted={}),
        redis_url=url,
        key_prefix=key_prefix,
        stream_reader={"block": "50ms"},
        routes=[
            {
                "name": "jobs",
                "method": "POST",
                "path": "/jobs",
                "wait": {"stream": {"key": f"{key_prefix}:jobs.events", "success": ["Done"]}},
                "webhook_events": {"success": "job.done"},
            }
        ],
        webhooks={"allow_private_targets": True, "schedule": ["100ms"]},
        **overrides,
    )


async def test_a_call_made_while_redis_is_down_reaches_its_clients_webhook(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    kept_redis: RedisServer,
    key_prefix: str,
    hooks: tuple[TestServer, dict[str, list[dict[str, Any]]]],
) -> None:
    receiver, arrived = hooks
    client = await start(fake_api, start_sidecar, kept_redis.url, key_prefix)
    tenant = await client.app[HASHER].tenant(CLIENT)
    assert tenant is not None
    store = client.app[WEBHOOKS].store
    await store.create(tenant, str(receiver.make_url("/client")), ["job.done"])
    await store.create("operator", str(receiver.make_url("/operator")), ["job.done"])

    await asyncio.to_thread(kept_redis.stop)
    await until(lambda: metric(client, "sidecar_redis_up") == 0)
    resp = await client.post(
        "/jobs",
        headers={"Authorization": CLIENT, "X-Correlation-ID": "c-1", "Prefer": "respond-async"},
    )
    assert resp.status == 202  # served while Redis is away
    cid = resp.headers["X-Correlation-ID"]
    assert metric(client, "sidecar_tracking_backlog_total", outcome="kept") == 1
    assert metric(client, "sidecar_tracking_backlog_size") == 1

    await asyncio.to_thread(kept_redis.start)
    await until(lambda: metric(client, "sidecar_tracking_backlog_size") == 0, timeout_s=10)
    redis: aioredis.Redis = aioredis.Redis.from_url(kept_redis.url)
    try:
        await redis.xadd(f"{key_prefix}:jobs.events", {"correlation_id": cid, "type": "Done"})
    finally:
        await redis.aclose()

    await until(lambda: len(arrived.get("client", [])) == 1, timeout_s=15)
    assert arrived["client"][0]["correlation_id"] == cid
    await until(lambda: len(arrived.get("operator", [])) == 1)
    assert metric(client, "sidecar_tracking_backlog_total", outcome="written") == 1
    assert metric(client, "sidecar_tracking_backlog_total", outcome="dropped") == 0
    assert metric(client, "sidecar_redis_faults_total", where="tracking") >= 1
    assert metric(client, "sidecar_redis_faults_total", where="webhook_loop") >= 1
    assert metric(client, "sidecar_redis_faults_total", where="completion_reader") >= 1


async def test_the_backlog_is_bounded_and_says_what_it_dropped(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    own_redis: RedisServer,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await start(
        fake_api,
        start_sidecar,
        own_redis.url,
        key_prefix,
        tracking_backlog={"max_calls": 2, "max_age": "1h"},
    )
    await client.app[HASHER].tenant(CLIENT)
    await asyncio.to_thread(own_redis.stop)
    await until(lambda: metric(client, "sidecar_redis_up") == 0)
    for _ in range(3):
        resp = await client.post(
            "/jobs",
            headers={"Authorization": CLIENT, "Prefer": "respond-async"},
        )
        assert resp.status == 202
    assert metric(client, "sidecar_tracking_backlog_size") == 2
    assert metric(client, "sidecar_tracking_backlog_dropped_total", reason="full") == 1
    dropped = [r for r in caplog.records if r.getMessage().startswith("tracking record dropped")]
    assert len(dropped) == 1 and getattr(dropped[0], "reason", None) == "full"

    await asyncio.to_thread(own_redis.start)
    await until(lambda: metric(client, "sidecar_tracking_backlog_size") == 0, timeout_s=10)
    assert metric(client, "sidecar_tracking_backlog_total", outcome="written") == 2


async def test_a_record_kept_longer_than_its_max_age_is_dropped(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    own_redis: RedisServer,
    key_prefix: str,
) -> None:
    client = await start(
        fake_api,
        start_sidecar,
        own_redis.url,
        key_prefix,
        tracking_backlog={"max_age": "200ms"},
    )
    await client.app[HASHER].tenant(CLIENT)
    await asyncio.to_thread(own_redis.stop)
    await until(lambda: metric(client, "sidecar_redis_up") == 0)
    resp = await client.post("/jobs", headers={"Authorization": CLIENT, "Prefer": "respond-async"})
    assert resp.status == 202
    assert metric(client, "sidecar_tracking_backlog_size") == 1
    dropped = {"reason": "expired"}
    await until(lambda: metric(client, "sidecar_tracking_backlog_dropped_total", **dropped) == 1)
    assert metric(client, "sidecar_tracking_backlog_size") == 0
