"""Operations on the admin API: one call's whole story, and forgetting it.

    GET    /operations/{correlation_id}   the operation and its timeline, oldest first
    DELETE /operations/{correlation_id}   operator only: expunge it (a client to be forgotten)

The timeline joins what the sidecar recorded of the call itself (its event list, written with
its tracking record and its closing write) and what the webhook engine recorded of its
deliveries (each attempt of each of its messages, from the message log): nothing is written
twice. A client sees its own operations and its own subscriptions' attempts; the operator
sees every operation and every attempt. Another client's operation answers 404, like one that
does not exist (or has expired).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from ..errors import Forbidden, NotFound
from ..operations import Operations
from ..operations.records import Operation
from ..tenancy import OPERATOR
from ..timeline import HARD_CAP, WEBHOOK_ATTEMPT, decode_event
from ..timestamps import iso
from ..webhooks.keys import message_key, message_log_key
from ..webhooks.outbox import message_id_for
from ..webhooks.runtime import WebhookRuntime
from .callers import caller_of
from .endpoints import CORRELATION_RE, answer, endpoint
from .services import operations_of, services
from .views import OperationView

logger = logging.getLogger(__name__)


@endpoint(
    "get",
    "/operations/{correlation_id}",
    "getOperation",
    "One operation and its timeline",
    "operations",
    answer=OperationView,
)
async def get_operation(request: web.Request) -> web.Response:
    """The operation by its correlation id: route, state, and every step, oldest first."""
    ops = operations_of(request)
    caller = await caller_of(request)
    op, stored = await _visible(request, ops, caller)
    events = [e for e in (decode_event(raw) for raw in stored) if e is not None]
    runtime = services(request).webhooks
    if runtime is not None:
        events += await _attempts(runtime, op, caller)
    events.sort(key=lambda e: e["at_ms"])  # stable: writers' order within a millisecond
    view = {
        "correlation_id": op.correlation_id,
        "operation_id": op.operation_id,
        "route": op.route,
        "state": await _state(ops, op),
        "created_at": iso(op.created_ms / 1000),
        "location": op.location,
        "owner": (op.tenant or "-") if caller == OPERATOR else None,
        "events": [{k: v for k, v in e.items() if k != "at_ms"} for e in events[: HARD_CAP * 2]],
        "events_dropped": op.dropped,
    }
    return answer(OperationView.model_validate(view), exclude_none=True)


@endpoint(
    "delete",
    "/operations/{correlation_id}",
    "expungeOperation",
    "Forget an operation (operator only)",
    "operations",
    access="operator",
    status=204,
)
async def expunge_operation(request: web.Request) -> web.Response:
    """Operator only: delete what the sidecar keeps of the operation (its record, timeline,
    status URL, Idempotency-Key, tracking record and webhook messages with their payloads);
    204. Its status URL answers 404 from now on, and a retry with its key runs anew."""
    ops = operations_of(request)
    # The admin token, or an operator's portal session (not a read-only one: 403 there).
    if await caller_of(request) != OPERATOR:
        raise Forbidden("only the operator expunges an operation")
    op, _ = await _visible(request, ops, OPERATOR)
    runtime = services(request).webhooks
    messages = []
    if runtime is not None:
        for owner, message_id, _ in await _messages(runtime, op, OPERATOR):
            messages += [
                message_key(runtime.prefix, owner, message_id),
                message_log_key(runtime.prefix, owner, message_id),
            ]
    await ops.store.expunge(op, messages)
    logger.info(
        "operation expunged",
        extra={
            "correlation_id": op.correlation_id,
            "route": op.route,
            "messages": len(messages) // 2,
        },
    )
    return web.Response(status=204)


async def _visible(
    request: web.Request, ops: Operations, caller: str
) -> tuple[Operation, list[bytes]]:
    """The `{correlation_id}` operation and its stored events, if the caller may see it."""
    correlation_id = request.match_info["correlation_id"]
    op: Operation | None = None
    stored: list[bytes] = []
    if CORRELATION_RE.match(correlation_id):
        op, stored = await ops.store.summary(correlation_id)
    if op is None or (caller != OPERATOR and op.tenant != caller):
        raise NotFound(f"no operation {correlation_id!r}")
    return op, stored


async def _state(ops: Operations, op: Operation) -> str:
    """succeeded or failed once its outcome is known; pending while its call is tracked (a
    completion can still be matched); else expired."""
    if op.outcome is not None:
        return op.outcome.state
    if op.wait_id and await ops.store.tracked(op.wait_id):
        return "pending"
    return "expired"


async def _messages(
    runtime: WebhookRuntime, op: Operation, caller: str
) -> list[tuple[str, str, str]]:
    """(owner, message id, subscription id) of each message the operation's completion
    may have made for a subscription the caller may see. Message ids derive from the call
    (`message_id_for`), so they are found without an index."""
    if not op.wait_id or not op.tracked_at:
        return []
    owners = {op.tenant or OPERATOR, OPERATOR} if caller == OPERATOR else {caller}
    subs = [s for found in (await runtime.store.of_owners(owners)).values() for s in found]
    out = []
    for sub in subs:
        message_id = message_id_for(op.wait_id, op.tracked_at, sub.id)
        out.append((sub.owner, message_id, sub.id))
    return out


async def _attempts(runtime: WebhookRuntime, op: Operation, caller: str) -> list[dict[str, Any]]:
    """Every delivery attempt of the operation's messages, as timeline events."""
    found = await _messages(runtime, op, caller)
    if not found:
        return []
    async with runtime.redis.pipeline(transaction=False) as pipe:
        for owner, message_id, _ in found:
            pipe.lrange(message_log_key(runtime.prefix, owner, message_id), 0, -1)
        logs = await pipe.execute()
    events = []
    for (_, message_id, sub_id), log in zip(found, logs, strict=True):
        for attempt in _decoded(log):
            at_ms = _ms(attempt.get("time"))
            if at_ms is None:
                continue
            events.append(
                {
                    "at": attempt["time"],
                    "at_ms": at_ms,
                    "kind": WEBHOOK_ATTEMPT,
                    "message_id": message_id,
                    "subscription": sub_id,
                    "attempt": attempt.get("attempt"),
                    "status": attempt.get("response_status"),
                    "result": attempt.get("result"),
                    "trigger": attempt.get("trigger"),
                    "error": attempt.get("error"),
                    "duration_ms": attempt.get("duration_ms"),
                }
            )
    return events


def _decoded(log: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for line in log:
        try:
            attempt = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(attempt, dict):
            out.append(attempt)
    return out


def _ms(text: object) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        return None
