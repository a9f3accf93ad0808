"""`GET /admin/api/operations/{correlation_id}`: one call's whole story, in order, for its owner
and the operator, from what the sidecar recorded of the call and of its deliveries."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.state import ADMIN_URL

from ..conftest import SidecarFactory, Upstream
from ..helpers import until, until_true
from ..operations_support import A, B, Orders, OrdersFactory, start_orders

OPERATOR = "Bearer op-token"


@pytest.fixture
async def orders(
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> OrdersFactory:
    async def make(**kwargs: Any) -> Orders:
        kwargs.setdefault(
            "webhooks", {"allow_private_targets": True, "schedule": ["50ms"], "timeout": "2s"}
        )
        return await start_orders(
            start_upstream, start_sidecar, redis, redis_url, key_prefix, **kwargs
        )

    return make


async def admin(
    client: TestClient, method: str, path: str, credential: str | None, body: Any = None
) -> tuple[int, Any]:
    url = client.app[ADMIN_URL] + "/admin/api" + path
    headers = {"Authorization": credential} if credential else {}
    async with client.session.request(method, url, headers=headers, json=body) as resp:
        return resp.status, (await resp.json() if resp.status != 204 else None)


async def timeline(client: TestClient, cid: str, credential: str | None = A) -> dict[str, Any]:
    status, body = await admin(client, "GET", f"/operations/{cid}", credential)
    assert status == 200, body
    return dict(body)


def kinds(op: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in op["events"]]


async def place(client: TestClient, **headers: str) -> Any:
    return await client.post(
        "/orders", data=b'{"item": "chair"}', headers={"Authorization": A, **headers}
    )


async def test_a_fallback_then_a_completion_then_a_retried_delivery_in_order(
    orders: OrdersFactory, start_upstream: Upstream
) -> None:
    got: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(1)
        return web.Response(status=500 if len(got) == 1 else 204)

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    receiver = await start_upstream(receiver_app)
    env = await orders()
    status, sub = await admin(
        env.sidecar,
        "POST",
        "/subscriptions",
        A,
        {"url": str(receiver.make_url("/hook")), "events": ["*"]},
    )
    assert status == 201
    accepted = await place(env.sidecar, Prefer="wait=0.05")  # held briefly, then the 202
    assert accepted.status == 202
    cid = accepted.headers["X-Correlation-ID"]
    await env.api.complete(cid, {"order": 42})
    await until(lambda: len(got) == 2, timeout_s=10)

    async def delivered() -> bool:
        return "delivered" in [
            e.get("result") for e in (await timeline(env.sidecar, cid))["events"]
        ]

    await until_true(delivered)
    op = await timeline(env.sidecar, cid)
    assert kinds(op) == [
        "received",
        "forwarded",
        "upstream_answered",
        "held",
        "fallback",
        "answered",
        "completed",
        "webhook_attempt",
        "webhook_attempt",
    ]
    events = {e["kind"]: e for e in op["events"]}
    assert op["state"] == "succeeded" and op["route"] == "place-order"
    assert op["correlation_id"] == cid and op["location"] == f"/orders/{cid}"
    assert events["received"]["method"] == "POST" and events["received"]["path"] == "/orders"
    assert events["upstream_answered"]["status"] == 202
    assert events["upstream_answered"]["location"] == f"/orders/{cid}"
    assert events["fallback"]["reason"] == "budget"
    assert events["answered"]["status"] == 202
    assert events["completed"]["source"] == "stream"
    assert events["completed"]["event_type"] == "Order::Placed"
    assert events["completed"]["state"] == "succeeded"
    first, second = [e for e in op["events"] if e["kind"] == "webhook_attempt"]
    assert (first["status"], first["result"], first["attempt"]) == (500, "retry", 1)
    assert (second["status"], second["result"], second["attempt"]) == (204, "delivered", 2)
    assert first["subscription"] == second["subscription"] == sub["id"]
    assert first["message_id"] == second["message_id"]
    ats = [e["at"] for e in op["events"]]
    assert ats == sorted(ats)
    assert "owner" not in op  # the client sees its own, not who owns it


async def test_a_held_call_answered_with_its_result(orders: OrdersFactory) -> None:
    env = await orders()
    call = asyncio.create_task(place(env.sidecar))
    await until(lambda: env.waiting() == 1 and len(env.api.calls) == 1)
    cid = env.api.calls[0]["cid"]
    await env.api.complete(cid, {"order": 1})
    assert (await call).status == 200

    async def answered() -> bool:
        return "answered" in kinds(await timeline(env.sidecar, cid))

    await until_true(answered)
    op = await timeline(env.sidecar, cid)
    assert kinds(op) == [
        "received",
        "forwarded",
        "upstream_answered",
        "held",
        "completed",
        "answered",
    ]
    answered_event = op["events"][-1]
    assert answered_event["status"] == 200 and answered_event["outcome"] == "sync_success"
    assert answered_event["after_ms"] >= 0


async def test_retries_long_polls_and_status_reads_are_on_the_first_calls_timeline(
    orders: OrdersFactory,
) -> None:
    env = await orders()
    key = {"Idempotency-Key": "k-1"}
    first = await place(env.sidecar, Prefer="respond-async", **key)
    cid = first.headers["X-Correlation-ID"]
    again = await place(env.sidecar, Prefer="respond-async", **key)
    assert again.headers["Idempotent-Replayed"] == "true"
    poll = await env.sidecar.get(first.headers["Location"], headers={"Prefer": "wait=0.05"})
    assert poll.status == 202
    await env.api.complete(cid, {"order": 2})

    async def succeeded() -> bool:
        return (await timeline(env.sidecar, cid))["state"] == "succeeded"

    await until_true(succeeded)
    replayed = await place(env.sidecar, **key)
    assert (replayed.status, replayed.headers["Idempotent-Replayed"]) == (200, "true")

    async def noted() -> bool:
        return "idempotent_replay" in kinds(await timeline(env.sidecar, cid))

    await until_true(noted)
    op = await timeline(env.sidecar, cid)
    attach = next(e for e in op["events"] if e["kind"] == "idempotent_attach")
    assert attach["status"] == 202
    replay = next(e for e in op["events"] if e["kind"] == "idempotent_replay")
    assert replay["status"] == 200
    assert "long_poll" in kinds(op)


async def test_a_call_the_upstream_answered_at_once_has_a_timeline_too(
    orders: OrdersFactory,
) -> None:
    env = await orders()
    env.api.status, env.api.answer_body = 409, b'{"error": "duplicate"}'
    resp = await place(env.sidecar)
    assert resp.status == 409
    cid = resp.headers["X-Correlation-ID"]

    async def written() -> bool:
        status, _ = await admin(env.sidecar, "GET", f"/operations/{cid}", A)
        return bool(status == 200)

    await until_true(written)
    op = await timeline(env.sidecar, cid)
    assert kinds(op) == ["received", "forwarded", "upstream_answered", "answered"]
    assert op["state"] == "failed"
    assert op["events"][-1]["status"] == 409


async def test_only_its_owner_and_the_operator_see_an_operation(orders: OrdersFactory) -> None:
    env = await orders()
    cid = (await place(env.sidecar, Prefer="respond-async")).headers["X-Correlation-ID"]
    await until_true(lambda: _visible(env, cid))
    as_operator = await timeline(env.sidecar, cid, OPERATOR)
    assert as_operator["owner"].startswith("t_")
    assert as_operator["state"] == "pending"
    for who, expected in ((B, 404), (None, 401)):
        status, problem = await admin(env.sidecar, "GET", f"/operations/{cid}", who)
        assert status == expected
        assert problem["status"] == expected
    for bad in ("nope", "a" * 129, "bad%20id"):
        status, _ = await admin(env.sidecar, "GET", f"/operations/{bad}", OPERATOR)
        assert status == 404


async def _visible(env: Orders, cid: str) -> bool:
    status, _ = await admin(env.sidecar, "GET", f"/operations/{cid}", A)
    return bool(status == 200)


async def test_an_operation_not_followed_any_more_is_expired(
    orders: OrdersFactory, redis: aioredis.Redis
) -> None:
    env = await orders()
    cid = (await place(env.sidecar, Prefer="respond-async")).headers["X-Correlation-ID"]
    await until_true(lambda: _visible(env, cid))
    await redis.delete(f"{env.prefix}:call:{{{cid}}}")  # its tracking ran out
    assert (await timeline(env.sidecar, cid))["state"] == "expired"


async def test_without_redis_there_are_no_operations(
    start_sidecar: SidecarFactory,
) -> None:
    sidecar = await start_sidecar("http://127.0.0.1:9", admin_token="op-token")
    async with aiohttp.ClientSession() as http:
        url = sidecar.app[ADMIN_URL] + "/admin/api/operations/abc"
        async with http.get(url, headers={"Authorization": OPERATOR}) as resp:
            assert resp.status == 503
