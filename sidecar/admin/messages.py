"""The message log: every delivery attempt a caller may see, one message whole, and sending
messages again.

    GET    /messages                                    the log: filters, cursor pages
    GET    /messages/{message_id}                       one message, its headers and attempts
    GET    /subscriptions/{id}/attempts?limit=&status=  a subscription's attempts, newest first
    POST   /subscriptions/{id}/messages/{mid}/redeliver one more (manual) attempt
    POST   /subscriptions/{id}/recover                  redeliver every failed message since

Everything is read and queued through the webhook engine (`MessageLog`, `Outbox`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web

from ..errors import Conflict, NotFound
from ..timestamps import iso
from .bodies import AttemptsQuery, MessagesQuery, Recover, invalid, ms, read_body, read_query
from .callers import caller_of, owner_scope, subscription_of
from .endpoints import ID_RE, answer, endpoint
from .services import webhooks_of
from .views import AttemptsLog, AttemptsPage, MessageDetail, Recovered, Redelivered

logger = logging.getLogger(__name__)

MAX_RECOVER = 1000  # messages one recover call queues at most
ATTEMPTS_LIMIT_MAX = 1000
RESULTS = ("delivered", "retry", "dead", "disabled", "failed")  # `result` of an attempt log
DIGITS = re.compile(r"[0-9]{1,6}")  # ASCII digits only: str.isdigit() also takes "²"
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


@endpoint(
    "get",
    "/messages",
    "listMessages",
    "The message log, newest first",
    "messages",
    query=MessagesQuery,
    answer=AttemptsPage,
    errors=frozenset({404}),  # an unknown (or another's) subscription filter
)
async def list_messages(request: web.Request) -> web.Response:
    """The caller's delivery attempts, newest first, filtered, one page."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    query = read_query(request, MessagesQuery)
    if query.subscription is not None:
        sub = await runtime.store.get_for(query.subscription, caller)
        if sub is None:
            raise NotFound(f"no subscription {query.subscription!r}")
    attempts, next_cursor = await runtime.messages.attempts(
        owner_scope(caller),
        sub_id=query.subscription,
        status=query.status,
        event_type=query.event_type,
        since_ms=ms(query.since),
        until_ms=ms(query.until),
        cursor=query.cursor,
        limit=query.limit,
    )
    page = {"attempts": [attempt_view(a) for a in attempts], "next_cursor": next_cursor}
    return answer(AttemptsPage.model_validate(page))


@endpoint(
    "get",
    "/messages/{message_id}",
    "getMessage",
    "One message with every attempt",
    "messages",
    answer=MessageDetail,
)
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


def attempts_query(request: web.Request) -> AttemptsQuery:
    """(limit, status) from the query; 422 naming every bad parameter."""
    problems = []
    raw_limit = request.query.get("limit", "50")
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
    return AttemptsQuery.model_validate({"limit": limit, "status": status})


@endpoint(
    "get",
    "/subscriptions/{id}/attempts",
    "listAttempts",
    "The subscription's attempts log",
    "messages",
    query=AttemptsQuery,
    answer=AttemptsLog,
)
async def list_attempts(request: web.Request) -> web.Response:
    """The attempts log, newest first, at most `limit`, optionally only one `status` (result)."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    sub = await subscription_of(request, runtime, caller)
    query = attempts_query(request)
    attempts = await runtime.messages.subscription_attempts(
        sub.owner, sub.id, query.limit, query.status
    )
    return answer(AttemptsLog.model_validate({"attempts": attempts}))


@endpoint(
    "post",
    "/subscriptions/{id}/messages/{message_id}/redeliver",
    "redeliverMessage",
    "Queue one more attempt of a message",
    "messages",
    status=202,
    answer=Redelivered,
    errors=frozenset({409}),
)
async def redeliver(request: web.Request) -> web.Response:
    """Queue one more (manual, not retried) attempt of a message of this subscription; 202."""
    runtime = webhooks_of(request)
    caller = await caller_of(request)
    sub = await subscription_of(request, runtime, caller)
    message_id = request.match_info["message_id"]
    missing = NotFound(f"no message {message_id!r} for subscription {sub.id!r}")
    if not ID_RE.match(message_id) or not await runtime.messages.of_subscription(
        sub.owner, sub.id, message_id
    ):
        raise missing
    if not sub.enabled:
        raise Conflict(f"subscription {sub.id!r} is disabled; enable it to redeliver")
    lost = await runtime.messages.lost_reason(sub.owner, message_id)
    if lost is not None:
        raise Conflict(
            f"message {message_id!r} was dead-lettered ({lost}): Redis lost its payload, "
            "so it cannot be sent again"
        )
    queued = await runtime.outbox.redeliver(sub.owner, sub.id, [message_id], "manual")
    if message_id not in queued:
        raise missing
    logger.info(
        "webhook message redelivered",
        extra={"sub": sub.id, "owner": sub.owner, "by": caller, "message_id": message_id},
    )
    return answer(Redelivered(message_id=message_id, attempt=queued[message_id]), status=202)


@endpoint(
    "post",
    "/subscriptions/{id}/recover",
    "recoverFailed",
    "Redeliver every failed message since a time",
    "messages",
    body=Recover,
    status=202,
    answer=Recovered,
    errors=frozenset({409}),
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
    queued = list(await runtime.outbox.redeliver(sub.owner, sub.id, ids, "recover"))
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
