"""Recording what an attempt led to, beside the outbox it reads from.

Every outcome is written by one script under the owner's hash tag (`fence`), and only while the
attempt's claim holds: the queue entry acked and deleted, the attempts logs (the subscription's,
the message's, the owner's), the message's state, the next retry (`retry.decide`), and the
endpoint's failing time. The outcomes that end while a batch is on its way go together in the
next (one round trip). After it: the owner's earliest due retry (a global index), a dead letter
for a message past its last retry, the metrics, one log line, and the endpoint disabled when it
answered 410 or has failed for `disable_after`.

An outcome whose claim moved on (a stale attempt) is dropped, counted and said in one line; a
message whose record Redis lost is buried (dead, with its reason) rather than recorded.
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
from .fence import Fence
from .keys import (
    DELIVERY_GROUP,
    all_log_key,
    attempts_key,
    dead_key,
    due_key,
    dues_key,
    message_key,
    message_log_key,
    message_owner_key,
    owner_log_key,
    queue_key,
    subscription_key,
)
from .metrics import WebhookMetrics
from .outbox import MESSAGE_TTL_S
from .retry import State, decide
from .store import Subscription, SubscriptionStore

logger = logging.getLogger("sidecar.webhooks.delivery")

ATTEMPTS_KEPT = 1000  # per subscription
MESSAGE_ATTEMPTS_KEPT = 100  # per message
OWNER_LOG_KEPT = 10_000  # per owner (approximate)
ALL_LOG_KEPT = 100_000  # every owner's together, the operator's log (approximate)
DETAIL_ONLY = ("response_excerpt", "error_detail")  # kept per message, not in the owner's log

LOST = "record_lost"  # the message's record vanished (or lost its body) during its attempt
INCOMPLETE = "record_incomplete"  # found without its body or its own fields before an attempt
EXHAUSTED = "retries_exhausted"  # failed its last attempt
DEAD_REASONS = (LOST, INCOMPLETE, EXHAUSTED)


@dataclass(frozen=True, slots=True)
class Claim:
    """A queue entry this consumer holds, and its fence token: the entry's delivery count when
    it was read or claimed here. An outcome is written only while both still hold."""

    owner: str
    sub_id: str
    entry_id: str
    token: int


class OutcomeWriter:
    """Writes attempts' outcomes under their claims, buries lost messages, and takes finished
    queue entries out."""

    def __init__(
        self,
        redis: Client,
        prefix: str,
        config: Webhooks,
        consumer: str,
        store: SubscriptionStore,
        metrics: WebhookMetrics,
    ) -> None:
        self.redis, self.prefix, self.config = redis, prefix, config
        self.consumer, self.store, self.metrics = consumer, store, metrics
        self.one_server = not is_cluster(redis)
        self.fence = Fence(redis)
        self._disabling: set[str] = set()  # subscriptions being disabled now
        # What every call of the outcome script starts (args) and ends (keys) with.
        self._shared = (
            [all_log_key(prefix)] if self.one_server else [],
            [
                DELIVERY_GROUP,
                consumer,
                ATTEMPTS_KEPT,
                MESSAGE_ATTEMPTS_KEPT,
                OWNER_LOG_KEPT,
                ALL_LOG_KEPT,
            ],
        )

    async def close(self) -> None:
        """Stop the batch of outcomes on its way."""
        await self.fence.trips.close()

    async def finish_entry(self, owner: str, sub_id: str, entry_id: str) -> None:
        """Take a queue entry out without an attempt (its message was made already)."""
        queue = queue_key(self.prefix, owner, sub_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(queue, DELIVERY_GROUP, entry_id)
            pipe.xdel(queue, entry_id)
            await pipe.execute()

    async def record(
        self,
        claim: Claim,
        message_id: str,
        msg: dict[str, bytes],
        sub: Subscription,
        attempt: int,
        trigger: str,
        result: AttemptResult,
    ) -> None:
        """Record attempt `attempt` of message `message_id` (under `claim`) and what follows
        from it; nothing when the claim moved on meanwhile."""
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
        ttl_s = int(msg.get("ttl") or MESSAGE_TTL_S)
        due = (
            f"{sub.id}|{message_id}|{attempt + 1}|{trigger}" if next_at is not None else "",
            int(next_at * 1000) if next_at is not None else 0,
        )
        verdict, failing_since = await self._write(
            claim, message_id, decision.state, attempt, log, result.headers, due, ttl_s, now
        )
        if verdict == "stale":
            self.metrics.stale_outcomes.inc()
            logger.warning(
                "webhook attempt outcome dropped: its claim moved on while it ran",
                extra={
                    "sub": sub.id,
                    "owner": owner,
                    "message_id": message_id,
                    "attempt": attempt,
                    "result": outcome,
                    "entry": claim.entry_id,
                },
            )
            return
        if verdict == "lost":
            why = (
                "the message's record was lost from Redis while its attempt was in flight "
                f"(attempt {attempt}: {result.status or result.error})"
            )
            await self.bury(claim, message_id, msg, attempt, LOST, why)
            return
        due_ms = due[1] if next_at is not None else None
        dead = (
            dead_letter(message_id, owner, sub.id, event_type, now, EXHAUSTED)
            if outcome == "dead"
            else None
        )
        # On one server the operator's log is written in the owner's script already.
        line = None if self.one_server else everyone_line(log, owner)
        await self._index(owner, due_ms, dead, line)
        self.metrics.attempts.labels(event_type, outcome).inc()
        if outcome == "delivered" and msg.get("state") != b"delivered":
            self.metrics.latency.observe(max(0.0, now - int(msg["created_ms"]) / 1000))
        if outcome == "dead":
            self.metrics.dead_letters.inc()
            self.metrics.dead_lettered.labels(EXHAUSTED).inc()
        if logger.isEnabledFor(logging.INFO):
            logger.info("webhook attempt", extra=_loggable(log) | {"owner": owner})
        if outcome == "disabled":  # only while it exists: a deleted one is not brought back
            await self._disable(sub, "gone", "the receiver answered 410 Gone")
        elif failing_since > 0 and now - failing_since >= self.config.disable_after:
            days = (now - failing_since) / 86400
            await self._disable(sub, "failing", f"every attempt failed for {days:.1f} days")

    async def bury(
        self,
        claim: Claim,
        message_id: str,
        msg: dict[str, bytes],
        attempt: int,
        reason: str,
        detail: str,
    ) -> None:
        """Dead-letter a message whose record is lost or incomplete (it cannot be sent): a dead
        record saying why, with what is known of it, its queue entry taken out. Counted and
        said once, by whoever buries it first."""
        owner, sub_id, prefix, now = claim.owner, claim.sub_id, self.prefix, time.time()
        event_type = msg.get("type", b"").decode()
        ttl_s = int(msg.get("ttl") or MESSAGE_TTL_S)
        log = {
            "message_id": message_id,
            "sub_id": sub_id,
            "type": event_type,
            "attempt": attempt,
            "time": iso(now),
            "trigger": msg.get("trigger", b"scheduled").decode(),
            "result": "dead",
            "response_status": None,
            "duration_ms": 0.0,
            "error": reason,
            "error_detail": detail,
            "response_excerpt": None,
            "next_attempt_at": None,
        }
        keys = [
            queue_key(prefix, owner, sub_id),
            message_key(prefix, owner, message_id),
            message_log_key(prefix, owner, message_id),
            attempts_key(prefix, owner, sub_id),
            owner_log_key(prefix, owner),
        ]
        summary = {k: v for k, v in log.items() if k not in DETAIL_ONLY}
        args: list[Any] = [
            claim.entry_id,
            DELIVERY_GROUP,
            self.consumer,
            sub_id,
            event_type,
            int(msg.get("created_ms") or int(now * 1000)),
            log["trigger"],
            attempt,
            reason,
            ttl_s,
            orjson.dumps(log),
            orjson.dumps(summary),
            everyone_line(log, owner),
            ATTEMPTS_KEPT,
            MESSAGE_ATTEMPTS_KEPT,
            OWNER_LOG_KEPT,
            ALL_LOG_KEPT,
        ]
        if self.one_server:
            keys.append(all_log_key(prefix))
        if not await self.fence.bury(keys=keys, args=args):
            return
        dead = dead_letter(message_id, owner, sub_id, event_type, now, reason)
        line = None if self.one_server else everyone_line(log, owner)
        await self._index(owner, None, dead, line, owner_of=(message_id, ttl_s))
        self.metrics.dead_lettered.labels(reason).inc()
        logger.warning(
            "webhook message dead-lettered: its record is incomplete, it cannot be sent",
            extra={
                "sub": sub_id,
                "owner": owner,
                "message_id": message_id,
                "reason": reason,
                "detail": detail,
            },
        )

    async def _index(
        self,
        owner: str,
        due_ms: int | None,
        dead: dict[FieldT, EncodableT] | None,
        line: bytes | None,
        owner_of: tuple[str, int] | None = None,
    ) -> None:
        """The global indexes, after the owner's script (other slots on a cluster): the owner's
        earliest retry, the dead letter, the operator's log of every owner's attempts, and the
        owner of a buried message (for the operator's lookups)."""
        if due_ms is None and dead is None and line is None and owner_of is None:
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
            if owner_of is not None:
                message_id, ttl_s = owner_of
                pipe.set(message_owner_key(prefix, message_id), owner, ex=ttl_s)
            await pipe.execute()

    async def _write(
        self,
        claim: Claim,
        message_id: str,
        state: State,
        attempt: int,
        log: dict[str, Any],
        headers: dict[str, str],
        due: tuple[str, int],
        ttl_s: int,
        now: float,
    ) -> tuple[str, float]:
        """The owner's script, with the owner's other outcomes of the round trip: its verdict
        (ok, stale, lost) and the time the endpoint has been failing since (0: it is not)."""
        owner, prefix, sub_id = claim.owner, self.prefix, claim.sub_id
        keys = [
            queue_key(prefix, owner, sub_id),
            message_key(prefix, owner, message_id),
            message_log_key(prefix, owner, message_id),
            attempts_key(prefix, owner, sub_id),
            owner_log_key(prefix, owner),
            due_key(prefix, owner),
            subscription_key(prefix, owner, sub_id),
        ]
        summary = {k: v for k, v in log.items() if k not in DETAIL_ONLY}
        # On one server (no slots to keep apart) the operator's log is in the same script.
        everyone = orjson.dumps(summary | {"owner": owner}) if self.one_server else b""
        args = (
            claim.entry_id,
            claim.token,
            state,
            attempt,
            orjson.dumps(headers),
            ttl_s,
            orjson.dumps(log),
            orjson.dumps(summary),
            everyone,
            due[0],
            due[1],
            "1" if state == "delivered" else "0",
            repr(now),
        )
        # The owner's outcomes of one round trip are one script call.
        verdict, failing = await self.fence.trips.grouped(
            self.fence.record, owner, keys, args, self._shared
        )
        return verdict.decode(), float(failing or 0)

    async def _disable(self, sub: Subscription, reason: str, why: str) -> None:
        # Once: outcomes of one endpoint recorded close together may each find it failing.
        if sub.id in self._disabling:
            return
        self._disabling.add(sub.id)
        try:
            current = await self.store.get_owned(sub.owner, sub.id)
            if current is None or not current.enabled:
                return
            if await self.store.update(current, enabled=False, disabled_reason=reason) is None:
                return
        finally:
            self._disabling.discard(sub.id)
        self.metrics.disabled.labels(reason).inc()
        logger.warning(
            "webhook subscription disabled",
            extra={"sub": sub.id, "owner": sub.owner, "reason": reason, "detail": why},
        )


def everyone_line(log: dict[str, Any], owner: str) -> bytes:
    """An attempt's line in the operator's log of every owner's attempts (with its owner)."""
    return orjson.dumps({k: v for k, v in log.items() if k not in DETAIL_ONLY} | {"owner": owner})


def dead_letter(
    message_id: str, owner: str, sub_id: str, event_type: str, now: float, reason: str
) -> dict[FieldT, EncodableT]:
    """The fields of a dead-letter entry."""
    return {
        "m": message_id,
        "owner": owner,
        "sub": sub_id,
        "type": event_type,
        "at": iso(now),
        "reason": reason,
    }


def _loggable(log: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in log.items() if k != "response_excerpt"}
