"""What the operations tests share: an orders API (202, with or without a Location, completed
on a Redis stream when the test says), and the sidecars in front of it on one Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.state import HUB

from .conftest import SidecarFactory, Upstream

DONE, FAILED = "Order::Placed", "Order::Rejected"
A, B = "Bearer key-a", "Bearer key-b"


@dataclass
class OrdersApi:
    """`POST /orders` answers 202 (with `Location: /orders/{id}` unless `location` is off, and
    the id in the body), or `status` when set; `GET /orders/{id}` says pending until the test
    completes the order. Every command is counted in `calls`; `gate`, when set, holds the
    answer until the test opens it."""

    redis: aioredis.Redis
    stream: str
    location: bool = True
    status: int | None = None
    answer_body: bytes = b'{"error": "try later"}'
    gate: asyncio.Event | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, Any] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        async def create(request: web.Request) -> web.Response:
            cid = request.headers["X-Correlation-ID"]
            self.calls.append({"cid": cid, "body": await request.read()})
            self.arrived.set()
            if self.gate is not None:
                await self.gate.wait()
            if self.status is not None:
                return web.Response(
                    status=self.status, body=self.answer_body, content_type="application/json"
                )
            headers = {"Location": f"/orders/{cid}"} if self.location else {}
            return web.json_response({"id": cid}, status=202, headers=headers)

        async def status(request: web.Request) -> web.Response:
            found = self.done.get(request.match_info["id"])
            if found is None:
                return web.json_response({"state": "pending"}, status=202)
            return web.json_response(found)

        app = web.Application()
        app.router.add_post("/orders", create)
        app.router.add_get("/orders/{id}", status)
        return app

    async def complete(self, cid: str, data: Any, ok: bool = True) -> None:
        """The backend publishes the order's completion (and its status answers done)."""
        self.done[cid] = data
        fields = {"correlation_id": cid, "type": DONE if ok else FAILED}
        fields["payload"] = orjson.dumps(data).decode()
        await self.redis.xadd(self.stream, fields)  # type: ignore[arg-type]


def order_route(stream: str, **overrides: Any) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": "place-order",
        "method": "POST",
        "path": "/orders",
        "budget": "5s",
        "wait": {"stream": {"key": stream, "success": [DONE], "failure": [FAILED]}},
        "respond": {"retry_after": "1s"},
        "idempotency": {},
    }
    route.update(overrides)
    return route


@dataclass
class Orders:
    """The API, its server, and the sidecars in front of it (one Redis, one key prefix)."""

    api: OrdersApi
    upstream: TestServer
    sidecars: list[TestClient]
    prefix: str

    @property
    def sidecar(self) -> TestClient:
        return self.sidecars[0]

    def waiting(self, n: int = 0) -> int:
        hub = self.sidecars[n].app[HUB]
        assert hub is not None
        return hub.waiting


OrdersFactory = Callable[..., Awaitable[Orders]]


async def start_orders(
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    *,
    replicas: int = 1,
    location: bool = True,
    route: dict[str, Any] | None = None,
    **settings: Any,
) -> Orders:
    """Start the orders API and `replicas` sidecars in front of it."""
    stream = f"{key_prefix}:orders.events"
    api = OrdersApi(redis, stream, location=location)
    upstream = await start_upstream(api.app())
    clients = []
    for _ in range(replicas):
        client = await start_sidecar(
            upstream,
            redis_url=redis_url,
            key_prefix=key_prefix,
            admin_token="op-token",
            stream_reader={"block": "50ms"},
            routes=[route or order_route(stream)],
            **settings,
        )
        hub = client.app[HUB]
        assert hub is not None
        await asyncio.wait_for(hub.connected.wait(), 5)
        clients.append(client)
    return Orders(api, upstream, clients, key_prefix)
