"""Completions of real proxied calls reach webhooks: per tenant, after a 202 or a 200, from the
stream or from polling, once per subscription."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook

from sidecar.state import HUB
from sidecar.webhooks import WEBHOOKS

from ..conftest import FakeApiFactory, SidecarFactory
from ..fakes import Reply, reply
from ..helpers import (
    acknowledged,
    deliveries_settled,
    enqueued,
    keys_like,
    until,
    until_true,
)

OPERATOR_TOKEN = "op-token-0123456789"
EVENTS = {"success": "user.created", "failure": "user.creation_failed"}


@dataclass
class Hooks:
    """A webhook receiver with one path per subscriber; deliveries land in `got`."""

    server: TestServer
    got: asyncio.Queue[tuple[str, dict[str, str], bytes]] = field(default_factory=asyncio.Queue)

    def url(self, name: str) -> str:
        return str(self.server.make_url(f"/{name}"))

    async def next(self) -> tuple[str, dict[str, str], bytes]:
        """The next delivery: (subscriber path, headers, the exact body bytes)."""
        return await asyncio.wait_for(self.got.get(), 10)


@dataclass
class Env:
    client: TestClient
    hooks: Hooks
    redis: aioredis.Redis
    prefix: str
    stream: str
    done: set[str]  # correlation ids whose status URL answers 200

    async def subscribe(self, owner: str, name: str) -> str:
        """Create a subscription as `owner` (a client credential, or the operator); its secret."""
        store = self.client.app[WEBHOOKS].store
        tenant = "operator" if owner == "operator" else await self.tenant(owner)
        sub = await store.create(tenant, self.hooks.url(name), ["*"])
        return sub.secret

    async def tenant(self, credential: str) -> str:
        from sidecar.state import HASHER

        tenant = await self.client.app[HASHER].tenant(credential)
        assert tenant is not None
        return tenant

    async def messages(self) -> list[str]:
        """The subscription url path of every message fan-out enqueued, sorted."""
        out = []
        for message in await enqueued(self.redis, self.prefix):
            sub = await self.client.app[WEBHOOKS].store.get(message["sub"])
            assert sub is not None
            out.append(sub.url.rsplit("/", 1)[1])
        return sorted(out)

    async def xadd(self, cid: str, type_: str = "UserCreated", data: Any = None) -> None:
        payload = orjson.dumps(data if data is not None else {"id": cid}).decode()
        fields = {"correlation_id": cid, "type": type_, "payload": payload}
        await self.redis.xadd(self.stream, fields)  # type: ignore[arg-type]

    async def dispatched(self) -> None:
        """Wait until the webhook dispatcher has read and acknowledged every stream entry."""
        await acknowledged(self.redis, self.stream, f"{self.prefix}:webhooks")


EnvFactory = Callable[[], Awaitable[Env]]


@pytest.fixture
async def make_env(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    aiohttp_server: Any,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> EnvFactory:
    async def make() -> Env:
        got: asyncio.Queue[tuple[str, dict[str, str], bytes]] = asyncio.Queue()

        async def hook(request: web.Request) -> web.Response:
            await got.put((request.match_info["name"], dict(request.headers), await request.read()))
            return web.Response(status=204)

        receiver = web.Application()
        receiver.router.add_post("/{name}", hook)
        hooks = Hooks(await aiohttp_server(receiver), got)
        done: set[str] = set()

        def status(cid: str) -> Reply:  # 202 until `cid` is in `done`
            if cid in done:
                return reply(200, {"id": cid, "state": "done"})
            return reply(202, {"state": "pending"})

        # POST → 202 + Location /status/{cid}.
        upstream = await fake_api(
            accept="POST /api/{kind}",
            location="/status/{cid}",
            accepted={},
            status="/status/{cid}",
            replies=status,
        )
        stream = f"{key_prefix}:users.events"
        stream_wait = {"key": stream, "success": ["UserCreated"], "failure": ["UserNotCreated"]}
        poll_wait = {"interval": "20ms", "max_interval": "40ms", "track_for": "10s"}
        client = await start_sidecar(
            upstream,
            redis_url=redis_url,
            key_prefix=key_prefix,
            admin_token=OPERATOR_TOKEN,
            stream_reader={"block": "50ms"},
            webhooks={"allow_private_targets": True, "schedule": ["50ms"], "timeout": "2s"},
            routes=[
                {
                    "name": "create-user",
                    "method": "POST",
                    "path": "/api/users",
                    "budget": "2s",
                    "wait": {"stream": stream_wait},
                    "webhook_events": EVENTS,
                },
                {
                    "name": "create-report",
                    "method": "POST",
                    "path": "/api/reports",
                    "budget": "100ms",
                    "wait": {"poll": poll_wait},
                    "webhook_events": {"success": "report.ready", "failure": "report.failed"},
                },
                {
                    "name": "create-both",
                    "method": "POST",
                    "path": "/api/both",
                    "budget": "2s",
                    "wait": {"stream": stream_wait, "poll": poll_wait},
                    "webhook_events": EVENTS,
                },
            ],
        )
        return Env(client, hooks, redis, key_prefix, stream, done)

    return make


def call(env: Env, path: str, cid: str, credential: str, **headers: str) -> Any:
    return env.client.post(
        path, json={}, headers={"X-Correlation-ID": cid, "Authorization": credential, **headers}
    )


async def test_a_completion_after_the_202_reaches_the_callers_and_the_operators_subscriptions(
    make_env: EnvFactory,
) -> None:
    env = await make_env()
    secrets = {"a": await env.subscribe("Bearer key-a", "a")}
    await env.subscribe("Bearer key-b", "b")
    secrets["op"] = await env.subscribe("operator", "op")
    resp = await call(env, "/api/users", "c-1", "Bearer key-a", Prefer="respond-async")
    assert resp.status == 202
    await env.xadd("c-1", data={"id": 7})
    got = {}
    for _ in range(2):
        name, headers, raw = await env.hooks.next()
        Webhook(secrets[name]).verify(raw, headers)  # signed with that subscription's secret
        got[name] = orjson.loads(raw)
    assert got["a"] == {
        "type": "user.created",
        "timestamp": got["a"]["timestamp"],
        "data": {"id": 7},
        "correlation_id": "c-1",
        "operation_id": None,
        "route": "create-user",
        "location": str(env.client.make_url("/status/c-1")),
        "status": "succeeded",
    }
    assert got["op"] == got["a"]
    assert await env.messages() == ["a", "op"]  # b never gets a's completion


async def test_a_failure_is_pushed_as_the_failure_event(make_env: EnvFactory) -> None:
    env = await make_env()
    secret = await env.subscribe("Bearer key-a", "a")
    resp = await call(env, "/api/users", "c-2", "Bearer key-a", Prefer="respond-async")
    assert resp.status == 202
    await env.xadd("c-2", "UserNotCreated", {"reason": "taken"})
    name, headers, raw = await env.hooks.next()
    Webhook(secret).verify(raw, headers)
    body = orjson.loads(raw)
    assert (name, body["type"], body["status"]) == ("a", "user.creation_failed", "failed")
    assert body["data"] == {"reason": "taken"}


async def test_a_synchronous_200_is_pushed_to_webhooks_too(make_env: EnvFactory) -> None:
    env = await make_env()
    await env.subscribe("Bearer key-a", "a")
    task = asyncio.ensure_future(call(env, "/api/users", "c-3", "Bearer key-a"))
    hub = env.client.app[HUB]
    assert hub is not None
    await until(lambda: hub.waiting == 1)  # an event sent before the call cannot be its own
    await env.xadd("c-3", data={"id": 3})
    resp = await task
    assert resp.status == 200
    assert await resp.json() == {"id": 3}
    name, _headers, raw = await env.hooks.next()
    body = orjson.loads(raw)
    assert (name, body["status"], body["data"]) == ("a", "succeeded", {"id": 3})


async def test_a_poll_detected_completion_after_the_202_is_delivered_once(
    make_env: EnvFactory,
) -> None:
    env = await make_env()
    await env.subscribe("Bearer key-a", "a")
    await env.subscribe("operator", "op")
    resp = await call(env, "/api/reports", "r-1", "Bearer key-a")
    assert resp.status == 202  # the 100ms budget is spent; polling goes on for webhooks
    env.done.add("r-1")
    got = [orjson.loads((await env.hooks.next())[2]) for _ in range(2)]
    assert {(b["type"], b["correlation_id"]) for b in got} == {("report.ready", "r-1")}
    assert await env.messages() == ["a", "op"]


async def test_stream_and_poll_seeing_one_completion_make_one_message_per_subscription(
    make_env: EnvFactory,
) -> None:
    env = await make_env()
    await env.subscribe("Bearer key-a", "a")
    env.done.add("b-1")  # the status URL is done at once: polling detects it first
    resp = await call(env, "/api/both", "b-1", "Bearer key-a")
    assert resp.status == 200
    await env.xadd("b-1", data={"id": "b-1"})  # then the stream says so too
    name, _headers, _raw = await env.hooks.next()
    assert name == "a"
    await env.dispatched()
    assert await env.messages() == ["a"]  # the stream's fan-out was a no-op


async def test_a_client_without_credentials_reaches_operator_subscriptions_only(
    make_env: EnvFactory,
) -> None:
    env = await make_env()
    await env.subscribe("Bearer key-a", "a")
    secret = await env.subscribe("operator", "op")
    resp = await env.client.post(
        "/api/users", json={}, headers={"X-Correlation-ID": "c-4", "Prefer": "respond-async"}
    )
    assert resp.status == 202
    await env.xadd("c-4")
    name, headers, raw = await env.hooks.next()
    assert name == "op"
    Webhook(secret).verify(raw, headers)
    await env.dispatched()
    assert await env.messages() == ["op"]


async def test_a_stopped_sidecar_leaves_no_consumer_behind(make_env: EnvFactory) -> None:
    env = await make_env()
    await env.subscribe("operator", "op")
    resp = await call(env, "/api/users", "c-5", "Bearer key-a", Prefer="respond-async")
    assert resp.status == 202
    await env.xadd("c-5")
    assert (await env.hooks.next())[0] == "op"
    await env.dispatched()
    await until_true(lambda: deliveries_settled(env.redis, env.prefix))
    (queue,) = await keys_like(env.redis, f"{env.prefix}:wh:*:q:*")
    groups = [(env.stream, f"{env.prefix}:webhooks"), (queue, "delivery")]
    for stream, group in groups:
        assert len(await env.redis.xinfo_consumers(stream, group)) == 1
    await env.client.close()  # a deploy stops this replica
    for stream, group in groups:
        assert await env.redis.xinfo_consumers(stream, group) == []
