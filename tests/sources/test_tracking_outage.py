"""A call made while Redis is away, whose completion comes from a broker (NATS JetStream) while
Redis is still away, reaches its client's webhook once Redis is back: its tracking record is
kept and written late (sidecar/sync/backlog.py), and the webhook dispatcher holds the completion
until then."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from devtools.redis_server import RedisServer
from sidecar.state import HASHER
from sidecar.webhooks import WEBHOOKS
from sidecar.webhooks.handoff import UNTRACKED_GRACE_S

from ..conftest import SidecarFactory, Upstream
from ..helpers import metric, until
from . import support
from .support import OK, SOURCE, Broker

CLIENT = "Bearer key-a"


async def test_a_broker_completion_of_a_call_made_during_a_redis_outage_reaches_its_client(
    nats: Broker,
    kept_redis: RedisServer,
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    key_prefix: str,
    aiohttp_server: Any,
) -> None:
    arrived: dict[str, list[dict[str, Any]]] = {}

    async def hook(request: web.Request) -> web.Response:
        payload = orjson.loads(await request.read())
        arrived.setdefault(request.match_info["name"], []).append(payload)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{name}", hook)
    receiver: TestServer = await aiohttp_server(app)
    env = await support.start_env(
        nats,
        start_upstream,
        start_sidecar,
        kept_redis.url,
        key_prefix,
        webhooks={"allow_private_targets": True, "schedule": ["100ms"]},
    )
    client = env.client
    tenant = await client.app[HASHER].tenant(CLIENT)
    assert tenant is not None
    store = client.app[WEBHOOKS].store
    await store.create(tenant, str(receiver.make_url("/client")), ["order.placed"])
    await store.create("operator", str(receiver.make_url("/operator")), ["order.placed"])

    await asyncio.to_thread(kept_redis.stop)
    await until(lambda: metric(client, "sidecar_redis_up") == 0)
    resp = await env.order("o-1", headers={"Authorization": CLIENT, "Prefer": "respond-async"})
    assert resp.status == 202
    cid = resp.headers["X-Correlation-ID"]  # minted: the client's could not be claimed
    await nats.publish(cid, OK, {"order": cid})
    held = {"source": SOURCE}
    await until(lambda: metric(client, "sidecar_webhook_completions_held", **held) == 1)
    await asyncio.sleep(UNTRACKED_GRACE_S + 0.5)  # the outage outlasts the dispatcher's grace
    await asyncio.to_thread(kept_redis.start)

    await until(lambda: len(arrived.get("client", [])) == 1, timeout_s=20)
    assert arrived["client"][0]["correlation_id"] == cid
    await until(lambda: len(arrived.get("operator", [])) == 1)
    assert metric(client, "sidecar_tracking_backlog_total", outcome="written") == 1
