"""The portal's admin API endpoints, mounted beside the subscription endpoints at `/admin/api`.

    POST   /sign-in                               a credential (or the admin token) → a session
    POST   /portal-sessions                       operator: a portal link for a client
    DELETE /portal-sessions/{id}                  revoke (a session may revoke itself)
    GET    /me                                    who the caller is, and its session
    GET    /event-types                           the catalog, with example payloads
    GET    /messages                              the message log: filters, cursor pages
    GET    /messages/{message_id}                 one message, its headers and attempts
    GET    /subscriptions/{id}/secret             the signing secret (not for read-only sessions)
    GET    /subscriptions/{id}/stats              recent attempts and success rate
    POST   /subscriptions/{id}/recover            redeliver every failed message since a time
    GET    /openapi.json                          the OpenAPI 3.1 document of the admin API

Callers are resolved as in `api` (admin token, portal session, client credential) and see only
their own data: another's session, message or subscription answers 404 like a missing one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from ..errors import Conflict, Forbidden, NotFound, TooManyRequests
from ..routing import RUNTIME
from ..state import HASHER, PROXY_APP
from ..tenancy import OPERATOR
from ..timestamps import iso
from .api import ID_RE, caller_of, is_operator, json_response, subscription_of, webhooks_of
from .bodies import invalid, read_body
from .catalog import catalog
from .keys import message_key
from .openapi import openapi_document
from .portal_auth import current_session, sessions_of
from .portal_bodies import MessagesQuery, PortalSessionCreate, Recover, SignIn, ms, read_query
from .sessions import TOKEN_PREFIX, PortalSession
from .views import (
    AttemptsPage,
    EventTypeList,
    Me,
    MessageDetail,
    Recovered,
    SecretView,
    SessionCreated,
    SessionInfo,
    SubscriptionStats,
)

logger = logging.getLogger(__name__)

STATS_WINDOW = 100
MAX_RECOVER = 1000  # messages one recover call queues at most
BRIEF = (
    "message_id",
    "sub_id",
    "type",
    "attempt",
    "time",
    "error",
    "duration_ms",
    "trigger",
    "result",
)


def attempt_view(attempt: dict[str, Any], whole: bool = False) -> dict[str, Any]:
    """An attempt of the message log as the API shows it (`status`: the receiver's HTTP status);
    `whole` adds what the receiver answered."""
    out = {k: attempt.get(k) for k in BRIEF}
    out["status"] = attempt.get("response_status")
    if whole:
        out["response_excerpt"] = attempt.get("response_excerpt")
        out["error_detail"] = attempt.get("error_detail")
        out["next_attempt_at"] = attempt.get("next_attempt_at")
    return out


def answer(model: BaseModel, status: int = 200) -> web.Response:
    """A JSON answer built through its response model."""
    return json_response(model.model_dump(mode="json"), status=status)


def client_address(request: web.Request) -> str:
    """The caller's address: the first `X-Forwarded-For` entry when forwarded headers are
    trusted (`proxy.trust_forwarded_headers`), else the peer's."""
    settings = request.app[PROXY_APP][RUNTIME].settings
    forwarded = request.headers.get("X-Forwarded-For", "")
    if settings.proxy.trust_forwarded_headers and forwarded.strip():
        return forwarded.split(",")[0].strip()[:64] or "unknown"
    return request.remote or "unknown"


def portal_url(request: web.Request, token: str) -> str:
    """The portal with the session token in its fragment (never sent to a server)."""
    configured = request.app[PROXY_APP][RUNTIME].settings.portal.public_url
    base = configured or f"{request.scheme}://{request.host}"
    return f"{base}/admin/#session={token}"


def created(request: web.Request, session: PortalSession, token: str) -> web.Response:
    """201 with a new session."""
    return answer(
        SessionCreated(
            id=session.id,
            token=token,
            url=portal_url(request, token),
            expires_at=iso(session.expires_at),
            read_only=session.read_only,
        ),
        status=201,
    )


def owner_scope(caller: str) -> str | None:
    """The log owner a caller reads: None (everyone's) for the operator."""
    return None if caller == OPERATOR else caller


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------


async def sign_in(request: web.Request) -> web.Response:
    """Exchange a credential for a session of its owner: the admin token (bare or as `Bearer`)
    is the operator; any other value a client, hashed as the proxy hashes it."""
    sessions = sessions_of(request)
    settings = request.app[PROXY_APP][RUNTIME].settings
    wait_s = await sessions.sign_in_wait(
        client_address(request), settings.portal.sign_ins_per_minute
    )
    if wait_s:
        raise TooManyRequests(
            f"at most {settings.portal.sign_ins_per_minute} sign-ins a minute from one address; "
            f"try again in {wait_s} s",
            headers={"Retry-After": str(wait_s)},
        )
    body = await read_body(request, SignIn)
    credential = body.credential
    if credential.strip().removeprefix("Bearer ").strip().startswith(TOKEN_PREFIX):
        raise invalid(["credential: this is a portal session token; open the portal link instead"])
    if is_operator(credential, settings) or is_operator(f"Bearer {credential}", settings):
        owner = OPERATOR
    else:
        tenant = await request.app[PROXY_APP][HASHER].tenant(credential)
        assert tenant is not None  # a non-empty credential always has one
        owner = tenant
    session, token = await sessions.mint(owner, body.ttl, read_only=False)
    logger.info("portal sign-in", extra={"session": session.id, "owner": owner})
    return created(request, session, token)


async def create_portal_session(request: web.Request) -> web.Response:
    """Operator only (the admin token itself): a portal link for a client or the operator."""
    settings = request.app[PROXY_APP][RUNTIME].settings
    if not is_operator(request.headers.get("Authorization"), settings):
        await caller_of(request)  # 401 without a credential, or a session's own 401/403
        raise Forbidden(
            "only the operator (Authorization: Bearer <admin_token>) mints portal links"
        )
    body = await read_body(request, PortalSessionCreate)
    sessions = sessions_of(request)
    if body.credential is not None:
        tenant = await request.app[PROXY_APP][HASHER].tenant(body.credential)
        assert tenant is not None
        owner = tenant
    else:
        assert body.tenant is not None
        owner = body.tenant
    session, token = await sessions.mint(owner, body.ttl, read_only=body.read_only)
    logger.info(
        "portal link minted",
        extra={"session": session.id, "owner": owner, "read_only": body.read_only},
    )
    return created(request, session, token)


async def delete_portal_session(request: web.Request) -> web.Response:
    """Revoke a session; 204. The operator revokes any; a session itself (signing out, even
    read-only); a client its own tenant's. Another's answers 404."""
    session_id = request.match_info["id"]
    settings = request.app[PROXY_APP][RUNTIME].settings
    sessions = sessions_of(request)
    owner: str | None
    if is_operator(request.headers.get("Authorization"), settings):
        owner = None
    else:
        current = await current_session(request)
        if current is not None and current.id == session_id:
            owner = current.owner
        else:
            owner = owner_scope(await caller_of(request))
    if not ID_RE.match(session_id) or not await sessions.revoke(session_id, owner):
        raise NotFound(f"no portal session {session_id!r}")
    logger.info("portal session revoked", extra={"session": session_id})
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    """Who the caller is: operator or client, its tenant, and the session it uses."""
    caller = await caller_of(request)
    session = await current_session(request)
    info = None
    if session is not None:
        info = SessionInfo(
            id=session.id, expires_at=iso(session.expires_at), read_only=session.read_only
        )
    return answer(
        Me(
            kind="operator" if caller == OPERATOR else "client",
            tenant=caller,
            read_only=bool(session and session.read_only),
            session=info,
        )
    )


# --------------------------------------------------------------------------------------------
# Catalog and message log
# --------------------------------------------------------------------------------------------


async def event_types(request: web.Request) -> web.Response:
    """Every event type the routes emit (and the test type), with an example payload."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    settings = request.app[PROXY_APP][RUNTIME].settings
    items = await catalog(settings, runtime.messages, owner_scope(caller))
    return answer(EventTypeList.model_validate({"event_types": items}))


async def list_messages(request: web.Request) -> web.Response:
    """The caller's delivery attempts, newest first, filtered, one page."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    query = read_query(request, MessagesQuery)
    owner = owner_scope(caller)
    if query.subscription is not None:
        sub = await runtime.store.get_for(query.subscription, caller)
        if sub is None:
            raise NotFound(f"no subscription {query.subscription!r}")
    attempts, next_cursor = await runtime.messages.attempts(
        owner,
        sub_id=query.subscription,
        status=query.status,
        event_type=query.event_type,
        since_ms=ms(query.since),
        until_ms=ms(query.until),
        cursor=query.cursor,
        limit=query.limit,
    )
    attempts = [attempt_view(a) for a in attempts]
    return answer(AttemptsPage.model_validate({"attempts": attempts, "next_cursor": next_cursor}))


async def get_message(request: web.Request) -> web.Response:
    """One message: payload, webhook headers, every attempt with its response excerpt."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    message_id = request.match_info["message_id"]
    found = None
    if ID_RE.match(message_id):
        found = await runtime.messages.message(owner_scope(caller), message_id)
    if found is None:
        raise NotFound(f"no message {message_id!r}")
    found["attempts"] = [attempt_view(a, whole=True) for a in found["attempts"]]
    return answer(MessageDetail.model_validate(found))


# --------------------------------------------------------------------------------------------
# One subscription: secret, stats, recover
# --------------------------------------------------------------------------------------------


async def reveal_secret(request: web.Request) -> web.Response:
    """The subscription's signing secret (and the previous one while it still signs)."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    session = await current_session(request)
    if session is not None and session.read_only:
        raise Forbidden("this portal session is read-only: it cannot reveal secrets")
    sub = await subscription_of(request, runtime, caller)
    previous = sub.previous_secret if sub.previous_until > time.time() else ""
    return answer(
        SecretView(
            id=sub.id,
            secret=sub.secret,
            previous_secret=previous or None,
            previous_secret_valid_until=iso(sub.previous_until) if previous else None,
        )
    )


async def subscription_stats(request: web.Request) -> web.Response:
    """Of the subscription's last attempts: how many, how many succeeded, the success rate."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    sub = await subscription_of(request, runtime, caller)
    attempts, _ = await runtime.messages.attempts(
        owner_scope(caller), sub_id=sub.id, limit=STATS_WINDOW
    )
    succeeded = sum(1 for a in attempts if a.get("result") == "delivered")
    return answer(
        SubscriptionStats(
            subscription_id=sub.id,
            window=STATS_WINDOW,
            attempts=len(attempts),
            succeeded=succeeded,
            failed=len(attempts) - succeeded,
            success_rate=round(succeeded / len(attempts), 4) if attempts else None,
            last_attempt_at=attempts[0]["time"] if attempts else None,
        )
    )


async def recover(request: web.Request) -> web.Response:
    """Queue one more attempt of every message of this subscription whose last attempt failed
    at or after `since`; 202 with their ids."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    sub = await subscription_of(request, runtime, caller)
    body = await read_body(request, Recover)
    if not sub.enabled:
        raise Conflict(f"subscription {sub.id!r} is disabled; enable it to recover")
    since_ms = ms(body.since)
    assert since_ms is not None
    ids = (await runtime.messages.failed_since(sub.owner, sub.id, since_ms))[:MAX_RECOVER]
    queued: list[str] = []
    if ids:
        async with runtime.redis.pipeline(transaction=False) as pipe:
            for message_id in ids:
                pipe.hget(message_key(runtime.prefix, sub.owner, message_id), "attempts")
            counts = await pipe.execute()
        for message_id, count in zip(ids, counts, strict=True):
            if count is None:  # expired meanwhile
                continue
            attempt = int(count) + 1
            if await runtime.outbox.requeue(sub.owner, sub.id, message_id, attempt, "recover"):
                queued.append(message_id)
    logger.info(
        "webhook messages recovered",
        extra={"sub": sub.id, "owner": sub.owner, "by": caller, "count": len(queued)},
    )
    return answer(
        Recovered(
            subscription_id=sub.id,
            since=iso(since_ms / 1000),
            message_ids=queued,
            count=len(queued),
        ),
        status=202,
    )


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of the admin API (public: it holds no data)."""
    settings = request.app[PROXY_APP][RUNTIME].settings
    return json_response(openapi_document(settings))


def setup_portal_routes(api: web.Application) -> None:
    """Add the portal's endpoints to the `/admin/api` sub-app."""
    one = "/subscriptions/{id}"
    api.router.add_post("/sign-in", sign_in)
    api.router.add_post("/portal-sessions", create_portal_session)
    api.router.add_delete("/portal-sessions/{id}", delete_portal_session)
    api.router.add_get("/me", me)
    api.router.add_get("/event-types", event_types)
    api.router.add_get("/messages", list_messages)
    api.router.add_get("/messages/{message_id}", get_message)
    api.router.add_get(one + "/secret", reveal_secret)
    api.router.add_get(one + "/stats", subscription_stats)
    api.router.add_post(one + "/recover", recover)
    api.router.add_get("/openapi.json", openapi_json)
