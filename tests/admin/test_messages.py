"""The message log over the admin API (sidecar/admin/messages.py), with real Redis and real
receivers: every attempt a caller may see, newest first, with filters and cursor pages; one
message whole; a subscription's attempts; redelivery and recovery."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from sidecar.webhooks.keys import message_key
from sidecar.webhooks.runtime import WEBHOOKS

from ..admin_support import OP, A, B, StartAdmin, assert_problem
from .conftest import Receiver

# --------------------------------------------------------------------------------------------
# The log and one message
# --------------------------------------------------------------------------------------------


async def test_the_message_log_lists_attempts_newest_first_with_filters(
    start_admin: StartAdmin, receiver: Receiver, aiohttp_server: Any
) -> None:
    admin = await start_admin()

    async def down(request: web.Request) -> web.Response:
        return web.Response(status=500, text="down")

    failing_app = web.Application()
    failing_app.router.add_post("/hook", down)
    failing = await aiohttp_server(failing_app)
    good = await admin.create(A, receiver.url())
    bad = await admin.create(A, str(failing.make_url("/hook")))
    first = await admin.call("POST", f"/subscriptions/{good['id']}/test", A)
    await admin.attempts_until(A, lambda a: len(a) == 1)
    second = await admin.call(
        "POST", f"/subscriptions/{good['id']}/test", A, {"type": "user.created", "data": {"x": 1}}
    )
    await admin.attempts_until(A, lambda a: len(a) == 2)
    await admin.call("POST", f"/subscriptions/{bad['id']}/test", A)
    # The failing one: a first attempt and one retry (schedule: [50ms]), then dead.
    every = await admin.attempts_until(
        A, lambda a: sum(1 for x in a if x["sub_id"] == bad["id"]) == 2
    )
    assert [a["attempt"] for a in every if a["sub_id"] == bad["id"]] == [2, 1]
    times = [a["time"] for a in every]
    assert times == sorted(times, reverse=True)
    entry = next(a for a in every if a["message_id"] == second.body["message_id"])
    assert entry == {
        "message_id": second.body["message_id"],
        "sub_id": good["id"],
        "type": "user.created",
        "attempt": 1,
        "time": entry["time"],
        "status": 204,
        "error": None,
        "duration_ms": entry["duration_ms"],
        "trigger": "test",
        "result": "delivered",
    }

    async def ids(query: str, headers: dict[str, str] = A) -> list[str]:
        answer = await admin.call("GET", "/messages?" + query, headers)
        assert answer.status == 200, answer.body
        return [f"{a['message_id']}#{a['attempt']}" for a in answer.body["attempts"]]

    assert len(await ids("status=succeeded")) == 2
    failed = await ids("status=failed")
    assert len(failed) == 2 and all(x.split("#")[0] != first.body["message_id"] for x in failed)
    assert await ids("event_type=user.created") == [f"{second.body['message_id']}#1"]
    assert len(await ids(f"subscription={bad['id']}")) == 2
    assert await ids("since=2999-01-01T00:00:00Z") == []
    assert len(await ids("until=2999-01-01T00:00:00Z")) == 4
    # Cursor pages: every attempt once, in order.
    seen: list[str] = []
    cursor = ""
    while True:
        answer = await admin.call("GET", f"/messages?limit=1{cursor}", A)
        seen += [f"{a['message_id']}#{a['attempt']}" for a in answer.body["attempts"]]
        if answer.body["next_cursor"] is None:
            break
        cursor = f"&cursor={answer.body['next_cursor']}"
    assert seen == await ids("limit=10")
    # The operator sees everyone's; another client nothing of A's.
    assert len(await ids("", OP)) == 4
    assert await ids("", B) == []
    assert_problem(await admin.call("GET", f"/messages?subscription={good['id']}", B), 404)


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("status=dead", "status: Input should be 'succeeded' or 'failed'"),
        ("limit=0", "limit: Input should be greater than or equal to 1"),
        ("limit=201", "limit: Input should be less than or equal to 200"),
        ("limit=ten", "limit: Input should be a valid integer"),
        ("since=yesterday", "since: Input should be a valid datetime"),
        ("cursor=bm9wZQ", "cursor: String should match pattern"),
        ("cursor=1-" + "1" * 21, "cursor: String should match pattern"),
        ("subscription=a/b", "subscription: String should match pattern"),
    ],
)
async def test_bad_message_log_queries_answer_422(
    start_admin: StartAdmin, query: str, detail: str
) -> None:
    admin = await start_admin()
    answer = await admin.call("GET", "/messages?" + query, A)
    assert_problem(answer, 422)
    assert answer.body["detail"].startswith(detail), answer.body["detail"]


async def test_a_time_before_1970_is_no_fault_of_redis(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    sub = await admin.create(A, "https://a.example.com/hook")
    for query in ("since=1960-01-01T00:00:00Z", "until=1960-01-01T00:00:00Z"):
        answer = await admin.call("GET", "/messages?" + query, A)
        assert answer.status == 422, (query, answer.body)
        assert "must not be before 1970" in answer.body["detail"]
    since = {"since": "1960-01-01T00:00:00Z"}
    answer = await admin.call("POST", f"/subscriptions/{sub['id']}/recover", A, since)
    assert answer.status == 422, answer.body


async def test_one_message_has_its_payload_headers_and_attempts(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin()
    sub = await admin.create(A, receiver.url())
    receiver.status.append(503)
    sent = await admin.call(
        "POST", f"/subscriptions/{sub['id']}/test", A, {"type": "user.created", "data": {"n": 7}}
    )
    message_id = sent.body["message_id"]
    await admin.attempts_until(A, lambda a: len(a) == 2)  # first + the one retry, both 503
    answer = await admin.call("GET", f"/messages/{message_id}", A)
    assert answer.status == 200, answer.body
    message = answer.body
    assert message["message_id"] == message_id and message["sub_id"] == sub["id"]
    assert message["type"] == "user.created"
    assert message["payload"] == orjson.loads(receiver.got[0][1])
    assert message["payload"]["data"] == {"n": 7}
    assert message["headers"]["webhook-id"] == message_id
    assert [a["attempt"] for a in message["attempts"]] == [2, 1]  # newest first
    assert all(
        a["status"] == 503 and a["response_excerpt"] == "answer 503" for a in message["attempts"]
    )
    assert message["attempts"][0]["result"] == "dead"
    assert message["headers"]["webhook-timestamp"] == receiver.got[-1][0]["webhook-timestamp"]
    assert message["headers"]["webhook-signature"] == receiver.got[-1][0]["webhook-signature"]
    assert message["state"] == "failed"
    # Another client's message, or none: 404 alike.
    for headers, mid in ((B, message_id), (A, "msg_missing"), (A, "bad/id")):
        assert_problem(await admin.call("GET", f"/messages/{mid}", headers), 404)
    assert (await admin.call("GET", f"/messages/{message_id}", OP)).status == 200


# --------------------------------------------------------------------------------------------
# A subscription's attempts, redelivery, recovery
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("limit=0", "limit: must be an integer from 1 to 1000 (got '0')"),
        ("limit=1001", "limit: must be an integer from 1 to 1000 (got '1001')"),
        ("limit=ten", "limit: must be an integer from 1 to 1000 (got 'ten')"),
        (
            "status=lost",
            "status: unknown result 'lost' (use delivered, retry, dead, disabled, failed)",
        ),
    ],
)
async def test_bad_attempts_queries_answer_422(
    start_admin: StartAdmin, query: str, detail: str
) -> None:
    admin = await start_admin()
    sub = await admin.create(A, "https://a.example.com/hook")
    answer = await admin.call("GET", f"/subscriptions/{sub['id']}/attempts?{query}", A)
    assert_problem(answer, 422)
    assert answer.body["detail"] == detail


async def test_redeliver_sends_the_same_message_again(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin(webhooks={"allow_private_targets": True})
    sub = await admin.create(A, receiver.url())
    sent = await admin.call("POST", f"/subscriptions/{sub['id']}/test", A)
    message_id = sent.body["message_id"]
    first_headers, first_body = await receiver.next()
    await admin.subscription_attempts_until(A, sub["id"], lambda log: len(log) == 1)
    again = await admin.call(
        "POST", f"/subscriptions/{sub['id']}/messages/{message_id}/redeliver", A
    )
    assert again.status == 202, again.body
    assert again.body == {"message_id": message_id, "attempt": 2}
    headers, body = await receiver.next()
    assert headers["webhook-id"] == first_headers["webhook-id"] == message_id
    assert body == first_body
    Webhook(sub["secret"]).verify(body, headers)
    log = await admin.subscription_attempts_until(A, sub["id"], lambda log: len(log) == 2)
    assert [(a["attempt"], a["trigger"], a["result"]) for a in log] == [
        (2, "manual", "delivered"),
        (1, "test", "delivered"),
    ]
    limited = await admin.call("GET", f"/subscriptions/{sub['id']}/attempts?limit=1", A)
    assert limited.body["attempts"] == log[:1]
    assert_problem(
        await admin.call("POST", f"/subscriptions/{sub['id']}/messages/msg_nope/redeliver", A),
        404,
    )


async def test_a_message_whose_payload_redis_lost_shows_why_and_is_not_redelivered(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin(webhooks={"allow_private_targets": True})
    sub = await admin.create(A, receiver.url())
    sent = await admin.call("POST", f"/subscriptions/{sub['id']}/test", A)
    message_id = sent.body["message_id"]
    await admin.subscription_attempts_until(A, sub["id"], lambda log: len(log) == 1)
    # What the delivery workers leave of a message Redis lost mid-attempt: dead, with its
    # reason, and no body.
    runtime = admin.app[WEBHOOKS]
    owner = await runtime.store.owner_of(sub["id"])
    assert owner is not None
    key = message_key(runtime.prefix, owner, message_id)
    await runtime.redis.hdel(key, "body")  # type: ignore[misc]
    await runtime.redis.hset(key, mapping={"state": "dead", "dead_reason": "record_lost"})  # type: ignore[misc]
    shown = await admin.call("GET", f"/messages/{message_id}", A)
    assert shown.status == 200, shown.body
    assert (shown.body["state"], shown.body["dead_reason"]) == ("dead", "record_lost")
    refused = await admin.call(
        "POST", f"/subscriptions/{sub['id']}/messages/{message_id}/redeliver", A
    )
    assert_problem(refused, 409)
    assert "record_lost" in refused.body["detail"]


async def test_recover_redelivers_the_failed_messages_since_a_time(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin()
    sub = await admin.create(A, receiver.url())
    receiver.status.append(500)
    dead = []
    for _ in range(2):
        sent = await admin.call("POST", f"/subscriptions/{sub['id']}/test", A)
        dead.append(sent.body["message_id"])
    await admin.attempts_until(A, lambda a: sum(1 for x in a if x["result"] == "dead") == 2)
    receiver.status.append(204)
    ok = await admin.call("POST", f"/subscriptions/{sub['id']}/test", A)
    await admin.attempts_until(A, lambda a: any(x["result"] == "delivered" for x in a))
    one = f"/subscriptions/{sub['id']}"
    none = await admin.call("POST", one + "/recover", A, {"since": "2999-01-01T00:00:00Z"})
    assert none.status == 202 and none.body["count"] == 0
    answer = await admin.call("POST", one + "/recover", A, {"since": "2020-01-01T00:00:00Z"})
    assert answer.status == 202, answer.body
    assert sorted(answer.body["message_ids"]) == sorted(dead)
    assert answer.body == {
        "subscription_id": sub["id"],
        "since": "2020-01-01T00:00:00.000Z",
        "message_ids": answer.body["message_ids"],
        "count": 2,
    }
    recovered = await admin.attempts_until(
        A, lambda a: sum(1 for x in a if x["trigger"] == "recover") == 2
    )
    again = [x for x in recovered if x["trigger"] == "recover"]
    assert {x["message_id"] for x in again} == set(dead)
    assert all(x["result"] == "delivered" and x["attempt"] == 3 for x in again)
    assert ok.body["message_id"] not in {x["message_id"] for x in again}
    # Validation, tenancy, a disabled subscription.
    for body, detail in (
        ({}, "since: required field is missing"),
        ({"since": "soon"}, "since: invalid date-time 'soon'"),
        ({"since": 5}, "since: Input should be a valid datetime"),
    ):
        bad = await admin.call("POST", one + "/recover", A, body)
        assert_problem(bad, 422)
        assert bad.body["detail"].startswith(detail), bad.body
    assert_problem(await admin.call("POST", one + "/recover", B, {"since": "2020-01-01"}), 404)
    await admin.call("PATCH", one, A, {"enabled": False})
    assert_problem(await admin.call("POST", one + "/recover", A, {"since": "2020-01-01"}), 409)
