"""What the broker tests share: the broker under test (its URL, the API's publisher, the key of
this test), an async orders API in front of which the sidecar runs, the sidecar's config for a
route on that broker, and the scenarios every kind must pass (each test file runs them on its
own broker, beside the tests of what only that kind has).

Messages are what an API would publish: a JSON body `{"type": ..., "result": ...}` with the
correlation id in an `x-correlation-id` header; the route reads them with
`id_field: x-correlation-id`, `type_field: /type`, `data_field: /result`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.sources.health import SOURCE_HEALTH
from sidecar.state import ADMIN_URL, HUB

from ..conftest import SidecarFactory, Upstream
from ..helpers import metric, until
from ..replicas.support import Receiver

OK, REJECTED, PROGRESS = "OrderPlaced", "OrderRejected", "OrderProgress"
SOURCE = "bus"
ROUTE = "place-order"


class Publisher(Protocol):
    async def create(self, key: str) -> None: ...
    async def publish(
        self, key: str, body: bytes, headers: dict[str, str] | None = None, **extra: Any
    ) -> None: ...
    async def publish_many(self, key: str, bodies: list[bytes]) -> None: ...
    async def reset(self) -> None: ...
    async def close(self) -> None: ...


@dataclass
class Broker:
    """A broker as one test sees it: its kind and URL, the API's publisher, this test's key
    (topic, exchange or subject), and the source options the sidecar gets (tiny timeouts)."""

    kind: str
    url: str
    publisher: Publisher
    key: str
    options: dict[str, Any] = field(default_factory=dict)

    def source(self, **extra: Any) -> dict[str, Any]:
        """The `sources:` entry of this broker."""
        return {"kind": self.kind, "url": self.url, **self.options, **extra}

    async def publish(
        self,
        cid: str | None,
        type_: str | None = OK,
        result: Any = None,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        """Publish one completion the way the API does."""
        if body is None:
            document: dict[str, Any] = {"result": result}
            if type_ is not None:
                document["type"] = type_
            body = orjson.dumps(document)
        sent = dict(headers or {})
        if cid is not None:
            sent.setdefault("x-correlation-id", cid)
        await self.publisher.publish(self.key, body, sent, **extra)


def stream_wait(broker: Broker, **overrides: Any) -> dict[str, Any]:
    """A route's `wait.stream` on the broker, as the issue's example spells it."""
    spec = {
        "source": SOURCE,
        "key": broker.key,
        "id_field": "x-correlation-id",
        "type_field": "/type",
        "data_field": "/result",
        "success": [OK],
        "failure": [REJECTED],
    }
    spec.update(overrides)
    return spec


def route(broker: Broker, stream: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """The place-order route, waiting on the broker."""
    base: dict[str, Any] = {
        "name": ROUTE,
        "method": "POST",
        "path": "/orders",
        "budget": "5s",
        "wait": {"stream": stream or stream_wait(broker)},
        "respond": {"retry_after": "3s"},
        "webhook_events": {"success": "order.placed", "failure": "order.rejected"},
    }
    base.update(overrides)
    return base


def orders_api(hooks: dict[str, Any]) -> web.Application:
    """POST /orders → 202 + Location /orders/{id} (id = the correlation header)."""

    async def create(request: web.Request) -> web.Response:
        if "handler" in hooks:
            response: web.Response = await hooks["handler"](request)
            return response
        cid = request.headers.get("X-Correlation-ID") or str(uuid.uuid4())
        if "before_202" in hooks:
            await hooks["before_202"](cid)
        return web.json_response(
            {"id": cid, "status": "pending"}, status=202, headers={"Location": f"/orders/{cid}"}
        )

    async def pong(request: web.Request) -> web.Response:
        return web.Response(text="pong")  # what a started `sidecar run` is checked with

    app = web.Application()
    app.router.add_post("/orders", create)
    app.router.add_get("/ping", pong)
    return app


@dataclass
class Env:
    """The sidecar under test in front of the orders API, on the broker of the test."""

    client: TestClient
    upstream: TestServer
    broker: Broker
    hooks: dict[str, Any]

    @property
    def stream(self) -> str:
        """The stream id metrics name (`<source>/<key>`)."""
        return f"{SOURCE}/{self.broker.key}"

    @property
    def waiting(self) -> int:
        hub = self.client.app[HUB]
        assert hub is not None
        return hub.waiting

    def source_up(self) -> bool:
        return self.client.app[SOURCE_HEALTH].is_up(SOURCE)

    async def until_up(self, timeout_s: float = 20.0) -> None:
        """Wait until every read of the source is connected (awaiting its state changes)."""
        health = self.client.app[SOURCE_HEALTH]
        async with asyncio.timeout(timeout_s):
            while not health.is_up(SOURCE):
                await health.changed.wait()

    async def until_down(self, timeout_s: float = 10.0) -> None:
        health = self.client.app[SOURCE_HEALTH]
        async with asyncio.timeout(timeout_s):
            while health.is_up(SOURCE):
                await health.changed.wait()

    async def order(self, cid: str, **kwargs: Any) -> Any:
        headers = {"X-Correlation-ID": cid, **kwargs.pop("headers", {})}
        return await self.client.post("/orders", json={"item": "tea"}, headers=headers, **kwargs)

    def count(self, result: str) -> float:
        return metric(self.client, "sidecar_stream_events_total", stream=self.stream, result=result)


EnvFactory = Callable[..., Awaitable[Env]]


def url_of(server: TestServer) -> str:
    """The origin of a test server."""
    return str(server.make_url("")).rstrip("/")


async def start_env(
    broker: Broker,
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    redis_url: str,
    key_prefix: str,
    *,
    routes: list[dict[str, Any]] | None = None,
    source: dict[str, Any] | None = None,
    ready: bool = True,
    **overrides: Any,
) -> Env:
    """The sidecar (the real app, cleanup contexts and all) with the broker as its source,
    ready (every read of the source connected) unless told not to wait."""
    hooks: dict[str, Any] = {}
    upstream = await start_upstream(orders_api(hooks))
    client = await start_sidecar(
        upstream,
        redis_url=redis_url,
        key_prefix=key_prefix,
        stream_reader={"block": "50ms"},
        sources={SOURCE: source or broker.source()},
        routes=routes or [route(broker)],
        **overrides,
    )
    env = Env(client, upstream, broker, hooks)
    if ready:
        await env.until_up()
    return env


# ------------------------------------------------------------------------------------------------
# The scenarios every kind passes


async def success_answers_200_with_the_event_data(env: Env) -> None:
    task = asyncio.create_task(env.order("o-1"))
    await until(lambda: env.waiting == 1)
    await env.broker.publish("o-1", OK, {"order": "o-1", "total": 12.5})
    resp = await task
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"order": "o-1", "total": 12.5}
    assert resp.headers["X-Correlation-ID"] == "o-1"
    assert resp.headers["Content-Location"] == "/orders/o-1"
    assert env.count("matched") == 1
    ok = {"route": ROUTE, "outcome": "sync_success", "status_class": "2xx"}
    assert metric(env.client, "sidecar_requests_total", **ok) == 1


async def failure_maps_to_a_problem(env: Env) -> None:
    async def reject(cid: str) -> None:
        await env.broker.publish(cid, REJECTED, {"reason": "out of stock", "code": 3})

    env.hooks["before_202"] = reject
    resp = await env.order("o-fail")
    assert resp.status == 500
    assert resp.headers["Content-Type"] == "application/problem+json"
    body = orjson.loads(await resp.read())
    assert body["detail"] == "out of stock"
    assert body["data"] == {"reason": "out of stock", "code": 3}
    assert (body["correlation_id"], body["event_type"]) == ("o-fail", REJECTED)


async def budget_falls_back_to_the_202(env: Env) -> None:
    resp = await env.order("o-slow")
    assert resp.status == 202
    assert await resp.json() == {"id": "o-slow", "status": "pending"}
    assert resp.headers["Location"] == "/orders/o-slow"
    assert resp.headers["Retry-After"] == "3"
    assert metric(env.client, "sidecar_fallbacks_total", route=ROUTE, reason="budget") == 1
    assert env.waiting == 0


async def event_before_the_202_with_the_id_from_the_location(env: Env) -> None:
    """The backend makes its own id and publishes before its 202 leaves: the id is learnt from
    the Location, after the event; the recent-completion cache closes the race."""
    backend_id = f"b-{uuid.uuid4().hex[:8]}"

    async def create(request: web.Request) -> web.Response:
        await env.broker.publish(backend_id, OK, {"id": backend_id})
        hub = env.client.app[HUB]
        assert hub is not None
        await until(lambda: env.count("unmatched") == 1)  # the sidecar has seen it first
        return web.json_response(
            {"id": backend_id}, status=202, headers={"Location": f"/orders/{backend_id}"}
        )

    env.hooks["handler"] = create
    resp = await env.order("client-id")
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"id": backend_id}
    assert resp.headers["X-Correlation-ID"] == "client-id"


async def malformed_messages_are_skipped_and_counted(env: Env) -> None:
    task = asyncio.create_task(env.order("o-m"))
    await until(lambda: env.waiting == 1)
    await env.broker.publish("o-m", body=b"not JSON at all")  # /type into a body that is not JSON
    await env.broker.publish(None, OK, {"no": "id"})  # no id anywhere
    await env.broker.publish("o-m", PROGRESS, {"pct": 50})  # a type no route lists
    await env.broker.publish("o-m", OK, {"done": True})
    resp = await task
    assert resp.status == 200
    assert await resp.json() == {"done": True}
    assert env.count("malformed") == 2
    assert env.count("ignored") == 1
    assert env.count("matched") == 1


async def what_is_missing_is_named_until_the_api_creates_it(env: Env, missing: str) -> None:
    """The route's topic, exchange or stream does not exist: the sidecar creates none of the
    API's, says which is missing (/readyz, sidecar_source_up), and reads it once it exists."""
    health = env.client.app[SOURCE_HEALTH]
    async with asyncio.timeout(10.0):
        while missing not in health.down().get(SOURCE, ""):
            await health.changed.wait()
    assert metric(env.client, "sidecar_source_up", source=SOURCE) == 0
    async with ClientSession() as http, http.get(f"{env.client.app[ADMIN_URL]}/readyz") as ready:
        assert ready.status == 503
        assert missing in (await ready.json())["reasons"][f"source {SOURCE}"]
    await env.broker.publisher.create(env.broker.key)
    await env.until_up(timeout_s=30.0)
    task = asyncio.create_task(env.order("o-late"))
    await until(lambda: env.waiting == 1)
    await env.broker.publish("o-late", OK, {"created": "late"})
    resp = await task
    assert resp.status == 200
    assert await resp.json() == {"created": "late"}


async def broker_restarted_mid_wait(
    env: Env, stop: Callable[[], Awaitable[None]], start: Callable[[], Awaitable[None]]
) -> None:
    """The broker goes away and comes back while a call is held: the call rides it out and
    gets its result once the broker is back (within its budget). While it is down, /readyz and
    sidecar_source_up name the source, and a call whose budget ends meanwhile gets its 202
    (never a 5xx of ours), counted under reason `source`."""
    held = asyncio.create_task(env.order("o-held"))
    await until(lambda: env.waiting == 1)
    await stop()
    await env.until_down()
    short = await env.order("o-short", headers={"Prefer": "wait=0.3"})
    assert short.status == 202
    assert short.headers["Location"] == "/orders/o-short"
    assert metric(env.client, "sidecar_fallbacks_total", route=ROUTE, reason="source") == 1
    assert metric(env.client, "sidecar_source_up", source=SOURCE) == 0
    async with ClientSession() as http, http.get(f"{env.client.app[ADMIN_URL]}/readyz") as ready:
        assert ready.status == 503
        assert f"source {SOURCE}" in (await ready.json())["reasons"]
    assert not held.done()
    await start()
    await env.until_up(timeout_s=30.0)
    assert metric(env.client, "sidecar_source_up", source=SOURCE) == 1
    await env.broker.publish("o-held", OK, {"rode": "it out"})
    resp = await held
    assert resp.status == 200
    assert await resp.json() == {"rode": "it out"}


async def completion_reaches_a_webhook_with_its_trace(env: Env, receiver: Receiver) -> None:
    """A completion whose call the sidecar never saw still reaches the operator's
    subscription (after the grace for its record), traced as a child of the message's
    `traceparent` header."""
    trace_id = uuid.uuid4().hex
    parent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    await env.broker.publish("o-hook", OK, {"hooked": 1}, headers={"traceparent": parent})
    await receiver.wait_for(lambda: len(receiver.delivered("audit")) == 1, timeout_s=20.0)
    hit = receiver.delivered("audit")[0]
    payload = hit.payload(SECRET)
    assert (payload["type"], payload["data"]) == ("order.placed", {"hooked": 1})
    assert payload["correlation_id"] == "o-hook"
    assert hit.headers["traceparent"].split("-")[1] == trace_id


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def audit_subscription(receiver: Receiver) -> dict[str, Any]:
    """The operator-owned subscription every completion goes to."""
    return {"id": "audit", "url": receiver.url("/hook/audit"), "events": ["*"], "secret": SECRET}
