"""The webhook admin API over HTTP on the real admin listener, with real Redis and receivers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy
from prometheus_client import CollectorRegistry
from standardwebhooks.webhooks import Webhook

from sidecar.app import create_app
from sidecar.state import ADMIN_URL
from tests.conftest import make_settings

OPERATOR_TOKEN = "op-token-0123456789"
OP = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
A = {"Authorization": "Bearer client-a"}
B = {"Authorization": "Bearer client-b"}
PROBLEM = "application/problem+json"
ROUTE = {
    "name": "create-user",
    "method": "POST",
    "path": "/api/users",
    "webhook_events": {"success": "user.created", "failure": "user.creation_failed"},
}


@dataclass
class Answer:
    """One admin API answer."""

    status: int
    headers: CIMultiDictProxy[str]
    body: Any


@dataclass
class Admin:
    """A client of one sidecar's admin listener."""

    url: str
    http: aiohttp.ClientSession

    async def call(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        json: Any = None,
        data: bytes | None = None,
    ) -> Answer:
        body = orjson.dumps(json) if json is not None else data
        async with self.http.request(
            method, self.url + "/admin/api" + path, headers=headers, data=body
        ) as response:
            raw = await response.read()
            return Answer(response.status, response.headers, orjson.loads(raw) if raw else None)

    async def create(self, headers: dict[str, str], url: str, **fields: Any) -> dict[str, Any]:
        answer = await self.call(
            "POST", "/subscriptions", headers, {"url": url, "events": ["*"], **fields}
        )
        assert answer.status == 201, answer.body
        return dict(answer.body)


StartAdmin = Callable[..., Awaitable[Admin]]


@pytest.fixture
async def start_admin(
    redis: aioredis.Redis, redis_url: str, key_prefix: str, aiohttp_client: Any
) -> AsyncIterator[StartAdmin]:
    """Start the real sidecar (cleanup contexts and all); talk to its admin listener."""
    sessions: list[aiohttp.ClientSession] = []

    async def start(**overrides: Any) -> Admin:
        raw: dict[str, Any] = {
            "redis_url": redis_url,
            "key_prefix": key_prefix,
            "admin_token": OPERATOR_TOKEN,
            "routes": [ROUTE],
            "webhooks": {"schedule": ["50ms", "100ms"], "timeout": "2s"},
        }
        raw.update(overrides)
        app = create_app(make_settings("http://127.0.0.1:9", **raw), CollectorRegistry())
        client = await aiohttp_client(app)
        sessions.append(aiohttp.ClientSession())
        return Admin(client.app[ADMIN_URL], sessions[-1])

    yield start
    for session in sessions:
        await session.close()


@dataclass
class Receiver:
    """A webhook receiver: every request it gets, and the status it answers."""

    server: TestServer
    got: asyncio.Queue[tuple[dict[str, str], bytes]]

    def url(self, path: str = "/hook") -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    got: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await got.put((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    return Receiver(await aiohttp_server(app), got)


async def attempts_until(
    admin: Admin, headers: dict[str, str], sub_id: str, done: Callable[[list[Any]], bool]
) -> list[Any]:
    """The attempts log once `done(log)` holds (it is written just after the receiver answers)."""
    async with asyncio.timeout(5):
        while True:
            answer = await admin.call("GET", f"/subscriptions/{sub_id}/attempts", headers)
            assert answer.status == 200, answer.body
            if done(answer.body["attempts"]):
                return list(answer.body["attempts"])
            await asyncio.sleep(0.01)


def assert_problem(answer: Answer, status: int) -> None:
    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"] == PROBLEM
    assert answer.body["status"] == status
    assert answer.body["detail"]


# --------------------------------------------------------------------------------------------
# Ownership and who calls
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


async def test_clients_see_only_their_own_and_the_operator_sees_all(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()
    a = await admin.create(A, "https://a.example.com/hook")
    b = await admin.create(B, "https://b.example.com/hook")
    op = await admin.create(OP, "https://ops.example.com/hook")
    assert "owner" not in a
    assert op["owner"] == "operator"
    for headers, sub in ((A, a), (B, b)):
        listed = (await admin.call("GET", "/subscriptions", headers)).body["subscriptions"]
        assert [s["id"] for s in listed] == [sub["id"]]
    everyone = (await admin.call("GET", "/subscriptions", OP)).body["subscriptions"]
    assert [s["id"] for s in everyone] == [a["id"], b["id"], op["id"]]
    owners = [s["owner"] for s in everyone]
    assert owners[0].startswith("t_") and owners[1].startswith("t_") and owners[0] != owners[1]
    assert owners[2] == "operator"
    assert all("secret" not in s for s in everyone)
    # The operator reaches a client's subscription; a client never the operator's.
    assert (await admin.call("GET", f"/subscriptions/{a['id']}", OP)).status == 200
    patched = await admin.call("PATCH", f"/subscriptions/{a['id']}", OP, {"description": "op"})
    assert patched.body["description"] == "op"
    assert_problem(await admin.call("GET", f"/subscriptions/{op['id']}", A), 404)


async def test_another_clients_subscription_answers_404_everywhere(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()
    a = await admin.create(A, "https://a.example.com/hook", events=["user.created"])
    b = await admin.create(B, "https://b.example.com/hook")
    sent = await admin.call("POST", f"/subscriptions/{a['id']}/test", A)
    assert sent.status == 202
    message_id = sent.body["message_id"]
    one = f"/subscriptions/{a['id']}"
    calls: list[tuple[str, str, Any]] = [
        ("GET", one, None),
        ("PATCH", one, {"enabled": False}),
        ("DELETE", one, None),
        ("POST", one + "/rotate-secret", None),
        ("POST", one + "/test", None),
        ("GET", one + "/attempts", None),
        ("POST", one + f"/messages/{message_id}/redeliver", None),
        # B's own subscription, A's message: not B's either.
        ("POST", f"/subscriptions/{b['id']}/messages/{message_id}/redeliver", None),
    ]
    for method, path, body in calls:
        answer = await admin.call(method, path, B, body)
        assert_problem(answer, 404)
        missing = await admin.call(method, path.replace(a["id"], "sub_missing"), B, body)
        assert missing.status == 404
        assert missing.body["title"] == answer.body["title"]
    after = await admin.call("GET", one, A)
    # Unchanged by B (its own test message failing may have started a failing streak).
    after.body.pop("failing_since", None)
    assert after.body == {k: v for k, v in a.items() if k != "secret"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": ""}, {"X-Api-Key": "client-a"}],
    ids=["none", "empty", "other-header"],
)
async def test_no_credential_answers_401(start_admin: StartAdmin, headers: dict[str, str]) -> None:
    admin = await start_admin()
    answer = await admin.call("GET", "/subscriptions", headers)
    assert_problem(answer, 401)
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization" in answer.body["detail"]


async def test_a_custom_credential_header_names_the_client(start_admin: StartAdmin) -> None:
    admin = await start_admin(tenancy={"credential_header": "X-Api-Key"})
    key_a, key_b = {"X-Api-Key": "key-a"}, {"X-Api-Key": "key-b"}
    a = await admin.create(key_a, "https://a.example.com/hook")
    assert (await admin.call("GET", f"/subscriptions/{a['id']}", key_a)).status == 200
    assert (await admin.call("GET", f"/subscriptions/{a['id']}", key_b)).status == 404
    # Authorization is not the credential here, but the operator token still is the operator.
    assert (await admin.call("GET", f"/subscriptions/{a['id']}", OP)).status == 200
    assert_problem(await admin.call("GET", "/subscriptions", A), 401)


async def test_a_bearer_that_is_not_the_operator_token_is_a_client(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()
    await admin.create(A, "https://a.example.com/hook")
    wrong = {"Authorization": "Bearer op-token-wrong"}
    assert (await admin.call("GET", "/subscriptions", wrong)).body == {
        "subscriptions": [],
        "next_cursor": None,
    }


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


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
    admin = await start_admin()
    answer = await admin.call("POST", "/subscriptions", A, body)
    assert_problem(answer, 422)
    assert answer.body["detail"].startswith(detail), answer.body["detail"]
    assert answer.body["errors"]
    assert (await admin.call("GET", "/subscriptions", A)).body == {
        "subscriptions": [],
        "next_cursor": None,
    }


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


async def test_malformed_json_answers_400(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    answer = await admin.call("POST", "/subscriptions", A, data=b'{"url": ')
    assert_problem(answer, 400)


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


async def test_unknown_paths_and_methods_are_problems(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    assert_problem(await admin.call("GET", "/nothing-here", A), 404)
    answer = await admin.call("PUT", "/subscriptions", A)
    assert answer.status == 405
    assert answer.headers["Content-Type"] == PROBLEM
    assert "POST" in answer.headers["Allow"]


# --------------------------------------------------------------------------------------------
# Changes
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
    assert (await admin.call("GET", "/subscriptions", A)).body == {
        "subscriptions": [],
        "next_cursor": None,
    }


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
    headers, body = await asyncio.wait_for(receiver.got.get(), 5)
    Webhook(answer.body["secret"]).verify(body, headers)
    Webhook(sub["secret"]).verify(body, headers)  # the receiver may not have switched yet


# --------------------------------------------------------------------------------------------
# Test messages, attempts, redelivery (a real receiver)
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
    headers, body = await asyncio.wait_for(receiver.got.get(), 5)
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
    log = await attempts_until(admin, A, sub["id"], lambda log: len(log) == 1)
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
    _, body = await asyncio.wait_for(receiver.got.get(), 5)
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


async def test_redeliver_sends_the_same_message_again(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin(webhooks={"allow_private_targets": True})
    sub = await admin.create(A, receiver.url())
    sent = await admin.call("POST", f"/subscriptions/{sub['id']}/test", A)
    message_id = sent.body["message_id"]
    first_headers, first_body = await asyncio.wait_for(receiver.got.get(), 5)
    await attempts_until(admin, A, sub["id"], lambda log: len(log) == 1)
    again = await admin.call(
        "POST", f"/subscriptions/{sub['id']}/messages/{message_id}/redeliver", A
    )
    assert again.status == 202, again.body
    assert again.body == {"message_id": message_id, "attempt": 2}
    headers, body = await asyncio.wait_for(receiver.got.get(), 5)
    assert headers["webhook-id"] == first_headers["webhook-id"] == message_id
    assert body == first_body
    Webhook(sub["secret"]).verify(body, headers)
    log = await attempts_until(admin, A, sub["id"], lambda log: len(log) == 2)
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


# --------------------------------------------------------------------------------------------
# Without Redis
# --------------------------------------------------------------------------------------------


async def test_without_redis_url_every_endpoint_answers_503(start_admin: StartAdmin) -> None:
    admin = await start_admin(redis_url=None)
    for method, path in [
        ("GET", "/subscriptions"),
        ("POST", "/subscriptions"),
        ("GET", "/subscriptions/sub_x"),
        ("DELETE", "/subscriptions/sub_x"),
        ("GET", "/subscriptions/sub_x/attempts"),
    ]:
        answer = await admin.call(method, path, A)
        assert_problem(answer, 503)
        assert answer.body["detail"] == "webhooks need redis_url"


async def test_redis_down_answers_503_without_a_traceback(
    start_admin: StartAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    admin = await start_admin(redis_url="redis://127.0.0.1:1/0")
    for method, path, body in [
        ("GET", "/subscriptions", None),
        ("POST", "/subscriptions", {"url": "https://a.example.com/", "events": ["*"]}),
    ]:
        answer = await admin.call(method, path, A, body)
        assert_problem(answer, 503)
        assert answer.body["detail"].startswith("Redis is unavailable")
    faults = [r for r in caplog.records if r.name == "sidecar.http.boundary"]
    assert faults
    assert all(r.exc_info is None for r in faults)


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


async def test_a_host_name_resolving_only_to_refused_addresses_is_refused_at_once(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()  # private targets off
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
