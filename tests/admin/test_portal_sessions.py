"""Portal sessions over the admin API (sidecar/admin/portal_sessions.py, sessions.py): signing
in with a credential or the admin token, portal links the operator mints, their lifetimes, the
rate of sign-ins, and the bounded number of live sessions an owner holds. (What a session may
reach, and how an expired or revoked one answers, is in test_callers.py.)"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from sidecar.admin import sessions as sessions_module
from sidecar.admin.sessions import session_key, token_hash

from ..admin_support import OP, OPERATOR_TOKEN, A, B, StartAdmin, assert_problem, bearer
from ..helpers import until_true


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
