"""Who may call what on the admin API (sidecar/admin/callers.py): the operator (the admin token)
reaches everything; a client (its credential) only its own; a portal session stands for its
owner, a read-only one changes nothing, and one that expired or was revoked answers 401 saying
so; another tenant's subscription, message or session answers 404, like a missing one."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from sidecar.admin.sessions import session_key, token_hash

from ..admin_support import OP, OPERATOR_TOKEN, A, B, StartAdmin, assert_problem, bearer
from .conftest import Receiver

# --------------------------------------------------------------------------------------------
# The operator and clients
# --------------------------------------------------------------------------------------------


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
    listed = await admin.call("GET", "/subscriptions", wrong)
    assert listed.body == {"subscriptions": [], "next_cursor": None}


# --------------------------------------------------------------------------------------------
# Portal sessions
# --------------------------------------------------------------------------------------------


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


async def test_only_the_operator_mints_portal_links(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    body = {"credential": "Bearer client-a"}
    assert_problem(await admin.call("POST", "/portal-sessions", None, body), 401)
    assert_problem(await admin.call("POST", "/portal-sessions", A, body), 403)
    operator_session = await admin.sign_in(OPERATOR_TOKEN)
    assert_problem(
        await admin.call("POST", "/portal-sessions", bearer(operator_session), body), 403
    )


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
