"""The webhook admin JSON API, mounted at `/admin/api` on the admin listener.

    POST   /subscriptions                                   create; the secret is shown once
    GET    /subscriptions                                   the caller's (operator: everyone's)
    GET    /subscriptions/{id}                              one
    PATCH  /subscriptions/{id}                              url, events, description, enabled
    DELETE /subscriptions/{id}                              it and its attempts log
    POST   /subscriptions/{id}/rotate-secret                new secret; the old one signs 24 h more
    POST   /subscriptions/{id}/test                         queue a test message
    GET    /subscriptions/{id}/attempts?limit=&status=      attempts log, newest first
    POST   /subscriptions/{id}/messages/{message_id}/redeliver

Who calls: `Authorization: Bearer <admin_token>` is the operator, who sees and edits everything
and creates operator-owned subscriptions. Any other value of the credential header
(`tenancy.credential_header`) is a client, hashed exactly as the proxy hashes it, who sees only
its own subscriptions: another's answers 404, like a missing one.

Answers are JSON. Errors are problem+json, made by the admin listener's error boundary: 400
malformed JSON, 401 no credential, 404, 409 a disabled subscription or the subscription quota
reached, 422 invalid fields (every problem listed), 429 past the test-send quota, 503 without
Redis or while it fails.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from typing import Any

import orjson
from aiohttp import web

from ..config import Settings
from ..errors import (
    Conflict,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from ..ids import new_id
from ..routing import RUNTIME
from ..state import HASHER, PROXY_APP
from ..tenancy import OPERATOR
from ..timestamps import iso
from .bodies import (
    MessageForTest,
    SubscriptionCreate,
    SubscriptionPatch,
    invalid,
    known_events,
    read_body,
    subscription_changes,
)
from .fanout import event_body
from .keys import attempts_key, message_key
from .portal_auth import session_caller
from .runtime import WEBHOOKS, WebhookRuntime
from .store import QuotaExceeded, Subscription

logger = logging.getLogger(__name__)

ATTEMPTS_LIMIT_DEFAULT, ATTEMPTS_LIMIT_MAX = 50, 1000
RESULTS = ("delivered", "retry", "dead", "disabled", "failed")  # `result` of an attempt log
ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")  # any other id is unknown, without asking Redis
DIGITS = re.compile(r"[0-9]{1,6}")  # ASCII digits only: str.isdigit() also takes "²"
REALM = 'Bearer realm="sidecar-admin"'


# --------------------------------------------------------------------------------------------
# Callers, errors, views
# --------------------------------------------------------------------------------------------


def is_operator(authorization: str | None, settings: Settings) -> bool:
    """True when `Authorization` is `Bearer <admin_token>` (compared in constant time)."""
    if settings.admin_token is None or not authorization:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    expected = settings.admin_token.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)


async def caller_of(request: web.Request) -> str:
    """`OPERATOR`, or the caller's tenant (the credential header's value, hashed as the proxy
    hashes it); 401 without a credential."""
    proxy_app = request.app[PROXY_APP]
    settings = proxy_app[RUNTIME].settings
    if is_operator(request.headers.get("Authorization"), settings):
        return OPERATOR
    # A portal session (`Authorization: Bearer psess_...`) stands for its owner; see portal_auth.
    session_owner = await session_caller(request)
    if session_owner is not None:
        return session_owner
    header = settings.tenancy.credential_header
    tenant = await proxy_app[HASHER].tenant(request.headers.get(header) or None)
    if tenant is None:
        raise Unauthorized(
            f"send your client credential in the {header} header",
            headers={"WWW-Authenticate": REALM},
        )
    return tenant


def webhooks_of(request: web.Request) -> WebhookRuntime:
    """The webhook runtime; 503 when webhooks do not run (no Redis configured)."""
    runtime = request.app[PROXY_APP].get(WEBHOOKS)
    if runtime is None:
        raise Unavailable("webhooks need redis_url")
    return runtime


async def subscription_of(
    request: web.Request, runtime: WebhookRuntime, caller: str
) -> Subscription:
    """The `{id}` subscription if the caller may see it; 404 (missing or another's) otherwise."""
    sub_id = request.match_info["id"]
    sub = await runtime.store.get_for(sub_id, caller) if ID_RE.match(sub_id) else None
    if sub is None:
        raise NotFound(f"no subscription {sub_id!r}")
    return sub


async def changed(runtime: WebhookRuntime, sub: Subscription, **changes: Any) -> Subscription:
    """Apply changes; 404 when the subscription was deleted meanwhile."""
    updated = await runtime.store.update(sub, **changes)
    if updated is None:
        raise NotFound(f"no subscription {sub.id!r}")
    return updated


def view(sub: Subscription, caller: str, secret: bool = False) -> dict[str, Any]:
    """The JSON view of a subscription: the owner only for the operator, the secret on demand."""
    out = sub.public()
    if caller == OPERATOR:
        out["owner"] = sub.owner
        out["declared"] = sub.declared  # from the YAML file: edits last until the next restart
    if secret:
        out["secret"] = sub.secret
    return out


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer (orjson)."""
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------


async def create_subscription(request: web.Request) -> web.Response:
    """201 with the new subscription and its secret (the only answer but rotate that has it)."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    live = request.app[PROXY_APP][RUNTIME].settings
    fields = await subscription_changes(
        request, SubscriptionCreate, runtime.policy, known_events(live), runtime.resolver
    )
    limit = 0 if caller == OPERATOR else runtime.settings.webhooks.max_subscriptions_per_tenant
    try:
        sub = await runtime.store.create(
            caller, fields["url"], fields["events"], fields.get("description", ""), limit=limit
        )
    except QuotaExceeded:
        runtime.metrics.quota_refusals.labels("subscriptions").inc()
        logger.info("subscription quota reached", extra={"owner": caller, "limit": limit})
        raise Conflict(
            f"this client has {limit} subscriptions, the most it may have; delete one first",
            limit=limit,
        ) from None
    if not fields.get("enabled", True):
        sub = await changed(runtime, sub, enabled=False)
    logger.info(
        "webhook subscription created",
        extra={"sub": sub.id, "owner": caller, "events": sub.events, "enabled": sub.enabled},
    )
    return json_response(view(sub, caller, secret=True), status=201)


async def list_subscriptions(request: web.Request) -> web.Response:
    """The caller's subscriptions (the operator's: everyone's), oldest first."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    subs = await runtime.store.list_for(None if caller == OPERATOR else [caller])
    return json_response({"subscriptions": [view(s, caller) for s in subs]})


async def get_subscription(request: web.Request) -> web.Response:
    """One subscription."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    return json_response(view(await subscription_of(request, runtime, caller), caller))


async def patch_subscription(request: web.Request) -> web.Response:
    """Change url, events, description or enabled (validated like a create)."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    sub = await subscription_of(request, runtime, caller)
    live = request.app[PROXY_APP][RUNTIME].settings
    changes = await subscription_changes(
        request, SubscriptionPatch, runtime.policy, known_events(live), runtime.resolver
    )
    if changes.get("enabled") and not sub.enabled:
        # Enabled again by hand: its failing streak starts anew.
        changes.update(disabled_reason="", failing_since=0.0)
    if changes:
        sub = await changed(runtime, sub, **changes)
        logger.info(
            "webhook subscription changed",
            extra={"sub": sub.id, "owner": sub.owner, "by": caller, "fields": sorted(changes)},
        )
    return json_response(view(sub, caller))


async def delete_subscription(request: web.Request) -> web.Response:
    """Delete it and its attempts log; 204."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    sub = await subscription_of(request, runtime, caller)
    await runtime.store.delete(sub)
    logger.info(
        "webhook subscription deleted", extra={"sub": sub.id, "owner": sub.owner, "by": caller}
    )
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    """A new secret; the previous one signs beside it until `previous_secret_valid_until`."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    rotated = await runtime.store.rotate(await subscription_of(request, runtime, caller))
    if rotated is None:  # deleted meanwhile
        raise NotFound(f"no subscription {request.match_info['id']!r}")
    sub = rotated
    logger.info("webhook secret rotated", extra={"sub": sub.id, "owner": sub.owner, "by": caller})
    return json_response(
        {
            "id": sub.id,
            "secret": sub.secret,
            "previous_secret_valid_until": iso(sub.previous_until),
        }
    )


def payload_for_test(settings: Settings, event_type: str, data: Any, ts: float) -> bytes:
    """A payload shaped like a completion's; a route's event type names that route."""
    route, status = None, "test"
    for r in settings.routes:
        if event_type in (r.success_event, r.failure_event):
            route = r.name
            status = "succeeded" if event_type == r.success_event else "failed"
            break
    return event_body(
        event_type,
        route=route,
        status=status,
        data=data,
        correlation_id=new_id(),
        location=None,
        ts=ts,
    )


async def send_test(request: web.Request) -> web.Response:
    """Queue a test message for this subscription, whatever its events; 202 with its id."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    sub = await subscription_of(request, runtime, caller)
    body = await read_body(request, MessageForTest, optional=True)
    live = request.app[PROXY_APP][RUNTIME].settings
    known = known_events(live)
    if body.type not in known:
        choices = ", ".join(repr(e) for e in sorted(known))
        raise invalid([f"type: unknown event type {body.type!r} (use {choices})"])
    if not sub.enabled:
        raise Conflict(f"subscription {sub.id!r} is disabled; enable it to send a test")
    now = time.time()
    if caller != OPERATOR:
        wait_s = await runtime.quotas.test_send(caller, now)
        if wait_s is not None:
            runtime.metrics.quota_refusals.labels("test_sends").inc()
            limit = runtime.settings.webhooks.test_sends_per_minute
            raise TooManyRequests(
                f"at most {limit} test messages a minute; try again in {wait_s} s",
                headers={"Retry-After": str(wait_s)},
                limit=limit,
            )
    message_id = "msg_" + secrets.token_hex(13)
    payload = payload_for_test(live, body.type, body.data, now)
    await runtime.outbox.enqueue(
        message_id, sub.owner, sub.id, body.type, payload, int(now * 1000), trigger="test"
    )
    logger.info(
        "webhook test queued",
        extra={"sub": sub.id, "owner": sub.owner, "by": caller, "message_id": message_id},
    )
    return json_response({"message_id": message_id}, status=202)


def attempts_query(request: web.Request) -> tuple[int, str | None]:
    """(limit, status) from the query; 422 naming every bad parameter."""
    problems = []
    raw_limit = request.query.get("limit", str(ATTEMPTS_LIMIT_DEFAULT))
    limit = int(raw_limit) if DIGITS.fullmatch(raw_limit) else 0
    if not 1 <= limit <= ATTEMPTS_LIMIT_MAX:
        problems.append(
            f"limit: must be an integer from 1 to {ATTEMPTS_LIMIT_MAX} (got {raw_limit!r})"
        )
    status = request.query.get("status") or None
    if status is not None and status not in RESULTS:
        problems.append(f"status: unknown result {status!r} (use {', '.join(RESULTS)})")
    if problems:
        raise invalid(problems)
    return limit, status


async def list_attempts(request: web.Request) -> web.Response:
    """The attempts log, newest first, at most `limit`, optionally only one `status` (result)."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    sub = await subscription_of(request, runtime, caller)
    limit, status = attempts_query(request)
    # The log is capped (1000), so a filtered read scans it whole.
    stop = -1 if status else limit - 1
    key = attempts_key(runtime.prefix, sub.owner, sub.id)
    raw = await runtime.redis.lrange(key, 0, stop)  # type: ignore[misc]
    attempts = []
    for item in raw:
        try:
            attempt = orjson.loads(item)
        except orjson.JSONDecodeError:
            continue
        if status is None or attempt.get("result") == status:
            attempts.append(attempt)
            if len(attempts) >= limit:
                break
    return json_response({"attempts": attempts})


async def redeliver(request: web.Request) -> web.Response:
    """Queue one more (manual, not retried) attempt of a message of this subscription; 202."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    sub = await subscription_of(request, runtime, caller)
    message_id = request.match_info["message_id"]
    key = message_key(runtime.prefix, sub.owner, message_id)
    raw = await runtime.redis.hmget(key, ["sub", "attempts"]) if ID_RE.match(message_id) else None  # type: ignore[misc]
    if not raw or raw[0] is None or raw[0].decode() != sub.id:
        raise NotFound(f"no message {message_id!r} for subscription {sub.id!r}")
    if not sub.enabled:
        raise Conflict(f"subscription {sub.id!r} is disabled; enable it to redeliver")
    attempt = int(raw[1] or 0) + 1
    if not await runtime.outbox.requeue(sub.owner, sub.id, message_id, attempt, "manual"):
        raise NotFound(f"no message {message_id!r} for subscription {sub.id!r}")
    logger.info(
        "webhook message redelivered",
        extra={"sub": sub.id, "owner": sub.owner, "by": caller, "message_id": message_id},
    )
    return json_response({"message_id": message_id, "attempt": attempt}, status=202)


def setup_admin_routes(admin: web.Application) -> None:
    """Mount the API at `/admin/api` as a sub-app of `admin` (which holds `PROXY_APP`)."""
    api = web.Application()
    api[PROXY_APP] = admin[PROXY_APP]
    one = "/subscriptions/{id}"
    api.router.add_post("/subscriptions", create_subscription)
    api.router.add_get("/subscriptions", list_subscriptions)
    api.router.add_get(one, get_subscription)
    api.router.add_patch(one, patch_subscription)
    api.router.add_delete(one, delete_subscription)
    api.router.add_post(one + "/rotate-secret", rotate_secret)
    api.router.add_post(one + "/test", send_test)
    api.router.add_get(one + "/attempts", list_attempts)
    api.router.add_post(one + "/messages/{message_id}/redeliver", redeliver)
    from .portal_api import setup_portal_routes  # it builds on this module's helpers

    setup_portal_routes(api)  # portal sessions, the message log, the catalog, openapi.json
    admin.add_subapp("/admin/api", api)
