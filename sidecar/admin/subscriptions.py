"""Subscriptions: a caller's webhook endpoints, under `/admin/api/subscriptions`.

    POST   /subscriptions                       create; the secret is shown once
    GET    /subscriptions                       the caller's (operator: everyone's)
    GET    /subscriptions/{id}                  one
    PATCH  /subscriptions/{id}                  url, events, description, enabled
    DELETE /subscriptions/{id}                  it and its attempts log
    POST   /subscriptions/{id}/rotate-secret    new secret; the old one signs 24 h more
    GET    /subscriptions/{id}/secret           the signing secret (not for read-only sessions)
    GET    /subscriptions/{id}/stats            recent attempts, success rate, breaker state
    POST   /subscriptions/{id}/test             queue a test message

The operator creates operator-owned subscriptions and sees everyone's; a client sees only its
own (`callers`). Errors: 401, 404, 409 a disabled subscription or the quota reached, 422 invalid
fields (every problem listed), 429 past the test-send quota, 503 without Redis.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from aiohttp import web

from ..config import Settings
from ..errors import Conflict, Forbidden, NotFound, PayloadTooLarge, TooManyRequests
from ..ids import new_id
from ..tenancy import OPERATOR
from ..timestamps import iso
from ..webhooks.fanout import event_body, known_events
from ..webhooks.runtime import WebhookRuntime
from ..webhooks.store import QuotaExceeded, Subscription
from .bodies import (
    MessageForTest,
    SubscriptionCreate,
    SubscriptionPatch,
    SubscriptionsQuery,
    invalid,
    read_body,
    read_query,
    subscription_changes,
)
from .callers import caller_of, current_session, owner_scope, subscription_of
from .endpoints import answer, endpoint, json_response
from .services import services, webhooks_of
from .views import (
    MessageQueued,
    SecretRotated,
    SecretView,
    SubscriptionCreated,
    SubscriptionList,
    SubscriptionStats,
    SubscriptionView,
)

logger = logging.getLogger(__name__)

STATS_WINDOW = 100
MAX_TEST_PAYLOAD = 64 * 1024  # a test message's whole payload (its data and envelope)
ONE = "/subscriptions/{id}"


def subscription_view(sub: Subscription, caller: str) -> SubscriptionView:
    """A subscription as `caller` may see it: its owner and origin only for the operator."""
    fields: dict[str, Any] = sub.public()
    if caller == OPERATOR:
        fields.update(owner=sub.owner, declared=sub.declared)  # declared: edits last until restart
    return SubscriptionView.model_validate(fields)


def shown(view: SubscriptionView, status: int = 200) -> web.Response:
    """A subscription answer: fields it does not have are left out, not null."""
    return answer(view, status, exclude_none=True)


async def changed(runtime: WebhookRuntime, sub: Subscription, **changes: Any) -> Subscription:
    """Apply changes; 404 when the subscription was deleted meanwhile."""
    updated = await runtime.store.update(sub, **changes)
    if updated is None:
        raise NotFound(f"no subscription {sub.id!r}")
    return updated


@endpoint(
    "post",
    "/subscriptions",
    "createSubscription",
    "Create a subscription",
    "subscriptions",
    body=SubscriptionCreate,
    status=201,
    answer=SubscriptionCreated,
    errors=frozenset({409}),
)
async def create_subscription(request: web.Request) -> web.Response:
    """201 with the new subscription and its secret (the only answer but rotate that has it)."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    live = services(request).settings
    fields = await subscription_changes(
        request, SubscriptionCreate, runtime.policy, known_events(live), runtime.resolver
    )
    limit = 0 if caller == OPERATOR else runtime.settings.webhooks.max_subscriptions_per_tenant
    total = runtime.settings.webhooks.max_subscriptions
    if caller != OPERATOR and total and await runtime.store.clients_count() >= total:
        runtime.metrics.quota_refusals.labels("subscriptions_total").inc()
        logger.warning("the clients' subscriptions reached their total", extra={"limit": total})
        raise Conflict(
            f"the sidecar holds {total} client subscriptions, the most it may; "
            "try again later or ask the operator",
            limit=total,
        )
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
    view = subscription_view(sub, caller)
    created = SubscriptionCreated.model_validate({**view.model_dump(), "secret": sub.secret})
    return shown(created, status=201)


@endpoint(
    "get",
    "/subscriptions",
    "listSubscriptions",
    "The caller's subscriptions",
    "subscriptions",
    query=SubscriptionsQuery,
    answer=SubscriptionList,
)
async def list_subscriptions(request: web.Request) -> web.Response:
    """The caller's subscriptions, oldest first; the operator's view (everyone's) one page at a
    time, read from an index at the same cost however many there are."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    query = read_query(request, SubscriptionsQuery)
    next_cursor = None
    if caller == OPERATOR:
        subs, next_cursor = await runtime.store.page(query.cursor, query.limit)
    else:
        subs = await runtime.store.list_for([caller])
    listed = SubscriptionList(
        subscriptions=[subscription_view(s, caller) for s in subs], next_cursor=next_cursor
    )
    return json_response(
        listed.model_dump(mode="json", exclude_none=True) | {"next_cursor": next_cursor}
    )


@endpoint(
    "get", ONE, "getSubscription", "One subscription", "subscriptions", answer=SubscriptionView
)
async def get_subscription(request: web.Request) -> web.Response:
    """One subscription."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    return shown(subscription_view(await subscription_of(request, runtime, caller), caller))


@endpoint(
    "patch",
    ONE,
    "updateSubscription",
    "Change url, events, description, enabled",
    "subscriptions",
    body=SubscriptionPatch,
    answer=SubscriptionView,
)
async def patch_subscription(request: web.Request) -> web.Response:
    """Change url, events, description or enabled (validated like a create)."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    sub = await subscription_of(request, runtime, caller)
    live = services(request).settings
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
    return shown(subscription_view(sub, caller))


@endpoint(
    "delete",
    ONE,
    "deleteSubscription",
    "Delete a subscription and its log",
    "subscriptions",
    status=204,
)
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


@endpoint(
    "post",
    ONE + "/rotate-secret",
    "rotateSecret",
    "A new secret; the old one signs 24 h more",
    "subscriptions",
    answer=SecretRotated,
)
async def rotate_secret(request: web.Request) -> web.Response:
    """A new secret; the previous one signs beside it until `previous_secret_valid_until`."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    rotated = await runtime.store.rotate(await subscription_of(request, runtime, caller))
    if rotated is None:  # deleted meanwhile
        raise NotFound(f"no subscription {request.match_info['id']!r}")
    sub = rotated
    logger.info("webhook secret rotated", extra={"sub": sub.id, "owner": sub.owner, "by": caller})
    return answer(
        SecretRotated(
            id=sub.id, secret=sub.secret, previous_secret_valid_until=iso(sub.previous_until)
        )
    )


@endpoint(
    "get",
    ONE + "/secret",
    "revealSecret",
    "The signing secret",
    "subscriptions",
    answer=SecretView,
    errors=frozenset({403}),
)
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


@endpoint(
    "get",
    ONE + "/stats",
    "getSubscriptionStats",
    "Recent success rate",
    "subscriptions",
    answer=SubscriptionStats,
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
            breaker=runtime.breakers.state(sub.id),
        )
    )


async def count_test_send(runtime: WebhookRuntime, caller: str, now: float, size: int) -> None:
    """Count a client's test send against its own limit, then every client's together; 429
    with Retry-After past either."""
    config = runtime.settings.webhooks
    wait_s = await runtime.quotas.test_send(caller, now)
    if wait_s is not None:
        runtime.metrics.quota_refusals.labels("test_sends").inc()
        limit = config.test_sends_per_minute
        raise TooManyRequests(
            f"at most {limit} test messages a minute; try again in {wait_s} s",
            headers={"Retry-After": str(wait_s)},
            limit=limit,
        )
    refused = await runtime.quotas.all_test_sends(now, size)
    if refused is not None:
        what, wait_s = refused
        runtime.metrics.quota_refusals.labels(f"test_{what}_total").inc()
        detail = (
            f"all clients together may send {config.test_sends_per_minute_total} test "
            "messages a minute"
            if what == "sends"
            else f"all clients together may send {config.test_data_per_hour} bytes of test "
            "data an hour"
        )
        raise TooManyRequests(
            f"{detail}; try again in {wait_s} s", headers={"Retry-After": str(wait_s)}
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


@endpoint(
    "post",
    ONE + "/test",
    "sendTest",
    "Queue a test message",
    "subscriptions",
    body=MessageForTest,
    body_required=False,
    status=202,
    answer=MessageQueued,
    errors=frozenset({409, 429}),
)
async def send_test(request: web.Request) -> web.Response:
    """Queue a test message for this subscription, whatever its events; 202 with its id."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    sub = await subscription_of(request, runtime, caller)
    body = await read_body(request, MessageForTest, optional=True)
    live = services(request).settings
    known = known_events(live)
    if body.type not in known:
        choices = ", ".join(repr(e) for e in sorted(known))
        raise invalid([f"type: unknown event type {body.type!r} (use {choices})"])
    if not sub.enabled:
        raise Conflict(f"subscription {sub.id!r} is disabled; enable it to send a test")
    now = time.time()
    payload = payload_for_test(live, body.type, body.data, now)
    if len(payload) > MAX_TEST_PAYLOAD:
        raise PayloadTooLarge(
            f"a test message may hold at most {MAX_TEST_PAYLOAD // 1024} KiB "
            f"(this one: {len(payload)} bytes)"
        )
    if caller != OPERATOR:
        await count_test_send(runtime, caller, now, len(payload))
    message_id = "msg_" + secrets.token_hex(13)
    await runtime.outbox.enqueue(
        message_id,
        sub.owner,
        sub.id,
        body.type,
        payload,
        int(now * 1000),
        trigger="test",
        ttl_s=int(runtime.settings.webhooks.test_retention),
    )
    logger.info(
        "webhook test queued",
        extra={"sub": sub.id, "owner": sub.owner, "by": caller, "message_id": message_id},
    )
    return answer(MessageQueued(message_id=message_id), status=202)
