"""Synchronising through Redis Streams, end to end: hold, wake on the completion, fall back to
202. (The completion hub's own tests are in tests/completions/test_hub.py, the stream reader's in
tests/sources/test_redis_streams.py.)"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from devtools.redis_server import RedisServer
from sidecar.state import ADMIN_URL, HUB
from sidecar.tracking import CallTracker, TrackedCall

from .helpers import metric, until, until_true
from .streams import NOT_OK, OK, PROGRESS, StreamEnvFactory, post_user


async def test_success_event_answers_200_with_the_result(stream_env: StreamEnvFactory) -> None:
    env = await stream_env()
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


async def test_event_published_before_the_upstream_answers(stream_env: StreamEnvFactory) -> None:
    env = await stream_env()

    async def publish_first(cid: str, request: web.Request) -> None:
        await env.publish(cid, OK, {"fast": True})

    env.api.before_accept = publish_first
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
    stream_env: StreamEnvFactory, correlation: dict[str, str], expected_id: str
) -> None:
    """The backend makes its own id (not our header): the event can only be matched after the
    202, and here it is published before the 202 even leaves the upstream."""
    env = await stream_env(correlation=correlation)
    backend_id = f"{expected_id}-{uuid.uuid4().hex[:6]}"

    async def create(request: web.Request) -> web.Response:
        await env.publish(backend_id, OK, {"id": backend_id})
        return web.json_response(
            {"id": backend_id}, status=202, headers={"Location": f"/users/{backend_id}"}
        )

    env.api.respond = create
    resp = await post_user(env, "client-id-not-used")
    assert resp.status == 200
    assert await resp.json() == {"id": backend_id}
    assert resp.headers["X-Correlation-ID"] == "client-id-not-used"


async def test_failure_event_answers_problem_with_the_event_detail(
    stream_env: StreamEnvFactory,
) -> None:
    env = await stream_env()

    async def fail(cid: str, request: web.Request) -> None:
        await env.publish(cid, NOT_OK, {"reason": "username taken", "code": 7})

    env.api.before_accept = fail
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


async def test_custom_statuses_201_sets_location_and_text_data(
    stream_env: StreamEnvFactory,
) -> None:
    env = await stream_env(respond={"success_status": 201, "failure_status": 422})

    async def publish_text(cid: str, request: web.Request) -> None:
        await env.publish(cid, OK, "created, not JSON")

    env.api.before_accept = publish_text
    resp = await post_user(env, "u-201")
    assert resp.status == 201
    assert resp.headers["Location"] == "/users/u-201"
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert await resp.text() == "created, not JSON"


async def test_budget_spent_answers_the_upstreams_202(stream_env: StreamEnvFactory) -> None:
    env = await stream_env(budget="100ms")
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


async def test_prefer_respond_async_answers_202_at_once(stream_env: StreamEnvFactory) -> None:
    env = await stream_env(budget="30s")
    resp = await post_user(env, "u-async", headers={"Prefer": "respond-async"})
    assert resp.status == 202
    assert resp.headers["Preference-Applied"] == "respond-async"
    assert resp.headers["Vary"] == "Prefer"
    assert metric(env.client, "sidecar_fallbacks_total", route="create-user", reason="prefer") == 1


async def test_prefer_wait_shortens_the_budget(stream_env: StreamEnvFactory) -> None:
    env = await stream_env(budget="30s")
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await post_user(env, "u-wait", headers={"Prefer": "wait=0.2"})
    assert resp.status == 202
    assert resp.headers["Preference-Applied"] == "wait=0.2"
    assert loop.time() - started < 10  # far below the 30 s route budget


async def test_prefer_wait_longer_than_budget_is_capped(stream_env: StreamEnvFactory) -> None:
    env = await stream_env(budget="100ms")
    resp = await post_user(env, "u-cap", headers={"Prefer": "wait=600"})
    assert resp.status == 202
    assert resp.headers["Preference-Applied"] == "wait=600"


async def test_non_202_upstream_answer_passes_through_unchanged(
    stream_env: StreamEnvFactory,
) -> None:
    env = await stream_env()
    env.api.refuse = 409
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
    stream_env: StreamEnvFactory,
) -> None:
    env = await stream_env()
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


async def test_max_waiting_sheds_to_202_at_once(stream_env: StreamEnvFactory) -> None:
    env = await stream_env(max_waiting=1)
    first = asyncio.create_task(post_user(env, "u-held"))
    await until(lambda: env.hub_waiting == 1)
    resp = await post_user(env, "u-shed")
    assert resp.status == 202
    assert metric(env.client, "sidecar_fallbacks_total", route="create-user", reason="shed") == 1
    await env.publish("u-held", OK, {})
    assert (await first).status == 200


async def test_client_disconnect_ends_the_wait(stream_env: StreamEnvFactory) -> None:
    env = await stream_env(budget="30s")
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
    stream_env: StreamEnvFactory,
) -> None:
    env = await stream_env(budget="20s")
    rng = random.Random(7)
    outcomes = {f"c-{i}": rng.choice([OK, NOT_OK]) for i in range(1000)}

    async def backend(cid: str, request: web.Request) -> None:
        # Half the backends are faster than the 202, half slower.
        if rng.random() < 0.5:
            await env.publish(cid, outcomes[cid], {"cid": cid, "reason": cid})

    env.api.before_accept = backend
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
    tracked: list[TrackedCall | None] = []

    async def all_tracked() -> bool:
        nonlocal tracked
        tracked = await tracker.get_many(list(outcomes))
        return None not in tracked

    await until_true(all_tracked, timeout_s=10, every_s=0.05, what="every call tracked")
    assert {t.correlation_id for t in tracked if t} == set(outcomes)


async def test_redis_restart_falls_back_to_202_then_recovers(
    stream_env: StreamEnvFactory, own_redis: RedisServer
) -> None:
    env = await stream_env(url=own_redis.url, budget="300ms")
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
        assert ready.status == 200  # still serving: calls fall back to 202
        body = await ready.json()
        assert body["status"] == "ready (degraded)"
        assert any(k.startswith("redis ") for k in body["reasons"])
    own_redis.start()
    await asyncio.wait_for(hub.connected.wait(), 10)
    redis = aioredis.Redis.from_url(own_redis.url)
    env.redis = redis

    async def publish_first(cid: str, request: web.Request) -> None:
        await env.publish(cid, OK, {"back": True})

    env.api.before_accept = publish_first
    resp = await post_user(env, "u-back")
    assert resp.status == 200
    assert await resp.json() == {"back": True}
    async with env.client.session.get(f"{admin}/readyz") as ready:
        assert ready.status == 200
        assert (await ready.json())["status"] == "ready"
    await redis.aclose()


async def test_the_route_max_waiting_gauge(stream_env: StreamEnvFactory) -> None:
    env = await stream_env(max_waiting=7)
    assert metric(env.client, "sidecar_route_max_waiting", route="create-user") == 7


async def test_a_route_waiting_on_the_wrong_id_is_diagnosed(
    stream_env: StreamEnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # The backend puts its own id in `correlation_id`, not the one the sidecar sent: no call
    # ever wakes, and the sidecar says why it probably is so.
    env = await stream_env(budget="150ms")

    async def own_ids(cid: str, request: web.Request) -> None:
        await env.publish(f"backend-{cid}", OK, {"id": 1})

    env.api.before_accept = own_ids
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


async def test_no_diagnosis_while_calls_do_complete(stream_env: StreamEnvFactory) -> None:
    env = await stream_env(budget="150ms")

    async def complete_some(cid: str, request: web.Request) -> None:
        await env.publish(cid if cid.endswith("0") else f"other-{cid}", OK, {"id": 1})

    env.api.before_accept = complete_some
    statuses = [(await post_user(env, f"u-{n}")).status for n in range(5)]
    assert statuses == [200, 202, 202, 202, 202]  # another replica's events are normal too
    assert (
        metric(env.client, "sidecar_route_misconfiguration_suspected_total", route="create-user")
        == 0
    )
