"""Synchronising through Redis Streams: hold, wake on the completion, fall back to 202."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from aiohttp.test_utils import TestClient, TestServer

from devtools.redis_server import RedisServer
from sidecar.state import ADMIN_URL, HUB
from sidecar.tracking import CallTracker

from .conftest import SidecarFactory, Upstream
from .helpers import metric, until

OK, NOT_OK, PROGRESS = "CreateUser::UserCreated", "CreateUser::UserNotCreated", "CreateUser::Busy"


@dataclass
class Env:
    """A fake async upstream, the sidecar in front of it, and the stream they share."""

    client: TestClient
    upstream: TestServer
    redis: aioredis.Redis
    stream: str
    hooks: dict[str, Any]

    async def publish(self, cid: str, type_: str = OK, payload: Any = None, **extra: str) -> None:
        """XADD a completion event the way a backend would."""
        fields: dict[str, str] = {"correlation_id": cid, "type": type_, **extra}
        if payload is not None:
            fields["payload"] = (
                payload if isinstance(payload, str) else orjson.dumps(payload).decode()
            )
        await self.redis.xadd(self.stream, fields)  # type: ignore[arg-type]

    @property
    def hub_waiting(self) -> int:
        hub = self.client.app[HUB]
        assert hub is not None
        return hub.waiting


def users_api(hooks: dict[str, Any]) -> web.Application:
    """POST /api/users → 202 + Location /users/{id} (id = the correlation header)."""

    async def create(request: web.Request) -> web.Response:
        if "handler" in hooks:
            response: web.Response = await hooks["handler"](request)
            return response
        cid = request.headers.get("X-Correlation-ID") or str(uuid.uuid4())
        if "before_202" in hooks:
            await hooks["before_202"](cid, request)
        if "status" in hooks:
            return web.Response(status=hooks["status"], text="upstream says no")
        return web.json_response(
            {"id": cid, "status": "pending"},
            status=202,
            headers={"Location": f"/users/{cid}", "X-Upstream": "1"},
        )

    async def get_user(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "from": "location"})

    app = web.Application()
    app.router.add_post("/api/users", create)
    app.router.add_get("/users/{id}", get_user)
    return app


def route(stream: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "create-user",
        "method": "POST",
        "path": "/api/users",
        "budget": "5s",
        "wait": {"stream": {"key": stream, "success": [OK], "failure": [NOT_OK]}},
        "respond": {"retry_after": "3s"},
    }
    base.update(overrides)
    return base


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env(
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> EnvFactory:
    async def make(
        *,
        routes: list[dict[str, Any]] | None = None,
        url: str | None = None,
        readiness: dict[str, Any] | None = None,
        **route_overrides: Any,
    ) -> Env:
        stream = f"{key_prefix}:users.events"
        hooks: dict[str, Any] = {}
        upstream = await start_upstream(users_api(hooks))
        client = await start_sidecar(
            upstream,
            redis_url=url or redis_url,
            key_prefix=key_prefix,
            stream_reader={"block": "50ms"},
            routes=routes or [route(stream, **route_overrides)],
            **({"readiness": readiness} if readiness else {}),
        )
        hub = client.app[HUB]
        assert hub is not None
        await asyncio.wait_for(hub.connected.wait(), 5)
        r = redis if url is None else aioredis.Redis.from_url(url)
        return Env(client, upstream, r, stream, hooks)

    return make


async def post_user(env: Env, cid: str, **kwargs: Any) -> Any:
    headers = {"X-Correlation-ID": cid, **kwargs.pop("headers", {})}
    return await env.client.post(
        "/api/users", json={"username": "felipe"}, headers=headers, **kwargs
    )


async def test_success_event_answers_200_with_the_result(make_env: EnvFactory) -> None:
    env = await make_env()
    task = asyncio.create_task(post_user(env, "u-1"))
    await until(lambda: env.hub_waiting == 1)
    await env.publish("u-1", OK, {"id": "u-1", "username": "felipe"})
    resp = await task
    assert resp.status == 200
    assert await resp.json() == {"id": "u-1", "username": "felipe"}
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Content-Location"] == "/users/u-1"  # as relative as the upstream's
    assert "Location" not in resp.headers
    assert resp.headers["X-Correlation-ID"] == "u-1"
    assert resp.headers["Vary"] == "Prefer"
    assert (
        metric(
            env.client,
            "sidecar_requests_total",
            route="create-user",
            outcome="sync_success",
            status_class="2xx",
        )
        == 1
    )
    assert (
        metric(env.client, "sidecar_stream_events_total", stream=env.stream, result="matched") == 1
    )
    assert metric(env.client, "sidecar_waiting_requests", route="create-user") == 0


async def test_event_published_before_the_upstream_answers(make_env: EnvFactory) -> None:
    env = await make_env()

    async def publish_first(cid: str, request: web.Request) -> None:
        await env.publish(cid, OK, {"fast": True})

    env.hooks["before_202"] = publish_first
    resp = await post_user(env, "u-fast")
    assert resp.status == 200
    assert await resp.json() == {"fast": True}


@pytest.mark.parametrize(
    ("correlation", "expected_id"),
    [
        ({"source": "location", "pattern": "/users/(?P<id>[^/?]+)"}, "loc"),
        ({"source": "body", "pointer": "/id"}, "body"),
    ],
)
async def test_id_learnt_from_the_202_even_when_the_event_came_first(
    make_env: EnvFactory, correlation: dict[str, str], expected_id: str
) -> None:
    """The backend makes its own id (not our header): the event can only be matched after the
    202, and here it is published before the 202 even leaves the upstream."""
    env = await make_env(correlation=correlation)
    backend_id = f"{expected_id}-{uuid.uuid4().hex[:6]}"

    async def create(request: web.Request) -> web.Response:
        await env.publish(backend_id, OK, {"id": backend_id})
        return web.json_response(
            {"id": backend_id}, status=202, headers={"Location": f"/users/{backend_id}"}
        )

    env.hooks["handler"] = create
    resp = await post_user(env, "client-id-not-used")
    assert resp.status == 200
    assert await resp.json() == {"id": backend_id}
    assert resp.headers["X-Correlation-ID"] == "client-id-not-used"


async def test_failure_event_answers_problem_with_the_event_detail(make_env: EnvFactory) -> None:
    env = await make_env()

    async def fail(cid: str, request: web.Request) -> None:
        await env.publish(cid, NOT_OK, {"reason": "username taken", "code": 7})

    env.hooks["before_202"] = fail
    resp = await post_user(env, "u-fail")
    assert resp.status == 500
    assert resp.headers["Content-Type"] == "application/problem+json"
    body = orjson.loads(await resp.read())
    assert body["status"] == 500
    assert body["detail"] == "username taken"
    assert body["data"] == {"reason": "username taken", "code": 7}
    assert body["correlation_id"] == "u-fail"
    assert body["event_type"] == NOT_OK
    assert (
        metric(
            env.client,
            "sidecar_requests_total",
            route="create-user",
            outcome="sync_failure",
            status_class="5xx",
        )
        == 1
    )


async def test_custom_statuses_201_sets_location_and_text_data(make_env: EnvFactory) -> None:
    env = await make_env(respond={"success_status": 201, "failure_status": 422})

    async def publish_text(cid: str, request: web.Request) -> None:
        await env.publish(cid, OK, "created, not JSON")

    env.hooks["before_202"] = publish_text
    resp = await post_user(env, "u-201")
    assert resp.status == 201
    assert resp.headers["Location"] == "/users/u-201"
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert await resp.text() == "created, not JSON"


async def test_budget_spent_answers_the_upstreams_202(make_env: EnvFactory) -> None:
    env = await make_env(budget="100ms")
    resp = await post_user(env, "u-slow")
    assert resp.status == 202
    assert await resp.json() == {"id": "u-slow", "status": "pending"}
    assert resp.headers["Location"] == "/users/u-slow"
    assert resp.headers["Retry-After"] == "3"
    assert resp.headers["X-Upstream"] == "1"
    assert resp.headers["X-Correlation-ID"] == "u-slow"
    assert metric(env.client, "sidecar_fallbacks_total", route="create-user", reason="budget") == 1
    assert (
        metric(
            env.client,
            "sidecar_requests_total",
            route="create-user",
            outcome="fallback_async",
            status_class="2xx",
        )
        == 1
    )
    assert metric(env.client, "sidecar_waiting_requests", route="create-user") == 0
    assert env.hub_waiting == 0


async def test_prefer_respond_async_answers_202_at_once(make_env: EnvFactory) -> None:
    env = await make_env(budget="30s")
    resp = await post_user(env, "u-async", headers={"Prefer": "respond-async"})
    assert resp.status == 202
    assert resp.headers["Preference-Applied"] == "respond-async"
    assert resp.headers["Vary"] == "Prefer"
    assert metric(env.client, "sidecar_fallbacks_total", route="create-user", reason="prefer") == 1


async def test_prefer_wait_shortens_the_budget(make_env: EnvFactory) -> None:
    env = await make_env(budget="30s")
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await post_user(env, "u-wait", headers={"Prefer": "wait=0.2"})
    assert resp.status == 202
    assert resp.headers["Preference-Applied"] == "wait=0.2"
    assert loop.time() - started < 10  # far below the 30 s route budget


async def test_prefer_wait_longer_than_budget_is_capped(make_env: EnvFactory) -> None:
    env = await make_env(budget="100ms")
    resp = await post_user(env, "u-cap", headers={"Prefer": "wait=600"})
    assert resp.status == 202
    assert resp.headers["Preference-Applied"] == "wait=600"


async def test_non_202_upstream_answer_passes_through_unchanged(make_env: EnvFactory) -> None:
    env = await make_env()
    env.hooks["status"] = 409
    resp = await post_user(env, "u-409")
    assert resp.status == 409
    assert await resp.text() == "upstream says no"
    assert "Vary" not in resp.headers
    assert env.hub_waiting == 0
    assert (
        metric(
            env.client,
            "sidecar_requests_total",
            route="create-user",
            outcome="passthrough",
            status_class="4xx",
        )
        == 1
    )


async def test_unknown_types_are_ignored_and_malformed_events_counted(
    make_env: EnvFactory,
) -> None:
    env = await make_env()
    task = asyncio.create_task(post_user(env, "u-m"))
    await until(lambda: env.hub_waiting == 1)
    await env.redis.xadd(env.stream, {"type": OK, "payload": "{}"})  # no id
    await env.publish("u-m", OK, "{not json")  # broken JSON
    await env.publish("u-m", PROGRESS, {"pct": 50})  # not a type of the route
    await env.publish("u-m", OK, {"done": True})
    resp = await task
    assert resp.status == 200
    assert await resp.json() == {"done": True}
    assert (
        metric(env.client, "sidecar_stream_events_total", stream=env.stream, result="malformed")
        == 2
    )
    assert (
        metric(env.client, "sidecar_stream_events_total", stream=env.stream, result="ignored") == 1
    )


async def test_max_waiting_sheds_to_202_at_once(make_env: EnvFactory) -> None:
    env = await make_env(max_waiting=1)
    first = asyncio.create_task(post_user(env, "u-held"))
    await until(lambda: env.hub_waiting == 1)
    resp = await post_user(env, "u-shed")
    assert resp.status == 202
    assert metric(env.client, "sidecar_fallbacks_total", route="create-user", reason="shed") == 1
    await env.publish("u-held", OK, {})
    assert (await first).status == 200


async def test_client_disconnect_ends_the_wait(make_env: EnvFactory) -> None:
    env = await make_env(budget="30s")
    url = env.client.make_url("/api/users")
    async with ClientSession() as session:
        task = asyncio.create_task(
            session.post(url, json={}, headers={"X-Correlation-ID": "u-gone"})
        )
        await until(lambda: env.hub_waiting == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await until(lambda: env.hub_waiting == 0)
    await until(
        lambda: (
            metric(
                env.client,
                "sidecar_requests_total",
                route="create-user",
                outcome="client_gone",
                status_class="0xx",
            )
            == 1
        )
    )
    assert metric(env.client, "sidecar_waiting_requests", route="create-user") == 0


async def test_a_thousand_concurrent_calls_each_get_their_own_result(
    make_env: EnvFactory,
) -> None:
    env = await make_env(budget="20s")
    rng = random.Random(7)
    outcomes = {f"c-{i}": rng.choice([OK, NOT_OK]) for i in range(1000)}

    async def backend(cid: str, request: web.Request) -> None:
        # Half the backends are faster than the 202, half slower.
        if rng.random() < 0.5:
            await env.publish(cid, outcomes[cid], {"cid": cid, "reason": cid})

    env.hooks["before_202"] = backend
    async with ClientSession(
        timeout=ClientTimeout(total=60), connector=TCPConnector(limit=0)
    ) as session:
        url = env.client.make_url("/api/users")

        async def call(cid: str) -> tuple[int, Any]:
            async with session.post(url, json={}, headers={"X-Correlation-ID": cid}) as r:
                return r.status, orjson.loads(await r.read())

        tasks = {cid: asyncio.create_task(call(cid)) for cid in outcomes}
        # Publish the rest once every call is held or answered, in random order.
        await until(lambda: env.hub_waiting + sum(t.done() for t in tasks.values()) >= 1000, 30)
        for cid in rng.sample(list(outcomes), len(outcomes)):
            await env.publish(cid, outcomes[cid], {"cid": cid, "reason": cid})
        results = {cid: await task for cid, task in tasks.items()}
    for cid, (status, body) in results.items():
        if outcomes[cid] == OK:
            assert (status, body) == (200, {"cid": cid, "reason": cid})
        else:
            assert status == 500 and body["data"]["cid"] == cid and body["detail"] == cid
    assert env.hub_waiting == 0
    # Every call was tracked (its webhooks know whose it was), burst or not.
    tracker = CallTracker(env.redis, env.stream.removesuffix(":users.events"), 60)
    async with asyncio.timeout(10):
        while None in (tracked := await tracker.get_many(list(outcomes))):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert {t.correlation_id for t in tracked if t} == set(outcomes)


async def test_redis_connection_killed_mid_wait_recovers(
    make_env: EnvFactory, own_redis: RedisServer
) -> None:
    env = await make_env(url=own_redis.url)
    task = asyncio.create_task(post_user(env, "u-kill"))
    await until(lambda: env.hub_waiting == 1)
    killed = 0
    for entry in await env.redis.client_list():
        if entry.get("name") == "sidecar-completions":
            await env.redis.client_kill_filter(_id=entry["id"])
            killed += 1
    assert killed == 1
    await env.publish("u-kill", OK, {"after": "kill"})  # lands while the reader reconnects
    resp = await task
    assert resp.status == 200
    assert await resp.json() == {"after": "kill"}
    await env.redis.aclose()


async def test_redis_restart_falls_back_to_202_then_recovers(
    make_env: EnvFactory, own_redis: RedisServer
) -> None:
    env = await make_env(url=own_redis.url, budget="300ms")
    hub = env.client.app[HUB]
    assert hub is not None
    own_redis.stop()
    resp = await post_user(env, "u-down")
    assert resp.status == 202
    # Redis is down: the client's id cannot be claimed, so the call ran under a minted one.
    minted = resp.headers["X-Correlation-ID"]
    assert minted != "u-down"
    assert resp.headers["Location"] == f"/users/{minted}"
    replaced = metric(
        env.client, "sidecar_correlation_ids_replaced_total", route="create-user", reason="redis"
    )
    assert replaced == 1
    await until(lambda: not hub.connected.is_set())
    assert metric(env.client, "sidecar_fallbacks_total", route="create-user", reason="redis") == 1
    await until(lambda: metric(env.client, "sidecar_redis_up") == 0)
    admin = env.client.app[ADMIN_URL]
    async with env.client.session.get(f"{admin}/readyz") as ready:
        assert ready.status == 503
        assert any(k.startswith("redis ") for k in (await ready.json())["reasons"])
    own_redis.start()
    await asyncio.wait_for(hub.connected.wait(), 10)
    redis = aioredis.Redis.from_url(own_redis.url)
    env.redis = redis

    async def publish_first(cid: str, request: web.Request) -> None:
        await env.publish(cid, OK, {"back": True})

    env.hooks["before_202"] = publish_first
    resp = await post_user(env, "u-back")
    assert resp.status == 200
    assert await resp.json() == {"back": True}
    async with env.client.session.get(f"{admin}/readyz") as ready:
        assert ready.status == 200
    await redis.aclose()


async def test_metrics_show_max_waiting_and_stream_lag(make_env: EnvFactory) -> None:
    env = await make_env(max_waiting=7)
    assert metric(env.client, "sidecar_route_max_waiting", route="create-user") == 7
    # An event written 30 s ago (explicit entry id) is read now: the reader is 30 s behind.
    old_ms = int((time.time() - 30) * 1000)
    await env.redis.xadd(env.stream, {"correlation_id": "late", "type": OK}, id=f"{old_ms}-0")
    await until(lambda: metric(env.client, "sidecar_stream_lag_seconds", stream=env.stream) > 25)
    await env.publish("now")  # caught up again
    await until(lambda: metric(env.client, "sidecar_stream_lag_seconds", stream=env.stream) < 5)


async def test_the_recent_event_cache_is_bounded_in_bytes(make_env: EnvFactory) -> None:
    env = await make_env(
        correlation={"source": "location", "pattern": "/users/(?P<id>[^/]+)"},
    )
    hub = env.client.app[HUB]
    assert hub is not None
    hub.recent_bytes = 3 * 1024 * 1024  # as stream_reader.recent_bytes: 3MiB would say
    big = "x" * (1024 * 1024)
    for n in range(10):  # 10 MB of completions nobody waits for yet
        await env.publish(f"late-{n}", OK, {"blob": big, "n": n})
    await until(
        lambda: (
            metric(env.client, "sidecar_stream_events_total", stream=env.stream, result="unmatched")
            == 10
        )
    )
    assert hub.recent_held <= 3 * 1024 * 1024
    assert metric(env.client, "sidecar_stream_cache_bytes") == hub.recent_held
    # The newest are still there for a waiter that learns its id from the 202 just now.
    env.hooks["handler"] = lambda request: _accepted_as("late-9")
    resp = await post_user(env, "ignored")
    assert resp.status == 200
    assert (await resp.json())["n"] == 9


async def test_expired_cached_events_leave_while_the_stream_is_quiet(make_env: EnvFactory) -> None:
    env = await make_env(
        correlation={"source": "location", "pattern": "/users/(?P<id>[^/]+)"},
    )
    hub = env.client.app[HUB]
    assert hub is not None
    hub.recent_ttl_s = 0.2  # as stream_reader.recent_ttl: 200ms would say
    await env.publish("nobody-waits", OK, {"blob": "x" * 100_000})
    await until(lambda: metric(env.client, "sidecar_stream_cache_bytes") > 100_000)
    # No event comes after it: the next empty reads (every 50 ms here) let it go.
    await until(lambda: metric(env.client, "sidecar_stream_cache_bytes") == 0, timeout_s=3)
    assert hub.recent_held == 0


async def _accepted_as(op: str) -> web.Response:
    return web.json_response({}, status=202, headers={"Location": f"/users/{op}"})


async def test_redis_down_is_quiet_and_honest(
    make_env: EnvFactory, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    env = await make_env(url=own_redis.url)
    hub = env.client.app[HUB]
    assert hub is not None
    await until(lambda: metric(env.client, "sidecar_redis_up") == 1)
    await asyncio.to_thread(own_redis.stop)
    await until(lambda: metric(env.client, "sidecar_redis_up") == 0)
    await until(lambda: not hub.connected.is_set())
    caplog.clear()
    await asyncio.sleep(2.0)  # Redis stays down: what does the sidecar say meanwhile?
    noisy = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(noisy) <= 2, [r.getMessage() for r in noisy]  # state changes only, if any
    assert not [r for r in caplog.records if r.getMessage() == "completion reader connected"]
    assert metric(env.client, "sidecar_redis_up") == 0  # never a false "up" meanwhile
    await asyncio.to_thread(own_redis.start)
    await asyncio.wait_for(hub.connected.wait(), 10)
    await until(lambda: metric(env.client, "sidecar_redis_up") == 1)
    back = [r.getMessage() for r in caplog.records]
    assert back.count("completion reader connected") == 1
    assert back.count("Redis answers") == 1


async def test_a_route_waiting_on_the_wrong_id_is_diagnosed(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # The backend puts its own id in `correlation_id`, not the one the sidecar sent: no call
    # ever wakes, and the sidecar says why it probably is so.
    env = await make_env(budget="150ms")

    async def own_ids(cid: str, request: web.Request) -> None:
        await env.publish(f"backend-{cid}", OK, {"id": 1})

    env.hooks["before_202"] = own_ids
    for n in range(5):
        resp = await post_user(env, f"u-wrong-{n}")
        assert resp.status == 202
    said = [r for r in caplog.records if "time out while its stream carries" in r.getMessage()]
    assert len(said) == 1  # once a minute at most
    assert said[0].levelno == logging.WARNING
    assert said[0].route == "create-user"  # type: ignore[attr-defined]
    assert said[0].example_id.startswith("backend-")  # type: ignore[attr-defined]
    assert said[0].id_field == "correlation_id"  # type: ignore[attr-defined]
    suspected = metric(
        env.client, "sidecar_route_misconfiguration_suspected_total", route="create-user"
    )
    assert suspected >= 2


async def test_no_diagnosis_while_calls_do_complete(make_env: EnvFactory) -> None:
    env = await make_env(budget="150ms")

    async def complete_some(cid: str, request: web.Request) -> None:
        await env.publish(cid if cid.endswith("0") else f"other-{cid}", OK, {"id": 1})

    env.hooks["before_202"] = complete_some
    statuses = [(await post_user(env, f"u-{n}")).status for n in range(5)]
    assert statuses == [200, 202, 202, 202, 202]  # another replica's events are normal too
    assert (
        metric(env.client, "sidecar_route_misconfiguration_suspected_total", route="create-user")
        == 0
    )


async def test_readiness_can_leave_redis_out(make_env: EnvFactory, own_redis: RedisServer) -> None:
    env = await make_env(url=own_redis.url, readiness={"require_redis": False})
    await asyncio.to_thread(own_redis.stop)
    await until(lambda: metric(env.client, "sidecar_redis_up") == 0)
    admin = env.client.app[ADMIN_URL]
    async with env.client.session.get(f"{admin}/readyz") as ready:
        assert ready.status == 200  # calls still go through, falling back to 202
        body = await ready.json()
    assert body["status"] == "ready (degraded)"
    assert any(k.startswith("redis ") for k in body["reasons"])
