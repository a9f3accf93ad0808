"""Bounds that hold however many clients there are: without `tenancy.verify` any string is a
client of its own, so limits per client alone multiply with every string invented. All clients
together hold at most `max_subscriptions`, send at most `test_sends_per_minute_total` tests a
minute and `test_data_per_hour` bytes of test data an hour; a test holds at most 64 KiB and is
kept `test_retention`. The operator is not limited."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from sidecar.metrics import METRICS

from ..admin_support import OP, Admin
from ..conftest import StartAdmin
from ..helpers import keys_like, until_true

HOOK = "http://127.0.0.1:9/hook"


def client(n: int) -> dict[str, str]:
    return {"Authorization": f"Bearer invented-{n}"}


def refusals(admin: Admin, quota: str) -> float:
    registry = admin.app[METRICS].registry
    value = registry.get_sample_value("sidecar_webhook_quota_refusals_total", {"quota": quota})
    return value or 0.0


async def test_clients_together_hold_at_most_max_subscriptions(start_admin: StartAdmin) -> None:
    admin = await start_admin(webhooks={"allow_private_targets": True, "max_subscriptions": 3})
    for n in range(3):
        await admin.create(client(n), HOOK)
    refused = await admin.call("POST", "/subscriptions", client(3), {"url": HOOK, "events": ["*"]})
    assert refused.status == 409
    assert refused.body["limit"] == 3
    assert "3 client subscriptions" in refused.body["detail"]
    await admin.create(OP, HOOK)  # the operator is not counted, nor limited
    assert refusals(admin, "subscriptions_total") == 1
    listed = await admin.call("GET", "/subscriptions", OP)
    assert len(listed.body["subscriptions"]) == 4


async def test_clients_together_send_at_most_so_many_tests_a_minute(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin(
        webhooks={"allow_private_targets": True, "test_sends_per_minute_total": 2}
    )
    subs = [(client(n), (await admin.create(client(n), HOOK))["id"]) for n in range(3)]
    for headers, sub in subs[:2]:
        assert (await admin.call("POST", f"/subscriptions/{sub}/test", headers)).status == 202
    headers, sub = subs[2]
    refused = await admin.call("POST", f"/subscriptions/{sub}/test", headers)
    assert refused.status == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "all clients together may send 2 test messages a minute" in refused.body["detail"]
    operator_sub = (await admin.create(OP, HOOK))["id"]
    assert (await admin.call("POST", f"/subscriptions/{operator_sub}/test", OP)).status == 202
    assert refusals(admin, "test_sends_total") == 1


async def test_clients_together_send_at_most_so_many_bytes_of_test_data_an_hour(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin(
        webhooks={"allow_private_targets": True, "test_data_per_hour": "100KiB"}
    )
    data = {"blob": "x" * 40_000}
    for n in range(2):
        sub = (await admin.create(client(n), HOOK))["id"]
        sent = await admin.call("POST", f"/subscriptions/{sub}/test", client(n), {"data": data})
        assert sent.status == 202
    sub = (await admin.create(client(2), HOOK))["id"]
    refused = await admin.call("POST", f"/subscriptions/{sub}/test", client(2), {"data": data})
    assert refused.status == 429
    assert "bytes of test data an hour" in refused.body["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert refusals(admin, "test_bytes_total") == 1


async def test_a_test_holds_at_most_64_kib(start_admin: StartAdmin) -> None:
    admin = await start_admin(webhooks={"allow_private_targets": True})
    sub = (await admin.create(client(0), HOOK))["id"]
    big = {"data": {"blob": "x" * 70_000}}
    refused = await admin.call("POST", f"/subscriptions/{sub}/test", client(0), big)
    assert refused.status == 413
    assert "at most 64 KiB" in refused.body["detail"]


async def test_a_test_message_is_kept_test_retention_even_after_its_attempt(
    start_admin: StartAdmin,
    aiohttp_server: Any,
    redis: aioredis.Redis,
    key_prefix: str,
) -> None:
    async def hook(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = await aiohttp_server(app)
    admin = await start_admin(webhooks={"allow_private_targets": True, "test_retention": "90s"})
    sub = (await admin.create(client(0), str(receiver.make_url("/hook"))))["id"]
    sent = await admin.call("POST", f"/subscriptions/{sub}/test", client(0))
    message_id = sent.body["message_id"]

    async def delivered() -> bool:
        answer = await admin.call("GET", f"/messages/{message_id}", client(0))
        return answer.status == 200 and answer.body["state"] == "delivered"

    await until_true(delivered)
    (key,) = [k for k in await keys_like(redis, f"{key_prefix}:wh:*:msg:{message_id}")]
    assert 0 < await redis.ttl(key) <= 90  # not the completions' 7 days, not refreshed to them
    (log,) = await keys_like(redis, f"{key_prefix}:wh:*:msg:{message_id}:log")
    assert 0 < await redis.ttl(log) <= 90
