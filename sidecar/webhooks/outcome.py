"""Recording what an attempt led to, beside the outbox it reads from.

Every outcome is written in one MULTI under the owner's hash tag: the queue entry acked and
deleted, the attempts logs (the subscription's, the message's, the owner's), the message's
state, the next retry (`retry.decide`), and the endpoint's failing time. After it: the owner's
earliest due retry (a global index), a dead letter for a message past its last retry, the
metrics, one log line, and the endpoint disabled when it answered 410 or has failed for
`disable_after`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.typing import EncodableT, FieldT

from ..config import Webhooks
from ..connections import Client, is_cluster
from ..timestamps import iso
from .attempt import AttemptResult
from .keys import (
    DELIVERY_GROUP,
    all_log_key,
    attempts_key,
    dead_key,
    due_key,
    dues_key,
    message_key,
    message_log_key,
    owner_log_key,
    queue_key,
    subscription_key,
)
from .metrics import WebhookMetrics
from .outbox import MESSAGE_TTL_S, Outbox
from .retry import State, decide
from .store import Subscription, SubscriptionStore

logger = logging.getLogger("sidecar.webhooks.delivery")

ATTEMPTS_KEPT = 1000  # per subscription
MESSAGE_ATTEMPTS_KEPT = 100  # per message
OWNER_LOG_KEPT = 10_000  # per owner (approximate)
ALL_LOG_KEPT = 100_000  # every owner's together, the operator's log (approximate)
DETAIL_ONLY = ("response_excerpt", "error_detail")  # kept per message, not in the owner's log

# KEYS: the subscription. ARGV: 1 delivered / 0 failed, now. The time it has been failing
# since (0 when delivered; -1 when the subscription is gone: nothing is created).
_FAILING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return '-1' end
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'failing_since', '0') return '0' end
local since = tonumber(redis.call('HGET', KEYS[1], 'failing_since') or '0') or 0
if since > 0 then return tostring(since) end
redis.call('HSET', KEYS[1], 'failing_since', ARGV[2])
return ARGV[2]
"""


@dataclass(frozen=True, slots=True)
class Written:
    """Which attempt an outcome is written for, and the message's state after it."""

    entry_id: str
    message_id: str
    sub: Subscription
    attempt: int
    trigger: str
    state: State
    next_at: float | None  # when the next attempt is due (epoch seconds), if any
    ttl_s: int = MESSAGE_TTL_S  # the message's own retention, from its last attempt


class OutcomeWriter:
    """Writes attempts' outcomes and takes finished queue entries out."""

    def __init__(
        self,
        redis: Client,
        prefix: str,
        config: Webhooks,
        outbox: Outbox,
        store: SubscriptionStore,
        metrics: WebhookMetrics,
    ) -> None:
        self.redis, self.prefix, self.config = redis, prefix, config
        self.outbox, self.store, self.metrics = outbox, store, metrics
        self.one_server = not is_cluster(redis)

    async def finish_entry(self, owner: str, sub_id: str, entry_id: str) -> None:
        """Take a queue entry out without an attempt (its message is gone, or was made)."""
        queue = queue_key(self.prefix, owner, sub_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(queue, DELIVERY_GROUP, entry_id)
            pipe.xdel(queue, entry_id)
            await pipe.execute()

    async def record(
        self,
        entry_id: str,
        message_id: str,
        msg: dict[str, bytes],
        sub: Subscription,
        attempt: int,
        trigger: str,
        result: AttemptResult,
    ) -> None:
        """Record attempt `attempt` of message `message_id` (queue entry `entry_id`) and what
        follows from it."""
        event_type = msg["type"].decode()
        now = time.time()
        decision = decide(self.config.schedule, attempt, trigger, result)
        outcome = decision.outcome
        next_at = now + decision.delay_s if decision.delay_s is not None else None
        log = {
            "message_id": message_id,
            "sub_id": sub.id,
            "type": event_type,
            "attempt": attempt,
            "time": iso(now),
            "trigger": trigger,
            "result": outcome,
            "response_status": result.status,
            "duration_ms": round(result.duration_s * 1000, 1),
            "error": result.error,
            "error_detail": result.detail,
            "response_excerpt": result.excerpt,
            "next_attempt_at": iso(next_at) if next_at else None,
        }
        owner = sub.owner
        failing_since = await self._write(
            Written(
                entry_id,
                message_id,
                sub,
                attempt,
                trigger,
                decision.state,
                next_at,
                int(msg.get("ttl") or MESSAGE_TTL_S),
            ),
            log,
            result.headers,
            now,
        )
        due_ms = int(next_at * 1000) if next_at is not None else None
        dead = (
            dead_letter(message_id, owner, sub.id, event_type, now) if outcome == "dead" else None
        )
        # On one server the operator's log is written in the owner's transaction already.
        line = None if self.one_server else everyone_line(log, owner)
        await self._index(owner, due_ms, dead, line)
        self.metrics.attempts.labels(event_type, outcome).inc()
        if outcome == "delivered" and msg.get("state") != b"delivered":
            self.metrics.latency.observe(max(0.0, now - int(msg["created_ms"]) / 1000))
        if outcome == "dead":
            self.metrics.dead_letters.inc()
        logger.info("webhook attempt", extra=_loggable(log) | {"owner": owner})
        if outcome == "disabled":  # only while it exists: a deleted one is not brought back
            await self._disable(sub, "gone", "the receiver answered 410 Gone")
        elif failing_since > 0 and now - failing_since >= self.config.disable_after:
            days = (now - failing_since) / 86400
            await self._disable(sub, "failing", f"every attempt failed for {days:.1f} days")

    async def _index(
        self,
        owner: str,
        due_ms: int | None,
        dead: dict[FieldT, EncodableT] | None,
        line: bytes | None,
    ) -> None:
        """The global indexes, after the owner's transaction (other slots on a cluster): the
        owner's earliest retry, the dead letter, the operator's log of every owner's attempts."""
        if due_ms is None and dead is None and line is None:
            return
        prefix = self.prefix
        async with self.redis.pipeline(transaction=False) as pipe:
            if due_ms is not None:
                pipe.zadd(dues_key(prefix), {owner: due_ms}, lt=True)
            if dead is not None:
                pipe.xadd(
                    dead_key(prefix), dead, maxlen=self.config.outbox_maxlen, approximate=True
                )
            if line is not None:
                pipe.xadd(all_log_key(prefix), {"a": line}, maxlen=ALL_LOG_KEPT, approximate=True)
            await pipe.execute()

    async def _write(
        self, it: Written, log: dict[str, Any], headers: dict[str, str], now: float
    ) -> float:
        """The MULTI; the time the endpoint has been failing since (0: it is not)."""
        line = orjson.dumps(log)
        owner, prefix, sub = it.sub.owner, self.prefix, it.sub
        mkey = message_key(prefix, owner, it.message_id)
        mlog = message_log_key(prefix, owner, it.message_id)
        queue = queue_key(prefix, owner, sub.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(queue, DELIVERY_GROUP, it.entry_id)
            pipe.xdel(queue, it.entry_id)
            pipe.lpush(attempts_key(prefix, owner, sub.id), line)
            pipe.ltrim(attempts_key(prefix, owner, sub.id), 0, ATTEMPTS_KEPT - 1)
            pipe.hset(
                mkey,
                mapping={
                    "state": it.state,
                    "attempts": it.attempt,
                    "headers": orjson.dumps(headers),
                },
            )
            pipe.expire(mkey, it.ttl_s)
            pipe.lpush(mlog, line)
            pipe.ltrim(mlog, 0, MESSAGE_ATTEMPTS_KEPT - 1)
            pipe.expire(mlog, it.ttl_s)
            summary = {k: v for k, v in log.items() if k not in DETAIL_ONLY}
            pipe.xadd(
                owner_log_key(prefix, owner),
                {"a": orjson.dumps(summary)},
                maxlen=OWNER_LOG_KEPT,
                approximate=True,
            )
            if self.one_server:  # no slots to keep apart: the operator's log in the same MULTI
                pipe.xadd(
                    all_log_key(prefix),
                    {"a": everyone_line(log, owner)},
                    maxlen=ALL_LOG_KEPT,
                    approximate=True,
                )
            if it.next_at is not None:
                member = f"{sub.id}|{it.message_id}|{it.attempt + 1}|{it.trigger}"
                pipe.zadd(due_key(prefix, owner), {member: int(it.next_at * 1000)})
            # Last, in the same transaction: the script keeps a deleted subscription deleted.
            # EVAL, not EVALSHA: a pipeline cannot load a script the server has forgotten.
            pipe.eval(
                _FAILING,
                1,
                subscription_key(prefix, owner, sub.id),
                "1" if it.state == "delivered" else "0",
                repr(now),
            )
            replies = await pipe.execute()
        return float(replies[-1] or 0)

    async def _disable(self, sub: Subscription, reason: str, why: str) -> None:
        if await self.store.update(sub, enabled=False, disabled_reason=reason) is None:
            return
        self.metrics.disabled.labels(reason).inc()
        logger.warning(
            "webhook subscription disabled",
            extra={"sub": sub.id, "owner": sub.owner, "reason": reason, "detail": why},
        )


def everyone_line(log: dict[str, Any], owner: str) -> bytes:
    """An attempt's line in the operator's log of every owner's attempts (with its owner)."""
    return orjson.dumps({k: v for k, v in log.items() if k not in DETAIL_ONLY} | {"owner": owner})


def dead_letter(
    message_id: str, owner: str, sub_id: str, event_type: str, now: float
) -> dict[FieldT, EncodableT]:
    """The fields of a dead-letter entry."""
    return {"m": message_id, "owner": owner, "sub": sub_id, "type": event_type, "at": iso(now)}


def _loggable(log: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in log.items() if k != "response_excerpt"}
