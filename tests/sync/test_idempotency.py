"""Idempotency-Key, black-box: real Redis, a real upstream that counts its commands, the real
sidecar (one, or two replicas on one Redis and one key prefix)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from devtools.redis_server import RedisServer
from sidecar.keys import idempotency_key
from sidecar.operations.records import IdemHold, fingerprint, scope_digest
from sidecar.state import HASHER
from sidecar.tenancy import tenant_of

from ..conftest import SidecarFactory, Upstream
from ..helpers import metric, until, until_true
from ..operations_support import A, B, Orders, OrdersFactory, order_route, start_orders

ORDER = {"item": "book", "qty": 1}


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


async def place(
    client: TestClient,
    key: str | None = "order-1",
    *,
    credential: str = A,
    body: Any = ORDER,
    **headers: str,
) -> Any:
    sent = {"Authorization": credential, **headers}
    if key is not None:
        sent["Idempotency-Key"] = key
    return await client.post("/orders", data=orjson.dumps(body), headers=sent)


def idempotent(client: TestClient, result: str) -> float:
    return metric(client, "sidecar_idempotent_requests_total", route="place-order", result=result)


async def test_concurrent_and_later_retries_run_the_command_once_and_get_one_answer(
    orders: OrdersFactory,
) -> None:
    env = await orders()
    first = asyncio.create_task(place(env.sidecar))
    await until(lambda: env.waiting() == 1)
    retries = [asyncio.create_task(place(env.sidecar)) for _ in range(2)]
    # Both retries see the first call's operation and wait on its completion too.
    await until(lambda: env.waiting() == 3)
    cid = env.api.calls[0]["cid"]
    await env.api.complete(cid, {"order": 7, "state": "placed"})
    held = [await first, *[await r for r in retries]]
    await until_true(lambda: _outcome_known(env, cid))  # written a moment after the answers
    later = [await place(env.sidecar) for _ in range(2)]
    assert len(env.api.calls) == 1
    answers = held + later
    assert [r.status for r in answers] == [200] * 5
    assert [await r.json() for r in answers] == [{"order": 7, "state": "placed"}] * 5
    assert {r.headers["X-Correlation-ID"] for r in answers} == {cid}
    assert "Idempotent-Replayed" not in held[0].headers
    assert [r.headers.get("Idempotent-Replayed") for r in answers[1:]] == ["true"] * 4
    assert idempotent(env.sidecar, "new") == 1
    assert idempotent(env.sidecar, "attach") == 2
    assert idempotent(env.sidecar, "replay") == 2


async def test_another_clients_same_key_is_its_own_operation(orders: OrdersFactory) -> None:
    env = await orders()
    mine = await place(env.sidecar, "shared-key", credential=A, Prefer="respond-async")
    theirs = await place(env.sidecar, "shared-key", credential=B, Prefer="respond-async")
    assert (mine.status, theirs.status) == (202, 202)
    assert len(env.api.calls) == 2
    assert mine.headers["X-Correlation-ID"] != theirs.headers["X-Correlation-ID"]
    assert "Idempotent-Replayed" not in theirs.headers


async def test_the_same_key_with_another_body_is_422(orders: OrdersFactory) -> None:
    env = await orders()
    first = await place(env.sidecar, Prefer="respond-async")
    assert first.status == 202
    other = await place(env.sidecar, body={"item": "pen", "qty": 9})
    assert other.status == 422
    assert other.headers["Content-Type"] == "application/problem+json"
    problem = await other.json()
    assert "another request" in problem["detail"]
    assert problem["correlation_id"] == other.headers["X-Correlation-ID"]
    assert len(env.api.calls) == 1
    assert idempotent(env.sidecar, "mismatch") == 1


@pytest.mark.parametrize(
    ("key", "extra"),
    [
        ("", None),
        ("   ", None),
        ('""', None),
        ("k" * 256, None),
        ("caf\u00e9", None),
        ("one", "two"),
    ],
    ids=["empty", "blank", "empty-quoted", "overlong", "non-ascii", "twice"],
)
async def test_an_empty_overlong_or_repeated_key_is_400(
    orders: OrdersFactory, key: str, extra: str | None
) -> None:
    env = await orders()
    headers = [("Authorization", A), ("Idempotency-Key", key)]
    if extra is not None:
        headers.append(("Idempotency-Key", extra))
    # As sent on the wire: UTF-8 bytes (the client library takes Latin-1 text).
    wire = CIMultiDict([(k, v.encode("utf-8").decode("latin-1")) for k, v in headers])
    resp = await env.sidecar.post("/orders", data=orjson.dumps(ORDER), headers=wire)
    assert resp.status == 400
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert "Idempotency-Key" in (await resp.json())["detail"]
    assert env.api.calls == []
    assert idempotent(env.sidecar, "invalid") == 1


async def test_a_quoted_key_and_the_longest_key_are_keys(orders: OrdersFactory) -> None:
    env = await orders()
    quoted = await place(env.sidecar, '"8e03978e-40d5"', Prefer="respond-async")
    bare = await place(env.sidecar, "8e03978e-40d5", Prefer="respond-async")
    longest = await place(env.sidecar, "k" * 255, Prefer="respond-async")
    assert (quoted.status, bare.status, longest.status) == (202, 202, 202)
    assert bare.headers["Idempotent-Replayed"] == "true"  # the quoted form is the same key
    assert len(env.api.calls) == 2


async def test_an_upstream_5xx_releases_the_key_and_a_later_answer_is_replayed(
    orders: OrdersFactory,
) -> None:
    env = await orders()
    env.api.status = 503
    failed = await place(env.sidecar)
    assert failed.status == 503
    assert idempotent(env.sidecar, "new") == 1
    # The 5xx let the key go: the retry is forwarded again, and this time the API answers
    # at once (no 202): that answer is the outcome, replayed as it was.
    env.api.status, env.api.answer_body = 201, b'{"order": 9}'
    await until_true(lambda: _released(env))
    created = await place(env.sidecar)
    await until_true(lambda: _outcome_known(env, created.headers["X-Correlation-ID"]))
    again = await place(env.sidecar)
    assert len(env.api.calls) == 2
    assert (created.status, again.status) == (201, 201)
    assert await created.read() == await again.read() == b'{"order": 9}'
    assert again.headers["Content-Type"] == "application/json"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["X-Correlation-ID"] == created.headers["X-Correlation-ID"]


async def _outcome_known(env: Orders, cid: str) -> bool:
    return await env.api.redis.hget(f"{env.prefix}:op:{{{cid}}}", "done") == b"1"


async def _released(env: Orders) -> bool:
    tenant = tenant_of(A, await env.sidecar.app[HASHER].key())
    key = idempotency_key(env.prefix, scope_digest(tenant, "place-order", "order-1"))
    return not await env.api.redis.exists(key)


async def test_a_502_of_ours_releases_the_key(
    start_sidecar: SidecarFactory, redis: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    route = order_route(f"{key_prefix}:orders.events")
    sidecar = await start_sidecar(
        "http://127.0.0.1:9", redis_url=redis_url, key_prefix=key_prefix, routes=[route]
    )
    for _ in range(2):  # the upstream is unreachable: each retry tries it again
        resp = await place(sidecar)
        assert resp.status == 502
        assert resp.headers["Content-Type"] == "application/problem+json"
    assert idempotent(sidecar, "new") == 2
    assert idempotent(sidecar, "released") == 2


async def test_a_retry_after_a_fallback_202_waits_for_the_completion(
    orders: OrdersFactory,
) -> None:
    env = await orders()
    first = await place(env.sidecar, Prefer="respond-async")
    assert first.status == 202
    cid = first.headers["X-Correlation-ID"]
    retry = asyncio.create_task(place(env.sidecar, Prefer="wait=5"))
    await until(lambda: env.waiting() == 1)
    await env.api.complete(cid, {"order": 3})
    answer = await retry
    assert answer.status == 200
    assert await answer.json() == {"order": 3}
    assert answer.headers["Idempotent-Replayed"] == "true"
    assert answer.headers["X-Correlation-ID"] == cid
    # Its budget run out before the completion, a retry gets the first 202 again.
    first_again = await place(env.sidecar, "order-2", Prefer="respond-async")
    again = await place(env.sidecar, "order-2", Prefer="wait=0.1")
    assert again.status == 202
    assert again.headers["Location"] == first_again.headers["Location"]
    assert again.headers["Retry-After"] == "1"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(env.api.calls) == 2


async def test_a_retry_while_the_first_is_still_forwarded_is_409_at_its_budget(
    orders: OrdersFactory,
) -> None:
    env = await orders()
    env.api.gate = asyncio.Event()
    first = asyncio.create_task(place(env.sidecar))
    await asyncio.wait_for(env.api.arrived.wait(), 5)
    busy = await place(env.sidecar, Prefer="wait=0.2")
    assert busy.status == 409
    assert busy.headers["Retry-After"] == "1"
    assert "still being forwarded" in (await busy.json())["detail"]
    env.api.gate.set()
    await until(lambda: env.waiting() == 1)
    await env.api.complete(env.api.calls[0]["cid"], {"order": 1})
    assert (await first).status == 200
    assert len(env.api.calls) == 1


async def test_a_client_leaving_mid_forward_does_not_run_the_command_twice(
    orders: OrdersFactory,
) -> None:
    env = await orders()
    env.api.gate = asyncio.Event()
    leaving = asyncio.create_task(place(env.sidecar))
    await asyncio.wait_for(env.api.arrived.wait(), 5)
    leaving.cancel()  # the client gives up while the upstream still works on it
    with pytest.raises(asyncio.CancelledError):
        await leaving
    env.api.gate.set()
    retry = asyncio.create_task(place(env.sidecar))
    await until(lambda: env.waiting() == 1)  # attached to the first call's operation
    await env.api.complete(env.api.calls[0]["cid"], {"order": 5})
    answer = await retry
    assert answer.status == 200 and await answer.json() == {"order": 5}
    assert answer.headers["Idempotent-Replayed"] == "true"
    assert len(env.api.calls) == 1


async def test_a_retry_on_another_replica_attaches_to_the_first(orders: OrdersFactory) -> None:
    env = await orders(replicas=2)
    one, two = env.sidecars
    first = asyncio.create_task(place(one))
    await until(lambda: env.waiting(0) == 1 and len(env.api.calls) == 1)
    retry = asyncio.create_task(place(two))
    await until(lambda: env.waiting(1) == 1)
    await env.api.complete(env.api.calls[0]["cid"], {"order": 11})
    answers = [await first, await retry]
    assert [a.status for a in answers] == [200, 200]
    assert [await a.json() for a in answers] == [{"order": 11}] * 2
    assert len(env.api.calls) == 1
    await until_true(lambda: _outcome_known(env, env.api.calls[0]["cid"]))
    later = await place(two)
    assert later.headers["Idempotent-Replayed"] == "true"
    assert await later.json() == {"order": 11}


async def test_a_failed_completion_is_replayed_not_retried(orders: OrdersFactory) -> None:
    env = await orders()
    first = asyncio.create_task(place(env.sidecar))
    await until(lambda: env.waiting() == 1 and len(env.api.calls) == 1)
    cid = env.api.calls[0]["cid"]
    await env.api.complete(cid, {"reason": "out of stock"}, ok=False)
    failed = await first
    await until_true(lambda: _outcome_known(env, cid))
    again = await place(env.sidecar)
    assert (failed.status, again.status) == (500, 500)
    assert again.headers["Content-Type"] == "application/problem+json"
    problem = await again.json()
    assert problem["detail"] == "out of stock"
    assert problem["correlation_id"] == cid
    assert len(env.api.calls) == 1


async def test_a_key_whose_holder_died_mid_forward_is_taken_over(
    orders: OrdersFactory,
) -> None:
    env = await orders()
    # A replica claimed the key and died before the upstream answered: its lease ran out.
    tenant = tenant_of(A, await env.sidecar.app[HASHER].key())
    scope = scope_digest(tenant, "place-order", "order-1")
    dead = IdemHold("deadbeef", fingerprint("POST", "/orders", orjson.dumps(ORDER)), 1, "")
    await env.api.redis.set(idempotency_key(env.prefix, scope), dead.encode(), px=60_000)
    resp = await place(env.sidecar, Prefer="respond-async")
    assert resp.status == 202
    assert "Idempotent-Replayed" not in resp.headers
    assert len(env.api.calls) == 1


async def test_without_a_key_a_call_is_simply_forwarded(orders: OrdersFactory) -> None:
    env = await orders()
    for _ in range(2):
        assert (await place(env.sidecar, None, Prefer="respond-async")).status == 202
    assert len(env.api.calls) == 2
    assert idempotent(env.sidecar, "new") == 0


async def test_the_access_log_says_what_the_key_did(
    orders: OrdersFactory, caplog: pytest.LogCaptureFixture
) -> None:
    env = await orders()
    with caplog.at_level(logging.INFO, logger="sidecar.access"):
        await place(env.sidecar, Prefer="respond-async")
        await place(env.sidecar, Prefer="respond-async")
    said = [r.__dict__.get("idempotency") for r in caplog.records if r.name == "sidecar.access"]
    assert said == ["new", "attach"]


async def test_with_redis_down_a_call_with_a_key_is_forwarded_as_the_api_alone_would_have_it(
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    own_redis: RedisServer,
    key_prefix: str,
) -> None:
    client = aioredis.Redis.from_url(own_redis.url)
    route = order_route(f"{key_prefix}:orders.events", budget="300ms")
    env = await start_orders(
        start_upstream, start_sidecar, client, own_redis.url, key_prefix, route=route
    )
    own_redis.stop()
    resp = await place(env.sidecar)
    assert resp.status == 202  # never a 5xx of ours
    assert "Idempotent-Replayed" not in resp.headers
    assert len(env.api.calls) == 1
    assert idempotent(env.sidecar, "unavailable") == 1
    await client.aclose()
