"""The sidecar's own status monitor, black-box: `GET {operations.path}/{token}` on the proxy
listener of any replica, answered from Redis; expunged by the operator; kept for its retention
and no more, and only for the caller it belongs to."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from sidecar.state import ADMIN_URL

from .conftest import SidecarFactory, Upstream
from .helpers import keys_like, metric, until, until_true
from .operations_support import A, B, Orders, OrdersFactory, order_route, start_orders

PATH = "/.sidecar/operations/"


@pytest.fixture
async def orders(
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> OrdersFactory:
    async def make(**kwargs: Any) -> Orders:
        return await start_orders(
            start_upstream, start_sidecar, redis, redis_url, key_prefix, **kwargs
        )

    return make


async def place(client: TestClient, credential: str | None = A, **headers: str) -> Any:
    sent = {"Authorization": credential, **headers} if credential else headers
    return await client.post("/orders", data=b'{"item": "lamp"}', headers=sent)


async def status(client: TestClient, location: str, credential: str | None = A, **h: str) -> Any:
    sent = {"Authorization": credential, **h} if credential else h
    return await client.get(location, headers=sent)


def reads(client: TestClient, result: str) -> float:
    return metric(client, "sidecar_operation_status_reads_total", result=result)


async def test_a_202_without_a_location_gets_the_sidecars_which_answers_on_every_replica(
    orders: OrdersFactory,
) -> None:
    env = await orders(location=False, replicas=2)
    one, two = env.sidecars
    accepted = await place(one, Prefer="respond-async")
    assert accepted.status == 202
    location = accepted.headers["Location"]
    cid = accepted.headers["X-Correlation-ID"]
    assert location.startswith(PATH)
    token = location.removeprefix(PATH)
    assert len(token) == 43 and cid not in token  # 256 random bits, not the correlation id
    assert accepted.headers["Retry-After"] == "1"

    pending = await status(one, location)
    assert pending.status == 202
    assert pending.headers["Retry-After"] == "1"
    assert pending.headers["X-Correlation-ID"] == cid
    assert await pending.json() == {
        "correlation_id": cid,
        "state": "pending",
        "route": "place-order",
    }

    await env.api.complete(cid, {"order": 21, "state": "placed"})
    done = None
    for replica in (one, two):

        async def answered(replica: TestClient = replica) -> bool:
            nonlocal done
            done = await status(replica, location)
            return bool(done.status == 200)

        await until_true(answered)
        assert done is not None
        assert await done.json() == {"order": 21, "state": "placed"}
        assert done.headers["Content-Type"] == "application/json"
        assert done.headers["X-Correlation-ID"] == cid

    for who in (B, None):
        other = await status(two, location, who)
        assert other.status == 404
        assert other.headers["Content-Type"] == "application/problem+json"
        assert (await other.json())["correlation_id"] == other.headers["X-Correlation-ID"] != cid
    assert len(env.api.calls) == 1
    assert reads(one, "pending") >= 1 and reads(two, "not_found") == 2


async def test_respond_location_sidecar_replaces_the_apis_location_and_holds_with_prefer(
    orders: OrdersFactory, key_prefix: str
) -> None:
    route = order_route(f"{key_prefix}:orders.events", respond={"location": "sidecar"})
    route.pop("idempotency")
    env = await orders(route=route)
    accepted = await place(env.sidecar, Prefer="respond-async")
    location = accepted.headers["Location"]
    assert location.startswith(PATH)
    cid = accepted.headers["X-Correlation-ID"]
    held = asyncio.create_task(status(env.sidecar, location, Prefer="wait=5"))
    await until(lambda: env.waiting() == 1)
    await env.api.complete(cid, {"order": 4})
    answer = await held
    assert answer.status == 200
    assert await answer.json() == {"order": 4}
    assert answer.headers["Preference-Applied"] == "wait=5"
    assert answer.headers["Content-Location"] == location  # the result's own address
    # A held call's answer points at the sidecar too, never at the API's internal Location.
    sync = asyncio.create_task(place(env.sidecar))
    await until(lambda: env.waiting() == 1 and len(env.api.calls) == 2)
    await env.api.complete(env.api.calls[1]["cid"], {"order": 5})
    assert (await sync).headers["Content-Location"].startswith(PATH)


async def test_prefer_wait_on_a_pending_status_answers_202_when_it_runs_out(
    orders: OrdersFactory,
) -> None:
    env = await orders(location=False)
    location = (await place(env.sidecar, Prefer="respond-async")).headers["Location"]
    still = await status(env.sidecar, location, Prefer="wait=0.1")
    assert still.status == 202
    assert still.headers["Preference-Applied"] == "wait=0.1"


async def test_a_failed_operation_answers_the_failure_problem(orders: OrdersFactory) -> None:
    env = await orders(location=False)
    accepted = await place(env.sidecar, Prefer="respond-async")
    cid = accepted.headers["X-Correlation-ID"]
    await env.api.complete(cid, {"reason": "no stock"}, ok=False)

    async def failed() -> bool:
        resp = await status(env.sidecar, accepted.headers["Location"])
        return bool(resp.status == 500)

    await until_true(failed)
    resp = await status(env.sidecar, accepted.headers["Location"])
    assert resp.headers["Content-Type"] == "application/problem+json"
    problem = await resp.json()
    assert (problem["detail"], problem["correlation_id"]) == ("no stock", cid)


async def test_a_poll_only_route_answers_once_its_poller_learns_the_completion(
    orders: OrdersFactory,
) -> None:
    route = {
        "name": "place-order",
        "method": "POST",
        "path": "/orders",
        "wait": {"poll": {"interval": "10ms", "max_interval": "20ms", "track_for": "10s"}},
        "respond": {"location": "sidecar"},
    }
    env = await orders(route=route)
    accepted = await place(env.sidecar, Prefer="respond-async")
    location = accepted.headers["Location"]
    assert location.startswith(PATH)
    held = asyncio.create_task(status(env.sidecar, location, Prefer="wait=5"))
    env.api.done[env.api.calls[0]["cid"]] = {"order": 8}  # its status URL now says done
    answer = await held
    assert answer.status == 200
    assert await answer.json() == {"order": 8}


async def test_unknown_malformed_and_other_methods(orders: OrdersFactory) -> None:
    env = await orders(location=False)
    for path in (PATH + "A" * 43, PATH + "short", PATH + "x/y", PATH):
        resp = await status(env.sidecar, path)
        assert resp.status == 404, path
        assert resp.headers["Content-Type"] == "application/problem+json"
    post = await env.sidecar.post(PATH + "A" * 43)
    assert post.status == 405
    assert post.headers["Allow"] == "GET, HEAD"
    assert env.api.calls == []  # none of these reached the API


async def test_a_call_without_a_credential_is_readable_with_its_token_alone(
    orders: OrdersFactory,
) -> None:
    env = await orders(location=False)
    accepted = await place(env.sidecar, None, Prefer="respond-async")
    resp = await status(env.sidecar, accepted.headers["Location"], B)
    assert resp.status == 202


async def test_the_operator_expunges_an_operation(
    orders: OrdersFactory, redis: aioredis.Redis
) -> None:
    env = await orders(location=False)
    accepted = await place(env.sidecar, Prefer="respond-async")
    cid = accepted.headers["X-Correlation-ID"]
    admin = env.sidecar.app[ADMIN_URL] + "/admin/api/operations/" + cid
    session = env.sidecar.session
    async with session.delete(admin, headers={"Authorization": A}) as refused:
        assert refused.status == 403
    async with session.delete(admin, headers={"Authorization": "Bearer op-token"}) as gone:
        assert gone.status == 204
    assert (await status(env.sidecar, accepted.headers["Location"])).status == 404
    async with session.get(admin, headers={"Authorization": "Bearer op-token"}) as resp:
        assert resp.status == 404
    assert await keys_like(redis, f"{env.prefix}:op:*") == []
    assert await keys_like(redis, f"{env.prefix}:optoken:*") == []
    assert await keys_like(redis, f"{env.prefix}:idem:*") == []
    # A retry with the forgotten key is a new call.
    again = await place(env.sidecar, Prefer="respond-async", **{"Idempotency-Key": "x"})
    assert again.status == 202 and len(env.api.calls) == 2


async def test_a_status_url_answers_for_its_retention_and_then_404(orders: OrdersFactory) -> None:
    env = await orders(location=False, operations={"retention": "1s"})
    location = (await place(env.sidecar, Prefer="respond-async")).headers["Location"]
    assert (await status(env.sidecar, location)).status == 202

    async def forgotten() -> bool:
        return bool((await status(env.sidecar, location)).status == 404)

    await until_true(forgotten, timeout_s=5)


async def test_a_result_larger_than_max_result_is_not_kept(orders: OrdersFactory) -> None:
    env = await orders(location=False, operations={"max_result": 16})
    accepted = await place(env.sidecar, Prefer="respond-async")
    await env.api.complete(accepted.headers["X-Correlation-ID"], {"big": "x" * 100})

    async def gone() -> bool:
        resp = await status(env.sidecar, accepted.headers["Location"])
        return bool(resp.status == 410)

    await until_true(gone)
    resp = await status(env.sidecar, accepted.headers["Location"])
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert "max_result" in (await resp.json())["detail"]


async def test_what_an_operation_keeps_in_redis_is_bounded_and_expires(
    orders: OrdersFactory, redis: aioredis.Redis
) -> None:
    env = await orders(location=False, tracking_ttl="1h")
    accepted = await place(env.sidecar, Prefer="respond-async")
    cid = accepted.headers["X-Correlation-ID"]
    op = f"{env.prefix}:op:{{{cid}}}"
    assert await redis.hget(op, "route") == b"place-order"
    assert 3_500 < await redis.ttl(f"{op}:ev") <= 3_600  # the tracking TTL
    assert 86_000 < await redis.ttl(op) <= 86_400  # retention and the key's ttl: 24h
    [token] = await keys_like(redis, f"{env.prefix}:optoken:*")
    assert 86_000 < await redis.ttl(token) <= 86_400
    assert (await redis.get(token)).decode().endswith(" " + cid)
    kinds = [orjson.loads(e)["k"] for e in await redis.lrange(f"{op}:ev", 0, -1)]
    assert kinds[:4] == ["received", "forwarded", "upstream_answered", "fallback"]
    # A client reading the status URL over and over fills at most the list's bound.
    for _ in range(70):
        await status(env.sidecar, accepted.headers["Location"])
    await until_true(lambda: _dropped(redis, op))
    assert await redis.llen(f"{op}:ev") <= 100


async def _dropped(redis: aioredis.Redis, op: str) -> bool:
    return bool(await redis.hget(op, "dropped"))


async def test_a_reused_correlation_id_never_reads_the_earlier_calls_operation(
    orders: OrdersFactory, redis: aioredis.Redis
) -> None:
    env = await orders(location=False, tracking_ttl="1s")
    first = await place(env.sidecar, A, Prefer="respond-async", **{"X-Correlation-ID": "mine-1"})
    assert first.headers["X-Correlation-ID"] == "mine-1"
    await env.api.complete("mine-1", {"secret": "of A"})

    async def done() -> bool:
        return bool((await status(env.sidecar, first.headers["Location"])).status == 200)

    await until_true(done)

    async def claim_expired() -> bool:
        keys = [f"{env.prefix}:claim:{{mine-1}}", f"{env.prefix}:call:{{mine-1}}"]
        return not await redis.exists(*keys)

    await until_true(claim_expired, timeout_s=5)  # its operation is kept longer (retention)
    second = await place(env.sidecar, B, Prefer="respond-async", **{"X-Correlation-ID": "mine-1"})
    assert second.headers["X-Correlation-ID"] == "mine-1"  # free again: B's now
    theirs = await status(env.sidecar, second.headers["Location"], B)
    assert theirs.status == 202  # B's own, pending: nothing of A's
    assert (await status(env.sidecar, first.headers["Location"], A)).status == 404


async def test_a_202_the_sidecar_cannot_follow_gets_no_status_url(
    orders: OrdersFactory, key_prefix: str
) -> None:
    # The id is to come from the Location, and the API sent none: nothing to wait on, so no
    # status URL either (nothing would ever answer it).
    route = order_route(
        f"{key_prefix}:orders.events",
        correlation={"source": "location"},
        respond={"location": "sidecar"},
    )
    env = await orders(route=route, location=False)
    resp = await place(env.sidecar)
    assert resp.status == 202
    assert "Location" not in resp.headers
