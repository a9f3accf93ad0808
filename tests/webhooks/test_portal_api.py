"""The portal's admin API endpoints over HTTP on the real admin listener, with real Redis and
receivers: sessions (sign-in, portal links, read-only, expiry, revocation), the message log, one
message, recover, the event-type catalog, secrets and stats; tenancy everywhere."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from sidecar.admin import sessions as sessions_module
from sidecar.admin.sessions import session_key, token_hash
from sidecar.app import create_app
from sidecar.state import ADMIN_URL
from sidecar.webhooks.runtime import WEBHOOKS
from tests.conftest import make_settings
from tests.helpers import until_true
from tests.webhooks.test_api import OP, OPERATOR_TOKEN, A, Answer, B, assert_problem

ROUTE = {
    "name": "create-user",
    "method": "POST",
    "path": "/api/users",
    "wait": {"poll": {}},  # a synchronised route: only their events can fire
    "webhook_events": {
        "success": {
            "type": "user.created",
            "description": "A user was created.",
            "example": {"id": "u-1", "name": "Ada"},
        },
        "failure": "user.creation_failed",
    },
}


@dataclass
class Admin:
    """A client of one sidecar's admin listener, and the sidecar app."""

    url: str
    http: aiohttp.ClientSession
    app: web.Application

    async def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, json: Any = None
    ) -> Answer:
        body = orjson.dumps(json) if json is not None else None
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

    async def sign_in(self, credential: str, **fields: Any) -> dict[str, Any]:
        answer = await self.call("POST", "/sign-in", None, {"credential": credential, **fields})
        assert answer.status == 201, answer.body
        return dict(answer.body)

    async def link(self, **body: Any) -> dict[str, Any]:
        answer = await self.call("POST", "/portal-sessions", OP, body)
        assert answer.status == 201, answer.body
        return dict(answer.body)

    async def attempts_until(
        self, headers: dict[str, str], done: Callable[[list[Any]], bool], **query: str
    ) -> list[Any]:
        """The message log once `done(attempts)` holds."""
        found: list[Any] = []

        async def check() -> bool:
            nonlocal found
            path = "/messages?" + "&".join(f"{k}={v}" for k, v in query.items())
            answer = await self.call("GET", path, headers)
            assert answer.status == 200, answer.body
            found = answer.body["attempts"]
            return done(found)

        await until_true(check, timeout_s=5)
        return found


def bearer(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['token']}"}


StartAdmin = Callable[..., Awaitable[Admin]]


@pytest.fixture
async def start_admin(
    redis: aioredis.Redis, redis_url: str, key_prefix: str, aiohttp_client: Any
) -> AsyncIterator[StartAdmin]:
    sessions: list[aiohttp.ClientSession] = []

    async def start(**overrides: Any) -> Admin:
        raw: dict[str, Any] = {
            "redis_url": redis_url,
            "key_prefix": key_prefix,
            "admin_token": OPERATOR_TOKEN,
            "routes": [ROUTE],
            "webhooks": {
                "schedule": ["50ms"],
                "timeout": "2s",
                "allow_private_targets": True,
            },
        }
        raw.update(overrides)
        app = create_app(make_settings("http://127.0.0.1:9", **raw), CollectorRegistry())
        client = await aiohttp_client(app)
        sessions.append(aiohttp.ClientSession())
        return Admin(client.app[ADMIN_URL], sessions[-1], client.app)

    yield start
    for session in sessions:
        await session.close()


@dataclass
class Receiver:
    server: TestServer
    got: list[tuple[dict[str, str], bytes]]
    status: list[int]  # the status answered (the last one sticks)

    def url(self) -> str:
        return str(self.server.make_url("/hook"))


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    got: list[tuple[dict[str, str], bytes]] = []
    status = [204]

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=status[-1], text=f"answer {status[-1]}")

    app = web.Application()
    app.router.add_post("/hook", hook)
    return Receiver(await aiohttp_server(app), got, status)


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------


async def test_sign_in_exchanges_a_credential_for_a_session_of_its_owner(
    start_admin: StartAdmin, redis: aioredis.Redis, key_prefix: str
) -> None:
    admin = await start_admin()
    mine = await admin.create(A, "https://a.example.com/hook")
    await admin.create(B, "https://b.example.com/hook")
    session = await admin.sign_in("Bearer client-a")
    assert set(session) == {"id", "token", "url", "expires_at", "read_only"}
    assert session["token"].startswith("psess_") and session["id"].startswith("ps_")
    assert session["read_only"] is False
    assert session["url"] == f"{admin.url}/admin/#session={session['token']}"
    listed = await admin.call("GET", "/subscriptions", bearer(session))
    assert [s["id"] for s in listed.body["subscriptions"]] == [mine["id"]]
    me = await admin.call("GET", "/me", bearer(session))
    owners = {
        s["id"]: s["owner"]
        for s in (await admin.call("GET", "/subscriptions", OP)).body["subscriptions"]
    }
    assert me.body == {
        "kind": "client",
        "tenant": owners[mine["id"]],
        "read_only": False,
        "session": {"id": session["id"], "expires_at": session["expires_at"], "read_only": False},
    }
    # Redis holds neither the token nor the credential, only the token's hash.
    values = []
    async for key in redis.scan_iter(match=f"{key_prefix}:portal:*"):
        kind = await redis.type(key)
        if kind == b"hash":
            values += list((await redis.hgetall(key)).values())
        elif kind == b"string":
            values.append(await redis.get(key))
    assert values
    assert not any(session["token"].encode() in v or b"client-a" in v for v in values)
    assert await redis.exists(session_key(key_prefix, token_hash(session["token"])))


@pytest.mark.parametrize("credential", [OPERATOR_TOKEN, f"Bearer {OPERATOR_TOKEN}"])
async def test_the_admin_token_signs_in_as_the_operator(
    start_admin: StartAdmin, credential: str
) -> None:
    admin = await start_admin()
    await admin.create(A, "https://a.example.com/hook")
    session = await admin.sign_in(credential)
    me = await admin.call("GET", "/me", bearer(session))
    assert me.body["kind"] == "operator" and me.body["tenant"] == "operator"
    everyone = await admin.call("GET", "/subscriptions", bearer(session))
    assert len(everyone.body["subscriptions"]) == 1
    assert everyone.body["subscriptions"][0]["owner"].startswith("t_")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, "credential: required field is missing"),
        ({"credential": ""}, "credential: String should have at least 1 character"),
        ({"credential": "x" * 4097}, "credential: String should have at most 4096 characters"),
        ({"credential": "Bearer psess_abc"}, "credential: this is a portal session token"),
        ({"credential": "a", "ttl": 0}, "ttl: must be from 1s to 24h"),
        ({"credential": "a", "ttl": "25h"}, "ttl: must be from 1s to 24h"),
        ({"credential": "a", "ttl": "soon"}, "ttl: invalid duration 'soon'"),
        ({"credential": "a", "ttl": True}, "ttl: invalid duration True"),
        ({"credential": "a", "scope": "all"}, "scope: unknown field"),
    ],
)
async def test_invalid_sign_ins_answer_422(
    start_admin: StartAdmin, body: dict[str, Any], detail: str
) -> None:
    admin = await start_admin()
    answer = await admin.call("POST", "/sign-in", None, body)
    assert_problem(answer, 422)
    assert answer.body["detail"].startswith(detail), answer.body["detail"]


async def test_ttl_takes_a_duration_or_seconds(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    for ttl, seconds in (("90s", 90), (120, 120), ("1h", 3600), ("24h", 86400), (1, 1)):
        session = await admin.sign_in("Bearer client-a", ttl=ttl)
        me = await admin.call("GET", "/me", bearer(session))
        left = _epoch(me.body["session"]["expires_at"]) - time.time()
        assert seconds - 5 < left <= seconds, (ttl, left)
    default = await admin.link(credential="Bearer client-a")
    assert 3595 < _epoch(default["expires_at"]) - time.time() <= 3600


def _epoch(iso_text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()


async def test_sign_ins_are_rate_limited_per_address(start_admin: StartAdmin) -> None:
    admin = await start_admin(portal={"sign_ins_per_minute": 2})
    await admin.sign_in("Bearer client-a")
    await admin.sign_in("Bearer client-b")
    answer = await admin.call("POST", "/sign-in", None, {"credential": "Bearer client-c"})
    assert_problem(answer, 429)
    assert 1 <= int(answer.headers["Retry-After"]) <= 60
    assert answer.body["detail"].startswith("at most 2 sign-ins a minute from one address")
    # Sessions already made, and portal links, are not affected.
    assert (await admin.link(credential="Bearer client-c"))["token"].startswith("psess_")
    # X-Forwarded-For names the client only when forwarded headers are trusted.
    spoofed = {"X-Forwarded-For": "203.0.113.9"}
    body = {"credential": "Bearer client-c"}
    assert (await admin.call("POST", "/sign-in", spoofed, body)).status == 429
    behind = await start_admin(
        portal={"sign_ins_per_minute": 1}, proxy={"trust_forwarded_headers": True}
    )
    for address in ("203.0.113.9", "203.0.113.10"):  # the right-most entry: the proxy's peer
        forwarded = {"X-Forwarded-For": f"10.0.0.1, {address}"}
        assert (await behind.call("POST", "/sign-in", forwarded, body)).status == 201
    again = await behind.call("POST", "/sign-in", {"X-Forwarded-For": "203.0.113.9"}, body)
    assert again.status == 429


async def test_only_the_operator_mints_portal_links(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    body = {"credential": "Bearer client-a"}
    assert_problem(await admin.call("POST", "/portal-sessions", None, body), 401)
    assert_problem(await admin.call("POST", "/portal-sessions", A, body), 403)
    operator_session = await admin.sign_in(OPERATOR_TOKEN)
    assert_problem(
        await admin.call("POST", "/portal-sessions", bearer(operator_session), body), 403
    )


async def test_a_portal_link_is_a_session_of_the_client_by_credential_or_tenant(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin(portal={"public_url": "https://hooks.example.com/base"})
    mine = await admin.create(A, "https://a.example.com/hook")
    await admin.create(B, "https://b.example.com/hook")
    owner = (await admin.call("GET", f"/subscriptions/{mine['id']}", OP)).body["owner"]
    by_credential = await admin.link(credential="Bearer client-a", read_only=True, ttl="10m")
    by_tenant = await admin.link(tenant=owner)
    assert by_credential["read_only"] is True and by_tenant["read_only"] is False
    assert by_credential["url"] == (
        f"https://hooks.example.com/base/admin/#session={by_credential['token']}"
    )
    for session in (by_credential, by_tenant):
        listed = await admin.call("GET", "/subscriptions", bearer(session))
        assert [s["id"] for s in listed.body["subscriptions"]] == [mine["id"]]
    for body, detail in (
        ({}, "<body>: give exactly one of credential and tenant"),
        ({"credential": "x", "tenant": owner}, "<body>: give exactly one of credential and tenant"),
        ({"tenant": "t_nothex"}, "tenant: String should match pattern"),
        ({"credential": "x", "read_only": "yes"}, "read_only: Input should be a valid boolean"),
    ):
        answer = await admin.call("POST", "/portal-sessions", OP, body)
        assert_problem(answer, 422)
        assert answer.body["detail"].startswith(detail), answer.body


async def test_a_read_only_session_reads_but_changes_nothing(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin()
    sub = await admin.create(A, receiver.url())
    sent = await admin.call("POST", f"/subscriptions/{sub['id']}/test", A)
    message_id = sent.body["message_id"]
    await admin.attempts_until(A, lambda a: len(a) == 1)
    session = await admin.link(credential="Bearer client-a", read_only=True)
    ro = bearer(session)
    one = f"/subscriptions/{sub['id']}"
    for path in (
        "/subscriptions",
        one,
        one + "/attempts",
        one + "/stats",
        "/messages",
        f"/messages/{message_id}",
        "/event-types",
        "/me",
    ):
        answer = await admin.call("GET", path, ro)
        assert answer.status == 200, (path, answer.body)
    assert (await admin.call("GET", "/me", ro)).body["read_only"] is True
    writes: list[tuple[str, str, Any]] = [
        ("POST", "/subscriptions", {"url": receiver.url(), "events": ["*"]}),
        ("PATCH", one, {"enabled": False}),
        ("DELETE", one, None),
        ("POST", one + "/rotate-secret", None),
        ("POST", one + "/test", None),
        ("POST", one + "/recover", {"since": "2020-01-01T00:00:00Z"}),
        ("POST", one + f"/messages/{message_id}/redeliver", None),
        ("GET", one + "/secret", None),
    ]
    for method, path, body in writes:
        answer = await admin.call(method, path, ro, body)
        assert_problem(answer, 403)
        assert "read-only" in answer.body["detail"]
    assert (await admin.call("GET", one, A)).body["enabled"] is True
    assert len(receiver.got) == 1
    # Signing out is allowed: the session revokes itself.
    assert (await admin.call("DELETE", f"/portal-sessions/{session['id']}", ro)).status == 204
    gone = await admin.call("GET", "/me", ro)
    assert_problem(gone, 401)
    assert gone.body["reason"] == "revoked"


async def test_revoked_and_expired_sessions_answer_401_saying_so(
    start_admin: StartAdmin, redis: aioredis.Redis, key_prefix: str
) -> None:
    admin = await start_admin()
    revoked = await admin.link(credential="Bearer client-a")
    assert (await admin.call("DELETE", f"/portal-sessions/{revoked['id']}", OP)).status == 204
    answer = await admin.call("GET", "/subscriptions", bearer(revoked))
    assert_problem(answer, 401)
    assert answer.body["reason"] == "revoked"
    assert answer.body["detail"] == "the portal session was revoked; sign in again"
    assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="sidecar-portal"')

    expired = await admin.sign_in("Bearer client-a", ttl="1h")
    key = session_key(key_prefix, token_hash(expired["token"]))
    assert 3600 < await redis.ttl(key) <= 3600 + 86401  # kept a day longer, to say "expired"
    await redis.hset(key, "expires_at", repr(time.time() - 1))  # type: ignore[misc]
    answer = await admin.call("GET", "/me", bearer(expired))
    assert_problem(answer, 401)
    assert answer.body["reason"] == "expired"
    assert answer.body["detail"].startswith("the portal session expired at ")

    unknown = await admin.call("GET", "/me", {"Authorization": "Bearer psess_nope"})
    assert_problem(unknown, 401)
    assert unknown.body["reason"] == "unknown"


async def test_a_real_one_second_session_expires(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    session = await admin.sign_in("Bearer client-a", ttl="1s")
    assert (await admin.call("GET", "/me", bearer(session))).status == 200

    async def expired() -> bool:
        return (await admin.call("GET", "/me", bearer(session))).status == 401

    await until_true(expired, timeout_s=3)
    assert (await admin.call("GET", "/me", bearer(session))).body["reason"] == "expired"


async def test_an_owner_holds_a_bounded_number_of_live_sessions(
    start_admin: StartAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions_module, "MAX_SESSIONS_PER_OWNER", 3)
    admin = await start_admin()
    first = await admin.sign_in("Bearer client-a", ttl="10m")  # expires first
    later = [await admin.sign_in("Bearer client-a", ttl="1h") for _ in range(3)]
    other = await admin.sign_in("Bearer client-b", ttl="10m")
    gone = await admin.call("GET", "/me", bearer(first))
    assert_problem(gone, 401)
    assert gone.body["reason"] == "revoked"
    for session in [*later, other]:
        assert (await admin.call("GET", "/me", bearer(session))).status == 200


async def test_another_tenants_session_answers_404(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    a_session = await admin.sign_in("Bearer client-a")
    b_session = await admin.sign_in("Bearer client-b")
    for headers in (B, bearer(b_session)):
        answer = await admin.call("DELETE", f"/portal-sessions/{a_session['id']}", headers)
        assert_problem(answer, 404)
    assert (await admin.call("GET", "/me", bearer(a_session))).status == 200
    assert_problem(await admin.call("DELETE", "/portal-sessions/ps_missing", A), 404)
    # A client revokes its own tenant's sessions with its credential.
    assert (await admin.call("DELETE", f"/portal-sessions/{a_session['id']}", A)).status == 204
    assert (await admin.call("GET", "/me", bearer(a_session))).status == 401


# --------------------------------------------------------------------------------------------
# The message log
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


# --------------------------------------------------------------------------------------------
# One subscription: secret, stats
# --------------------------------------------------------------------------------------------


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
# The catalog
# --------------------------------------------------------------------------------------------


async def test_the_catalog_lists_every_type_with_an_example(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin()
    sub = await admin.create(A, receiver.url())
    catalog = (await admin.call("GET", "/event-types", A)).body["event_types"]
    by_type = {t["type"]: t for t in catalog}
    assert list(by_type) == ["user.created", "user.creation_failed", "webhook.test"]
    created = by_type["user.created"]
    assert created["description"] == "A user was created."
    assert created["route"] == "create-user" and created["outcome"] == "success"
    assert created["example_source"] == "declared"
    assert created["example"]["data"] == {"id": "u-1", "name": "Ada"}
    assert created["example"]["type"] == "user.created"
    failed = by_type["user.creation_failed"]
    assert failed["example_source"] == "generic" and failed["example"]["data"] == {}
    assert "POST /api/users" in failed["description"]

    # A real completion of that type (not a test): its shape becomes the example, values elided.
    runtime = admin.app[WEBHOOKS]
    body = orjson.dumps(
        {
            "type": "user.creation_failed",
            "data": {"reason": "taken", "tries": 3, "ok": False, "tags": ["a", "b"], "who": None},
        }
    )
    owner = (await runtime.store.get(sub["id"])).owner  # type: ignore[union-attr]
    await runtime.outbox.enqueue(
        "msg_realfailure01", owner, sub["id"], "user.creation_failed", body
    )
    await admin.attempts_until(A, lambda a: len(a) == 1)
    observed = {
        t["type"]: t for t in (await admin.call("GET", "/event-types", A)).body["event_types"]
    }
    failed = observed["user.creation_failed"]
    assert failed["example_source"] == "observed"
    assert failed["example"]["data"] == {
        "reason": "<string>",
        "tries": 0,
        "ok": False,
        "tags": ["<string>"],
        "who": None,
    }
    # Another client sees only the generic example: not even the shape of A's payloads.
    others = {
        t["type"]: t for t in (await admin.call("GET", "/event-types", B)).body["event_types"]
    }
    assert others["user.creation_failed"]["example_source"] == "generic"


async def test_the_admin_api_answers_are_never_cached_and_never_sniffed(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()
    answer = await admin.call("GET", "/subscriptions", A)
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"


async def test_sessions_need_redis(start_admin: StartAdmin) -> None:
    admin = await start_admin(redis_url=None, key_prefix="unused", webhooks={})
    answer = await admin.call("POST", "/sign-in", None, {"credential": "Bearer client-a"})
    assert_problem(answer, 503)
    await asyncio.sleep(0)
