"""Subscriptions over the admin API (sidecar/admin/subscriptions.py), with real Redis and a real
receiver: create (the secret shown once), validation and the target policy, changes, delete,
the secret's rotation and reveal, stats, test messages, and the per-client quotas."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from ..admin_support import OP, A, B, StartAdmin, assert_problem, bearer
from .conftest import Receiver

# --------------------------------------------------------------------------------------------
# Create and validation
# --------------------------------------------------------------------------------------------


async def test_create_answers_201_with_the_secret_shown_only_then(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    answer = await admin.call(
        "POST",
        "/subscriptions",
        A,
        {"url": "https://hooks.example.com/in", "events": ["user.created"], "description": "mine"},
    )
    assert answer.status == 201, answer.body
    created = answer.body
    assert set(created) == {"id", "url", "events", "description", "enabled", "secret", "created_at"}
    assert created["secret"].startswith("whsec_")
    assert created["id"].startswith("sub_")
    assert created["events"] == ["user.created"]
    assert created["enabled"] is True
    one = await admin.call("GET", f"/subscriptions/{created['id']}", A)
    assert one.status == 200
    assert one.body == {k: v for k, v in created.items() if k != "secret"}
    listed = await admin.call("GET", "/subscriptions", A)
    assert listed.body == {"subscriptions": [one.body], "next_cursor": None}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            {"url": "ftp://example.com/x", "events": ["*"]},
            "url: 'ftp://example.com/x' is not an http(s) URL",
        ),
        (
            {"url": "http://169.254.169.254/latest", "events": ["*"]},
            "url: 169.254.169.254 is a link-local, metadata or reserved address (always refused)",
        ),
        (
            {"url": "http://127.0.0.1:8080/hook", "events": ["*"]},
            "url: 127.0.0.1 is a loopback or private address (not allowed by webhooks config)",
        ),
        (
            {"url": "https://example.com:99999/", "events": ["*"]},
            "url: 'https://example.com:99999/' is not a valid URL (Port out of range 0-65535)",
        ),
        (
            {"url": "https://example.com/", "events": ["user.created", "user.deleted", "x"]},
            "events: unknown event types ['user.deleted', 'x'] (use '*' or 'user.created', "
            "'user.creation_failed', 'webhook.test')",
        ),
        ({"url": "https://example.com/", "events": []}, "events: List should have at least 1"),
        (
            {"url": "https://example.com/", "events": "*"},
            'events: Input should be a valid list (got "*")',
        ),
        ({"url": "https://example.com/"}, "events: required field is missing"),
        (
            {"url": "https://example.com/", "events": ["*"], "secret": "whsec_x"},
            "secret: unknown field",
        ),
        (
            {"url": "https://example.com/", "events": ["*"], "description": "é" * 513},
            "description: longer than 1024 bytes",
        ),
        (
            {"url": "https://example.com/", "events": ["*"], "enabled": "yes"},
            'enabled: Input should be a valid boolean (got "yes")',
        ),
        ([{"url": "https://example.com/"}], "<body>: must be a JSON object"),
        (
            {"url": "ftp://x", "events": ["nope"], "extra": 1},
            "extra: unknown field",  # pydantic's problems first; every one is listed
        ),
    ],
)
async def test_invalid_subscriptions_answer_422(
    start_admin: StartAdmin, body: Any, detail: str
) -> None:
    admin = await start_admin(webhooks={"allow_private_targets": False})
    answer = await admin.call("POST", "/subscriptions", A, body)
    assert_problem(answer, 422)
    assert answer.body["detail"].startswith(detail), answer.body["detail"]
    assert answer.body["errors"]
    listed = await admin.call("GET", "/subscriptions", A)
    assert listed.body == {"subscriptions": [], "next_cursor": None}


async def test_private_targets_are_accepted_when_allowed(start_admin: StartAdmin) -> None:
    admin = await start_admin(webhooks={"allowed_networks": ["10.0.0.0/8"]})
    await admin.create(A, "http://10.1.2.3/hook")
    assert_problem(
        await admin.call(
            "POST", "/subscriptions", A, {"url": "http://127.0.0.1/", "events": ["*"]}
        ),
        422,
    )
    assert_problem(
        await admin.call(
            "POST", "/subscriptions", A, {"url": "http://169.254.169.254/", "events": ["*"]}
        ),
        422,
    )


async def test_a_host_name_resolving_only_to_refused_addresses_is_refused_at_once(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin(webhooks={"allow_private_targets": False})
    refused = await admin.call(
        "POST", "/subscriptions", A, {"url": "http://localhost:8080/hook", "events": ["*"]}
    )
    assert_problem(refused, 422)
    (problem,) = refused.body["errors"]
    assert problem.startswith("url: localhost resolves only to refused addresses")
    sub = await admin.create(A, "https://a.example.com/hook")
    changed = await admin.call(
        "PATCH", f"/subscriptions/{sub['id']}", A, {"url": "http://localhost/x"}
    )
    assert_problem(changed, 422)


async def test_malformed_json_answers_400(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    answer = await admin.call("POST", "/subscriptions", A, data=b'{"url": ')
    assert_problem(answer, 400)


# --------------------------------------------------------------------------------------------
# Changes, the secret, stats
# --------------------------------------------------------------------------------------------


async def test_patch_changes_fields_and_disables(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin(webhooks={"allow_private_targets": True})
    sub = await admin.create(A, "https://a.example.com/hook")
    path = f"/subscriptions/{sub['id']}"
    answer = await admin.call(
        "PATCH", path, A, {"events": ["user.created", "user.created"], "description": "new"}
    )
    assert answer.status == 200, answer.body
    assert answer.body["events"] == ["user.created"]
    assert answer.body["description"] == "new"
    assert answer.body["url"] == sub["url"]
    assert "secret" not in answer.body
    refused = await admin.call("PATCH", path, A, {"url": "http://169.254.169.254/", "x": 1})
    assert_problem(refused, 422)
    assert refused.body["errors"] == [
        "x: unknown field",
        "url: 169.254.169.254 is a link-local, metadata or reserved address (always refused)",
    ]
    refused = await admin.call("PATCH", path, A, {"url": "gopher://a", "description": None})
    assert_problem(refused, 422)
    assert refused.body["errors"] == [  # null is no description; both are told at once
        "description: Input should be a valid string (got null)",
        "url: 'gopher://a' is not an http(s) URL",
    ]
    refused = await admin.call("PATCH", path, A, {"url": "http://169.254.169.254/"})
    assert refused.body["errors"] == [
        "url: 169.254.169.254 is a link-local, metadata or reserved address (always refused)"
    ]
    disabled = await admin.call("PATCH", path, A, {"enabled": False})
    assert disabled.body["enabled"] is False
    got = await admin.call("GET", path, A)
    assert got.body == {**answer.body, "enabled": False}
    assert_problem(await admin.call("POST", path + "/test", A), 409)
    enabled = await admin.call("PATCH", path, A, {"enabled": True, "url": receiver.url()})
    assert enabled.body["enabled"] is True
    assert enabled.body["url"] == receiver.url()


async def test_delete_answers_204_then_404(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    sub = await admin.create(A, "https://a.example.com/hook")
    path = f"/subscriptions/{sub['id']}"
    answer = await admin.call("DELETE", path, A)
    assert answer.status == 204
    assert answer.body is None
    assert_problem(await admin.call("GET", path, A), 404)
    assert_problem(await admin.call("DELETE", path, A), 404)
    listed = await admin.call("GET", "/subscriptions", A)
    assert listed.body == {"subscriptions": [], "next_cursor": None}


async def test_rotate_returns_a_new_secret_and_both_sign_for_a_while(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin(webhooks={"allow_private_targets": True})
    sub = await admin.create(A, receiver.url())
    answer = await admin.call("POST", f"/subscriptions/{sub['id']}/rotate-secret", A)
    assert answer.status == 200, answer.body
    assert set(answer.body) == {"id", "secret", "previous_secret_valid_until"}
    assert answer.body["id"] == sub["id"]
    assert answer.body["secret"].startswith("whsec_")
    assert answer.body["secret"] != sub["secret"]
    until = datetime.fromisoformat(answer.body["previous_secret_valid_until"]).timestamp()
    assert abs(until - (time.time() + 24 * 3600)) < 60
    assert "secret" not in (await admin.call("GET", f"/subscriptions/{sub['id']}", A)).body
    assert (await admin.call("POST", f"/subscriptions/{sub['id']}/test", A)).status == 202
    headers, body = await receiver.next()
    Webhook(answer.body["secret"]).verify(body, headers)
    Webhook(sub["secret"]).verify(body, headers)  # the receiver may not have switched yet


async def test_reveal_secret_shows_the_current_and_the_rotating_one(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()
    sub = await admin.create(A, "https://a.example.com/hook")
    one = f"/subscriptions/{sub['id']}"
    shown = await admin.call("GET", one + "/secret", A)
    assert shown.body == {
        "id": sub["id"],
        "secret": sub["secret"],
        "previous_secret": None,
        "previous_secret_valid_until": None,
    }
    rotated = (await admin.call("POST", one + "/rotate-secret", A)).body
    shown = await admin.call("GET", one + "/secret", bearer(await admin.sign_in("Bearer client-a")))
    assert shown.body["secret"] == rotated["secret"]
    assert shown.body["previous_secret"] == sub["secret"]
    assert shown.body["previous_secret_valid_until"] == rotated["previous_secret_valid_until"]
    assert_problem(await admin.call("GET", one + "/secret", B), 404)
    assert shown.headers["Cache-Control"] == "no-store"


async def test_stats_give_the_recent_success_rate(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin()
    sub = await admin.create(A, receiver.url())
    one = f"/subscriptions/{sub['id']}"
    empty = (await admin.call("GET", one + "/stats", A)).body
    assert empty["attempts"] == 0 and empty["success_rate"] is None
    await admin.call("POST", one + "/test", A)
    await admin.attempts_until(A, lambda a: len(a) == 1)
    receiver.status.append(500)
    await admin.call("POST", one + "/test", A)
    await admin.attempts_until(A, lambda a: len(a) == 3)
    stats = (await admin.call("GET", one + "/stats", A)).body
    assert stats["attempts"] == 3 and stats["succeeded"] == 1 and stats["failed"] == 2
    assert stats["success_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert_problem(await admin.call("GET", one + "/stats", B), 404)


# --------------------------------------------------------------------------------------------
# Test messages and quotas
# --------------------------------------------------------------------------------------------


async def test_test_message_arrives_signed_and_is_logged(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin(webhooks={"allow_private_targets": True})
    sub = await admin.create(A, receiver.url(), events=["user.created"])
    sent = await admin.call(
        "POST", f"/subscriptions/{sub['id']}/test", A, {"data": {"hello": "world"}}
    )
    assert sent.status == 202, sent.body
    message_id = sent.body["message_id"]
    assert message_id.startswith("msg_")
    headers, body = await receiver.next()
    Webhook(sub["secret"]).verify(body, headers)
    assert headers["webhook-id"] == message_id
    payload = orjson.loads(body)
    assert payload == {
        "type": "webhook.test",
        "timestamp": payload["timestamp"],
        "data": {"hello": "world"},
        "correlation_id": payload["correlation_id"],
        "operation_id": None,
        "route": None,
        "location": None,
        "status": "test",
    }
    log = await admin.subscription_attempts_until(A, sub["id"], lambda log: len(log) == 1)
    assert log[0]["message_id"] == message_id
    assert log[0]["result"] == "delivered"
    assert log[0]["trigger"] == "test"
    assert log[0]["attempt"] == 1
    assert log[0]["response_status"] == 204
    filtered = f"/subscriptions/{sub['id']}/attempts?status="
    assert (await admin.call("GET", filtered + "delivered", A)).body["attempts"] == log
    assert (await admin.call("GET", filtered + "dead", A)).body["attempts"] == []


async def test_a_test_message_may_look_like_a_route_event(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin(webhooks={"allow_private_targets": True})
    sub = await admin.create(A, receiver.url())
    path = f"/subscriptions/{sub['id']}/test"
    sent = await admin.call("POST", path, A, {"type": "user.creation_failed", "data": [1]})
    assert sent.status == 202, sent.body
    _, body = await receiver.next()
    payload = orjson.loads(body)
    assert (payload["type"], payload["route"], payload["status"], payload["data"]) == (
        "user.creation_failed",
        "create-user",
        "failed",
        [1],
    )
    refused = await admin.call("POST", path, A, {"type": "user.deleted", "hello": 1})
    assert_problem(refused, 422)
    assert refused.body["errors"] == ["hello: unknown field"]
    refused = await admin.call("POST", path, A, {"type": "user.deleted"})
    assert refused.body["detail"].startswith("type: unknown event type 'user.deleted'")


async def test_subscriptions_per_client_are_capped(start_admin: StartAdmin) -> None:
    admin = await start_admin(webhooks={"max_subscriptions_per_tenant": 2})
    for n in range(2):
        await admin.create(A, f"https://a.example.com/{n}")
    over = await admin.call(
        "POST", "/subscriptions", A, {"url": "https://a.example.com/x", "events": ["*"]}
    )
    assert_problem(over, 409)
    assert "2 subscriptions" in over.body["detail"]
    await admin.create(B, "https://b.example.com/")  # another client has its own quota
    for n in range(3):  # and the operator none
        await admin.create(OP, f"https://op.example.com/{n}")
    listed = await admin.call("GET", "/subscriptions", A)
    assert len(listed.body["subscriptions"]) == 2
    async with admin.http.get(admin.url + "/metrics") as resp:
        assert 'sidecar_webhook_quota_refusals_total{quota="subscriptions"} 1.0' in (
            await resp.text()
        )


async def test_test_sends_per_client_are_rate_limited(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin(webhooks={"test_sends_per_minute": 2, "allow_private_targets": True})
    sub = await admin.create(A, receiver.url())
    path = f"/subscriptions/{sub['id']}/test"
    for _ in range(2):
        assert (await admin.call("POST", path, A)).status == 202
    refused = await admin.call("POST", path, A)
    assert_problem(refused, 429)
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "at most 2 test messages a minute" in refused.body["detail"]
    op = await admin.create(OP, receiver.url())
    for _ in range(3):  # the operator is not limited
        assert (await admin.call("POST", f"/subscriptions/{op['id']}/test", OP)).status == 202
    async with admin.http.get(admin.url + "/metrics") as resp:
        assert 'sidecar_webhook_quota_refusals_total{quota="test_sends"} 1.0' in await resp.text()
