"""Delivery workers: fair scheduling of attempts across tenants and endpoints.

Each subscription has its own queue; `{prefix}:wh:ready` lists the queues holding work. The
reader plans each read round-robin across owners (tenants, and the operator), and reads from a
queue only as many attempts as may start at once:

    global    `concurrency` attempts in flight per process
    owner     `per_tenant` of them for one owner, so one tenant cannot take every slot
    endpoint  `per_subscription` for one subscription; 1 while it is slow (its last attempt
              timed out, could not connect, or got a 5xx/429), so a dead endpoint holds one
              slot, not many, and its backlog waits in its own queue instead of in line
              before everyone else's

A queue that cannot start anything now is not read at all: its entries stay in Redis, so a
backlog of one tenant never delays another's first message. Loops per process: `read`, `bell`
(wakes the reader on enqueues), `claim` (XAUTOCLAIM of attempts a dead process left pending
longer than `claim_idle_s`, which exceeds the per-attempt timeout, so a live attempt is never
duplicated; a claimed attempt whose endpoint has no free slot is held, and made before anything
new is read for that endpoint, so a backlog does not put it last), `due` (moves due retries
back to their queues, samples queue depths) and `reconcile` (repairs the ready and due indexes
if a process died between two writes).

Every outcome is written in one MULTI under the owner's hash tag: the queue entry acked and
deleted, the attempts logs, the message state, the next retry, the endpoint's failing time.
An endpoint whose attempts have all failed for `disable_after` is disabled (logged, counted);
a 410 disables it at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import orjson
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from ..connections import REDIS_FAULTS, Backoff, PrimaryCheck, close
from ..tasks import cancelling, checkpoint
from ..timestamps import iso
from ..trace import current, from_traceparent
from .attempt import AttemptResult, next_delay, post_once
from .keys import (
    DELIVERY_GROUP,
    attempts_key,
    bell_key,
    dead_key,
    due_key,
    dues_key,
    message_key,
    message_log_key,
    owner_log_key,
    queue_key,
    ready_key,
    subscription_key,
    version_key,
)
from .outbox import MESSAGE_TTL_S, create_group, group_lost
from .runtime import WebhookRuntime
from .store import Subscription

logger = logging.getLogger(__name__)

ATTEMPTS_KEPT = 1000  # per subscription
MESSAGE_ATTEMPTS_KEPT = 100  # per message
OWNER_LOG_KEPT = 10_000  # per owner (approximate)
READY_SCAN = 2000  # queues considered per read
IDLE_WAIT_S = 1.0  # longest the reader sleeps without a bell or a freed slot
RECONCILE_S = 10.0
DEPTH_SAMPLE_S = 2.0
SLOW_ERRORS = frozenset({"timeout", "connect", "dns", "refused", "tls"})
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


QUIET_AFTER_S = 10.0  # a loop that ran this long without a fault starts a new episode


async def supervised(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run `loop` forever; back off (with jitter) on Redis faults and on bugs. A run of Redis
    faults is logged once (no traceback) until the loop has run well again; a bug is logged
    each time, with its traceback."""
    backoff = Backoff(0.1, 5.0)
    faulty = False
    while True:
        checkpoint()
        started = time.monotonic()
        try:
            await loop()
        except REDIS_FAULTS as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            if time.monotonic() - started > QUIET_AFTER_S:
                faulty = False
                backoff.reset()
            if not faulty:
                logger.warning(
                    "webhook loop: Redis fault; retrying quietly",
                    extra={"loop": name, "error": str(exc)},
                )
                faulty = True
        except Exception:
            if cancelling():
                raise asyncio.CancelledError from None
            logger.exception("webhook loop crashed", extra={"loop": name})
        await asyncio.sleep(backoff.next())


def is_slow(result: AttemptResult) -> bool:
    """True when an attempt suggests the endpoint is down or overloaded."""
    return result.error in SLOW_ERRORS or (
        result.status is not None and (result.status >= 500 or result.status == 429)
    )


class DeliveryWorker:
    """Schedules and makes delivery attempts under global, per-owner and per-endpoint caps."""

    def __init__(self, webhooks: WebhookRuntime) -> None:
        self.webhooks = webhooks
        self.redis, self.prefix = webhooks.redis, webhooks.prefix
        self.config = config = webhooks.settings.webhooks
        self.session, self.metrics = webhooks.session, webhooks.metrics
        self.consumer, self.policy = webhooks.consumer, webhooks.policy
        self.store, self.outbox = webhooks.store, webhooks.outbox
        self.claim_idle_s = config.claim_after_s
        self.due_interval_s = min(max(min(config.schedule) / 4, 0.01), 0.5)
        # Half the slots by default, but room for two endpoints' worth: one slow endpoint of an
        # owner must not starve the owner's others.
        self.per_tenant = config.per_tenant or max(
            1, min(config.concurrency, max(config.concurrency // 2, 2 * config.per_subscription))
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_sub: dict[str, int] = {}
        self._by_owner: dict[str, int] = {}
        self._slow: set[str] = set()
        # Attempts taken over from a dead process, waiting for a slot (made first), by sub.
        self._claimed: dict[str, list[tuple[str, str, dict[bytes, bytes]]]] = {}
        self._wake = asyncio.Event()
        self._turn = itertools.count()
        self.read_from: set[str] = set()  # queues this consumer joined (left at shutdown)

    # -- loops ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every loop until cancelled; then cancel attempts in flight."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(supervised("delivery-read", self._read_forever))
                group.create_task(supervised("delivery-bell", self._bell_forever))
                group.create_task(supervised("delivery-claim", self._claim_forever))
                group.create_task(supervised("delivery-due", self._due_forever))
                group.create_task(supervised("delivery-reconcile", self._reconcile_forever))
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def ensure_group(self) -> None:
        """Nothing to create up front: each queue's group is made with its first entry."""

    def _free(self) -> int:
        return self.config.concurrency - len(self._tasks)

    def _sub_cap(self, sub_id: str) -> int:
        return 1 if sub_id in self._slow else self.config.per_subscription

    def _sub_free(self, sub_id: str) -> int:
        return self._sub_cap(sub_id) - self._by_sub.get(sub_id, 0)

    def _can_start(self, owner: str, sub_id: str) -> bool:
        return self._free() > 0 and self._sub_free(sub_id) > 0 and self._owner_free(owner) > 0

    def _start_claimed(self) -> int:
        """Start the held taken-over attempts that now have a slot; how many."""
        started = 0
        for sub_id, held in list(self._claimed.items()):
            while held and self._can_start(held[0][0], sub_id):
                owner, entry_id, fields = held.pop(0)
                self._spawn(owner, sub_id, entry_id, fields)
                started += 1
            if not held:
                del self._claimed[sub_id]
        return started

    def _owner_free(self, owner: str) -> int:
        return self.per_tenant - self._by_owner.get(owner, 0)

    async def _read_forever(self) -> None:
        while True:
            checkpoint()
            self._wake.clear()
            if not await self.read_once():
                with suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_WAIT_S):
                        await self._wake.wait()

    async def _bell_forever(self) -> None:
        """Wake the reader whenever anything is enqueued (on any replica)."""
        reader = self.webhooks.connections.reader(IDLE_WAIT_S, "sidecar-webhook-bell")
        primary = PrimaryCheck(self.webhooks.connections)
        last = "$"
        try:
            while True:
                checkpoint()
                reply = await reader.xread({bell_key(self.prefix): last}, block=1000, count=1)
                for _stream, entries in reply or []:
                    last = entries[-1][0].decode()
                    self._wake.set()
                await primary.ensure()
        finally:
            await close(reader)

    def plan(self, rows: list[tuple[bytes, float]]) -> list[tuple[str, str, str, float, int]]:
        """Which queues to read, and how many entries from each: round-robin across owners,
        within every cap. (member, owner, sub, score, count) per queue to read."""
        free = self._free()
        by_owner: dict[str, list[tuple[str, str, float]]] = {}
        for raw, score in rows:
            member = raw.decode()
            owner, _, sub = member.partition("|")
            if sub and self._sub_free(sub) > 0:
                by_owner.setdefault(owner, []).append((member, sub, score))
        owners = list(by_owner)
        if owners:
            start = next(self._turn) % len(owners)
            owners = owners[start:] + owners[:start]
        planned: list[tuple[str, str, str, float, int]] = []
        taken: dict[str, int] = {}
        while free > 0 and owners:
            for owner in list(owners):
                candidates = by_owner[owner]
                owner_free = self._owner_free(owner) - taken.get(owner, 0)
                if owner_free <= 0 or not candidates:
                    owners.remove(owner)
                    continue
                member, sub, score = candidates.pop(0)
                count = min(self._sub_free(sub), owner_free, free)
                planned.append((member, owner, sub, score, count))
                taken[owner] = taken.get(owner, 0) + count
                free -= count
                if free <= 0:
                    break
        return planned

    async def read_once(self) -> bool:
        """One planned read (after the taken-over attempts waiting for a slot); True when it
        started at least one attempt."""
        claimed = self._start_claimed()
        if self._free() <= 0:
            return claimed > 0
        rows = await self.redis.zrange(ready_key(self.prefix), 0, READY_SCAN - 1, withscores=True)
        planned = [p for p in self.plan(rows) if p[2] not in self._claimed]
        if not planned:
            return claimed > 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for _member, owner, sub, _score, count in planned:
                queue = queue_key(self.prefix, owner, sub)
                pipe.xreadgroup(DELIVERY_GROUP, self.consumer, {queue: ">"}, count=count)
            replies = await pipe.execute(raise_on_error=False)
        started = 0
        for (member, owner, sub, score, _count), reply in zip(planned, replies, strict=True):
            queue = queue_key(self.prefix, owner, sub)
            if isinstance(reply, ResponseError):
                if not group_lost(reply):
                    raise reply
                await create_group(self.redis, queue, DELIVERY_GROUP, "0")
                continue
            entries = [e for _stream, items in reply or [] for e in items]
            if not entries:
                await self.outbox.unready(member, score)
                continue
            self.read_from.add(queue)
            for entry_id, fields in entries:
                self._spawn(owner, sub, entry_id.decode(), fields)
                started += 1
        return started + claimed > 0

    async def _claim_forever(self) -> None:
        while True:
            checkpoint()
            await asyncio.sleep(min(max(self.claim_idle_s / 2, 0.2), 30.0))
            await self.claim_once()

    async def claim_once(self) -> int:
        """Take over attempts another (dead) process left pending too long; how many. Each
        endpoint takes up to its slot count, whether or not a slot is free now: one that is not
        is held and made at the endpoint's next free slot, before anything new."""
        snapshot = await self.store.snapshot()
        room = {s.id: self._sub_cap(s.id) - len(self._claimed.get(s.id, ())) for s in snapshot}
        subs = [s for s in snapshot if room[s.id] > 0]
        await self._keep_claimed()
        if not subs:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub in subs:
                pipe.xautoclaim(
                    queue_key(self.prefix, sub.owner, sub.id),
                    DELIVERY_GROUP,
                    self.consumer,
                    min_idle_time=int(self.claim_idle_s * 1000),
                    count=room[sub.id],
                )
            replies = await pipe.execute(raise_on_error=False)
        claimed = 0
        for sub, reply in zip(subs, replies, strict=True):
            if isinstance(reply, Exception) or not reply:
                continue  # no queue (or group) yet
            for entry_id, fields in reply[1]:
                if not fields:
                    continue  # deleted meanwhile
                logger.info(
                    "claimed an abandoned attempt",
                    extra={"sub": sub.id, "entry": entry_id.decode()},
                )
                self.read_from.add(queue_key(self.prefix, sub.owner, sub.id))
                self._claimed.setdefault(sub.id, []).append((sub.owner, entry_id.decode(), fields))
                claimed += 1
        self._start_claimed()
        return claimed

    async def _keep_claimed(self) -> None:
        """Reset the idle time of the held taken-over attempts, so no other process takes
        them over again while they wait for a slot here."""
        if not self._claimed:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub_id, held in self._claimed.items():
                for owner, entry_id, _fields in held:
                    pipe.xclaim(
                        queue_key(self.prefix, owner, sub_id),
                        DELIVERY_GROUP,
                        self.consumer,
                        min_idle_time=0,
                        message_ids=[entry_id],
                        justid=True,
                    )
            await pipe.execute(raise_on_error=False)

    async def _due_forever(self) -> None:
        last_sample = 0.0
        while True:
            checkpoint()
            await self.outbox.move_due()
            now = time.monotonic()
            if now - last_sample > DEPTH_SAMPLE_S:
                last_sample = now
                await self._sample_depth()
            await asyncio.sleep(self.due_interval_s)

    async def _sample_depth(self) -> None:
        subs = await self.store.snapshot()
        owners = sorted({s.owner for s in subs})
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub in subs:
                pipe.xlen(queue_key(self.prefix, sub.owner, sub.id))
            for owner in owners:
                pipe.zcard(due_key(self.prefix, owner))
            replies = await pipe.execute(raise_on_error=False)
        counts = [int(r) if isinstance(r, int) else 0 for r in replies]
        self.metrics.queue_depth.labels("outbox").set(sum(counts[: len(subs)]))
        self.metrics.queue_depth.labels("scheduled").set(sum(counts[len(subs) :]))

    async def _reconcile_forever(self) -> None:
        while True:
            checkpoint()
            await asyncio.sleep(RECONCILE_S)
            await self.reconcile()

    async def reconcile(self) -> None:
        """Re-mark queues holding work and owners with retries due, in case a process died
        between writing an entry and indexing it."""
        subs = await self.store.snapshot()
        owners = sorted({s.owner for s in subs})
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub in subs:
                pipe.xlen(queue_key(self.prefix, sub.owner, sub.id))
            for owner in owners:
                pipe.zrange(due_key(self.prefix, owner), 0, 0, withscores=True)
            replies = await pipe.execute(raise_on_error=False)
        lengths, firsts = replies[: len(subs)], replies[len(subs) :]
        busy = [
            (s.owner, s.id)
            for s, n in zip(subs, lengths, strict=True)
            if isinstance(n, int) and n > 0
        ]
        await self.outbox.mark_ready(busy)
        dues = {o: int(f[0][1]) for o, f in zip(owners, firsts, strict=True) if f}
        if dues:
            await self.redis.zadd(dues_key(self.prefix), dues)

    # -- attempts ---------------------------------------------------------------------------

    def _spawn(self, owner: str, sub_id: str, entry_id: str, fields: dict[bytes, bytes]) -> None:
        self._by_sub[sub_id] = self._by_sub.get(sub_id, 0) + 1
        self._by_owner[owner] = self._by_owner.get(owner, 0) + 1
        task = asyncio.create_task(self._handle(owner, sub_id, entry_id, fields))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._done(done, owner, sub_id))

    def _done(self, task: asyncio.Task[None], owner: str, sub_id: str) -> None:
        self._tasks.discard(task)
        for counts, key in ((self._by_sub, sub_id), (self._by_owner, owner)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("delivery failed unexpectedly", exc_info=task.exception())

    async def _finish_entry(self, owner: str, sub_id: str, entry_id: str) -> None:
        queue = queue_key(self.prefix, owner, sub_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(queue, DELIVERY_GROUP, entry_id)
            pipe.xdel(queue, entry_id)
            await pipe.execute()

    async def _handle(
        self, owner: str, sub_id: str, entry_id: str, fields: dict[bytes, bytes]
    ) -> None:
        message_id = fields[b"m"].decode()
        attempt, trigger = int(fields[b"n"]), fields[b"t"].decode()
        mkey = message_key(self.prefix, owner, message_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(mkey)
            pipe.get(version_key(self.prefix))
            raw, version = await pipe.execute()
        msg = {k.decode(): v for k, v in raw.items()}
        if msg and int(msg.get("attempts") or 0) >= attempt:
            # Already made and recorded: a replayed entry (e.g. a group created again from the
            # stream's start) must not send the message again.
            await self._finish_entry(owner, sub_id, entry_id)
            return
        sub = self.store.cached(sub_id, version) or await self.store.get_owned(owner, sub_id)
        if not msg or sub is None or not sub.enabled:
            if msg:
                await self.redis.hset(mkey, "state", "skipped")  # type: ignore[misc]
            await self._finish_entry(owner, sub_id, entry_id)
            return
        # The attempt is a span of the call's trace: its lines and its request say so.
        call_span = from_traceparent(msg.get("trace", b"").decode())
        span = call_span.child() if call_span else None
        current.set(span)  # this task's own context: one attempt
        result = await post_once(
            self.session,
            self.policy,
            sub.url,
            message_id,
            msg["body"],
            sub.active_secrets(),
            self.config.timeout,
            trace=span.headers() if span else None,
        )
        if result.delivered:
            self._slow.discard(sub.id)
        elif is_slow(result):
            self._slow.add(sub.id)
        await self._record(entry_id, message_id, msg, sub, attempt, trigger, result)

    async def _record(
        self,
        entry_id: str,
        message_id: str,
        msg: dict[str, bytes],
        sub: Subscription,
        attempt: int,
        trigger: str,
        result: AttemptResult,
    ) -> None:
        event_type = msg["type"].decode()
        now = time.time()
        next_at: float | None = None
        if result.delivered:
            state, outcome = "delivered", "delivered"
        elif result.gone:
            state, outcome = "failed", "disabled"
        elif trigger in ("manual", "recover"):
            state, outcome = "failed", "failed"
        else:
            delay = next_delay(self.config.schedule, attempt, result)
            if delay is None:
                state, outcome = "failed", "dead"
            else:
                state, outcome, next_at = "scheduled", "retry", now + delay
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
        line = orjson.dumps(log)
        owner, prefix = sub.owner, self.prefix
        mkey, mlog = (
            message_key(prefix, owner, message_id),
            message_log_key(prefix, owner, message_id),
        )
        queue = queue_key(prefix, owner, sub.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(queue, DELIVERY_GROUP, entry_id)
            pipe.xdel(queue, entry_id)
            pipe.lpush(attempts_key(prefix, owner, sub.id), line)
            pipe.ltrim(attempts_key(prefix, owner, sub.id), 0, ATTEMPTS_KEPT - 1)
            pipe.hset(
                mkey,
                mapping={
                    "state": state,
                    "attempts": attempt,
                    "headers": orjson.dumps(result.headers),
                },
            )
            pipe.expire(mkey, MESSAGE_TTL_S)
            pipe.lpush(mlog, line)
            pipe.ltrim(mlog, 0, MESSAGE_ATTEMPTS_KEPT - 1)
            pipe.expire(mlog, MESSAGE_TTL_S)
            summary = {k: v for k, v in log.items() if k not in DETAIL_ONLY}
            pipe.xadd(
                owner_log_key(prefix, owner),
                {"a": orjson.dumps(summary)},
                maxlen=OWNER_LOG_KEPT,
                approximate=True,
            )
            if next_at is not None:
                member = f"{sub.id}|{message_id}|{attempt + 1}|{trigger}"
                pipe.zadd(due_key(prefix, owner), {member: int(next_at * 1000)})
            # Last, in the same transaction: the script keeps a deleted subscription deleted.
            # EVAL, not EVALSHA: a pipeline cannot load a script the server has forgotten.
            pipe.eval(
                _FAILING,
                1,
                subscription_key(prefix, owner, sub.id),
                "1" if result.delivered else "0",
                repr(now),
            )
            replies = await pipe.execute()
        failing_since = float(replies[-1] or 0)
        if next_at is not None:
            await self.outbox.scheduled(owner, int(next_at * 1000))
        if outcome == "dead":
            await self.redis.xadd(
                dead_key(prefix),
                dead_letter(message_id, owner, sub.id, event_type, now),
                maxlen=self.config.outbox_maxlen,
                approximate=True,
            )
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

    async def _disable(self, sub: Subscription, reason: str, why: str) -> None:
        if await self.store.update(sub, enabled=False, disabled_reason=reason) is None:
            return
        self.metrics.disabled.labels(reason).inc()
        logger.warning(
            "webhook subscription disabled",
            extra={"sub": sub.id, "owner": sub.owner, "reason": reason, "detail": why},
        )


def dead_letter(
    message_id: str, owner: str, sub_id: str, event_type: str, now: float
) -> dict[FieldT, EncodableT]:
    """The fields of a dead-letter entry."""
    return {"m": message_id, "owner": owner, "sub": sub_id, "type": event_type, "at": iso(now)}


def _loggable(log: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in log.items() if k != "response_excerpt"}
