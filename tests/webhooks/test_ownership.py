"""A completion goes only to the call that owns it. An upstream (or a `correlation.pattern`) that
gives several calls one operation id cannot make one client's result another's: what a call
learns itself (its own poll) reaches its own client's webhooks only, a stream event by the shared
id reaches no client's, and the sidecar says so (metric, warning, fallback reason)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.state import HASHER
from sidecar.webhooks import WEBHOOKS

from ..conftest import FakeApiFactory, SidecarFactory
from ..fakes import Reply, reply
from ..helpers import acknowledged, enqueued, metric

INVOICES = "/v1/invoices/{cid}/status"  # the default pattern takes "status" from every one


async def receiver(aiohttp_server: Any) -> tuple[Any, asyncio.Queue[tuple[str, dict[str, Any]]]]:
    got: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await got.put((request.match_info["name"], orjson.loads(await request.read())))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{name}", hook)
    return await aiohttp_server(app), got


async def subscribe(client: TestClient, credential: str | None, url: str) -> None:
    tenant = "operator" if credential is None else await client.app[HASHER].tenant(credential)
    assert tenant is not None
    await client.app[WEBHOOKS].store.create(tenant, url, ["*"])


def sidecar_settings(redis_url: str, key_prefix: str, wait: dict[str, Any]) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        "stream_reader": {"block": "50ms"},
        "webhooks": {"allow_private_targets": True, "schedule": ["50ms"], "timeout": "2s"},
        "routes": [
            {
                "name": "invoice",
                "method": "POST",
                "path": "/v1/invoices",
                "budget": "100ms",
                "correlation": {"source": "location"},
                "wait": wait,
            }
        ],
    }


async def test_a_poll_completion_reaches_only_its_own_callers_webhooks(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    aiohttp_server: Any,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: set[str] = set()

    def status(cid: str) -> Reply:
        if cid in done:
            return reply(200, {"invoice": cid})
        return reply(202, {"state": "pending"})

    api = await fake_api(
        accept="POST /v1/invoices", location=INVOICES, status=INVOICES, replies=status
    )
    poll = {"interval": "20ms", "max_interval": "40ms", "track_for": "10s"}
    client = await start_sidecar(api, **sidecar_settings(redis_url, key_prefix, {"poll": poll}))
    hooks, got = await receiver(aiohttp_server)
    await subscribe(client, "Bearer key-a", str(hooks.make_url("/a")))
    await subscribe(client, "Bearer key-b", str(hooks.make_url("/b")))
    with caplog.at_level(logging.WARNING, logger="sidecar.sync.track"):
        for cid, key in (("c-a", "key-a"), ("c-b", "key-b")):
            resp = await client.post(
                "/v1/invoices",
                json={},
                headers={"Authorization": f"Bearer {key}", "X-Correlation-ID": cid},
            )
            assert resp.status == 202
            assert resp.headers["X-Correlation-ID"] == cid
            done.add(cid)
        deliveries = dict([await asyncio.wait_for(got.get(), 10) for _ in range(2)])
    # Each client got its own invoice, under its own identity and Location; never the other's.
    assert deliveries["a"]["data"] == {"invoice": "c-a"}
    assert deliveries["b"]["data"] == {"invoice": "c-b"}
    assert deliveries["b"]["correlation_id"] == "c-b"
    assert deliveries["b"]["location"].endswith("/v1/invoices/c-b/status")
    assert (deliveries["a"]["operation_id"], deliveries["b"]["operation_id"]) == ("status",) * 2
    # Said loudly: the second call found its operation id held by the first.
    assert metric(client, "sidecar_ambiguous_operation_ids_total", route="invoice") == 1
    said = [r for r in caplog.records if "several calls wait on one operation id" in r.message]
    assert len(said) == 1 and said[0].__dict__["route"] == "invoice"
    assert got.empty()
    assert sorted(m["sub"] for m in await enqueued(redis, key_prefix)) != []  # sanity: recorded


async def test_a_stream_event_by_an_id_several_calls_hold_reaches_no_clients_webhooks(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    aiohttp_server: Any,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> None:
    api = await fake_api(accept="POST /v1/invoices", location=INVOICES)
    stream = f"{key_prefix}:invoices"
    wait = {"stream": {"key": stream, "success": ["Paid"]}}
    client = await start_sidecar(api, **sidecar_settings(redis_url, key_prefix, wait))
    hooks, got = await receiver(aiohttp_server)
    await subscribe(client, "Bearer key-a", str(hooks.make_url("/a")))
    await subscribe(client, "Bearer key-b", str(hooks.make_url("/b")))
    await subscribe(client, None, str(hooks.make_url("/op")))
    first = await client.post(
        "/v1/invoices",
        json={},
        headers={"Authorization": "Bearer key-a", "Prefer": "respond-async"},
    )
    assert first.status == 202
    # The second call would wait on the first one's id: it takes nothing by it, and says why.
    second = await client.post("/v1/invoices", json={}, headers={"Authorization": "Bearer key-b"})
    assert second.status == 202
    assert metric(client, "sidecar_fallbacks_total", route="invoice", reason="ambiguous_id") == 1
    fields = {"correlation_id": "status", "type": "Paid", "payload": '{"invoice": "?"}'}
    await redis.xadd(stream, fields)  # type: ignore[arg-type]
    name, body = await asyncio.wait_for(got.get(), 10)
    await acknowledged(redis, stream, f"{key_prefix}:webhooks")
    # Whose invoice is it? Neither client's: only the operator's subscription hears of it.
    assert (name, body["correlation_id"], body["location"]) == ("op", "status", None)
    assert {m["sub"] for m in await enqueued(redis, key_prefix)} == {
        s.id for s in await client.app[WEBHOOKS].store.list_for(["operator"])
    }
