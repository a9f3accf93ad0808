"""Delivery workers: read the outbox through a consumer group, attempt, record, retry or bury.

Three loops per process: `read` (XREADGROUP, only as many entries as there are free slots),
`claim` (XAUTOCLAIM entries idle longer than the claim timeout, which exceeds the per-attempt
timeout, so a live attempt is never duplicated) and `due` (moves due retries back to the outbox
atomically, and samples the queue depth). Every outcome is written in one MULTI: ack, attempts
log, message state, and the next retry or the dead letter. A lost group (`NOGROUP`: Redis
restarted) is created again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.exceptions import RedisError, ResponseError

from ..tasks import cancelling, checkpoint
from ..timestamps import iso
from .attempt import AttemptResult, next_delay, post_once
from .keys import (
    DELIVERY_GROUP,
    attempts_key,
    dead_key,
    due_key,
    message_key,
    outbox_key,
    version_key,
)
from .outbox import MESSAGE_TTL_S, create_group, group_lost
from .runtime import WebhookRuntime
from .store import Subscription

logger = logging.getLogger(__name__)

ATTEMPTS_KEPT = 1000
DEFER_S = 0.1  # an attempt that found no slot of its subscription is pushed back this long
# An attempt waits this long for a slot of its subscription (a fast receiver frees one within
# milliseconds); past it the attempt goes back to the due set, freeing the worker's slot, so a
# slow receiver cannot take every slot of the process.
WAIT_FOR_SLOT_S = 0.25
BLOCK_MS = 1000


async def supervised(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run `loop` forever; log and back off on Redis faults (no traceback) and on bugs (one)."""
    backoff = 0.1
    while True:
        checkpoint()
        try:
            await loop()
            backoff = 0.1
        except (RedisError, OSError) as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            logger.warning("webhook loop: Redis fault", extra={"loop": name, "error": str(exc)})
        except Exception:
            if cancelling():
                raise asyncio.CancelledError from None
            logger.exception("webhook loop crashed", extra={"loop": name})
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 2.0)


class DeliveryWorker:
    """Delivers outbox attempts with global and per-subscription concurrency bounds."""

    def __init__(self, webhooks: WebhookRuntime) -> None:
        self.redis, self.prefix = webhooks.redis, webhooks.prefix
        self.config = webhooks.settings.webhooks
        self.session, self.metrics = webhooks.session, webhooks.metrics
        self.consumer, self.policy = webhooks.consumer, webhooks.policy
        self.store, self.outbox = webhooks.store, webhooks.outbox
        config = self.config
        self.claim_idle_s = config.timeout * 1.5 + 1.0
        self.due_interval_s = min(max(min(config.schedule) / 4, 0.01), 0.5)
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots: dict[str, asyncio.Semaphore] = {}  # per subscription
        self._freed = asyncio.Event()

    async def run(self) -> None:
        """Run the read, claim and due loops until cancelled; then cancel attempts in flight."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(supervised("outbox-read", self._read_forever))
                group.create_task(supervised("outbox-claim", self._claim_forever))
                group.create_task(supervised("outbox-due", self._due_forever))
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def ensure_group(self) -> None:
        """Create the outbox consumer group (and stream) unless it exists."""
        await create_group(self.redis, outbox_key(self.prefix), DELIVERY_GROUP, "0")

    async def _with_group(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run `call`; on NOGROUP recreate the group and run it again."""
        try:
            return await call()
        except ResponseError as exc:
            if not group_lost(exc):
                raise
            logger.info("outbox group missing (Redis restarted?); recreating")
            await self.ensure_group()
            return await call()

    def _free(self) -> int:
        return self.config.concurrency - len(self._tasks)

    async def _read_forever(self) -> None:
        await self.ensure_group()
        while True:
            checkpoint()
            while self._free() <= 0:
                self._freed.clear()
                await self._freed.wait()
            free = self._free()
            reply = await self._with_group(
                functools.partial(
                    self.redis.xreadgroup,
                    DELIVERY_GROUP,
                    self.consumer,
                    {outbox_key(self.prefix): ">"},
                    count=free,
                    block=BLOCK_MS,
                )
            )
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self._spawn(entry_id.decode(), fields)

    async def _claim_forever(self) -> None:
        while True:
            checkpoint()
            await asyncio.sleep(min(max(self.claim_idle_s / 2, 0.2), 30.0))
            free = self._free()
            if free <= 0:
                continue
            reply = await self._with_group(
                functools.partial(
                    self.redis.xautoclaim,
                    outbox_key(self.prefix),
                    DELIVERY_GROUP,
                    self.consumer,
                    min_idle_time=int(self.claim_idle_s * 1000),
                    count=free,
                )
            )
            for entry_id, fields in reply[1] if reply else []:
                if fields:
                    logger.info("claimed an abandoned attempt", extra={"entry": entry_id.decode()})
                    self._spawn(entry_id.decode(), fields)

    async def _due_forever(self) -> None:
        last_sample = 0.0
        while True:
            checkpoint()
            await self.outbox.move_due()
            now = time.monotonic()
            if now - last_sample > 1.0:
                last_sample = now
                await self._sample_depth()
            await asyncio.sleep(self.due_interval_s)

    async def _sample_depth(self) -> None:
        scheduled = await self.redis.zcard(due_key(self.prefix))
        waiting = 0
        try:
            for group in await self.redis.xinfo_groups(outbox_key(self.prefix)):
                if group["name"].decode() == DELIVERY_GROUP:
                    waiting = int(group.get("pending") or 0) + int(group.get("lag") or 0)
        except ResponseError:
            pass  # the stream does not exist yet
        self.metrics.queue_depth.labels("scheduled").set(scheduled)
        self.metrics.queue_depth.labels("outbox").set(waiting)

    def _spawn(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        task = asyncio.create_task(self._handle(entry_id, fields))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._freed.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("delivery failed unexpectedly", exc_info=task.exception())

    async def _ack(self, entry_id: str) -> None:
        await self.redis.xack(outbox_key(self.prefix), DELIVERY_GROUP, entry_id)

    async def _handle(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        message_id = fields[b"m"].decode()
        attempt, trigger = int(fields[b"n"]), fields[b"t"].decode()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(message_key(self.prefix, message_id))
            pipe.get(version_key(self.prefix))
            raw, version = await pipe.execute()
        msg = {k.decode(): v for k, v in raw.items()}
        if msg and int(msg.get("attempts") or 0) >= attempt:
            # Already made and recorded: a replayed entry (e.g. a group created again from the
            # stream's start) must not send the message again.
            await self._ack(entry_id)
            return
        sub = None
        if msg:
            sub_id = msg["sub"].decode()
            # The cached subscription while nothing changed since it was read, else Redis.
            sub = self.store.cached(sub_id, version) or await self.store.get(sub_id)
        if sub is None or not sub.enabled:
            if msg:
                await self.redis.hset(message_key(self.prefix, message_id), "state", "skipped")  # type: ignore[misc]
            await self._ack(entry_id)
            return
        slots = self._slots.setdefault(sub.id, asyncio.Semaphore(self.config.per_subscription))
        try:
            async with asyncio.timeout(WAIT_FOR_SLOT_S):
                await slots.acquire()
        except TimeoutError:
            async with self.redis.pipeline(transaction=True) as pipe:
                member = f"{message_id}|{attempt}|{trigger}"
                pipe.zadd(due_key(self.prefix), {member: int((time.time() + DEFER_S) * 1000)})
                pipe.xack(outbox_key(self.prefix), DELIVERY_GROUP, entry_id)
                await pipe.execute()
            return
        try:
            result = await post_once(
                self.session,
                self.policy,
                sub.url,
                message_id,
                msg["body"],
                sub.active_secrets(),
                self.config.timeout,
            )
        finally:
            slots.release()
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
        elif trigger == "manual":
            state, outcome = "failed", "failed"
        else:
            delay = next_delay(self.config.schedule, attempt, result)
            if delay is None:
                state, outcome = "failed", "dead"
            else:
                state, outcome, next_at = "scheduled", "retry", now + delay
        log = {
            "message_id": message_id,
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
        mkey = message_key(self.prefix, message_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(outbox_key(self.prefix), DELIVERY_GROUP, entry_id)
            pipe.lpush(attempts_key(self.prefix, sub.id), orjson.dumps(log))
            pipe.ltrim(attempts_key(self.prefix, sub.id), 0, ATTEMPTS_KEPT - 1)
            pipe.hset(mkey, mapping={"state": state, "attempts": attempt})
            pipe.expire(mkey, MESSAGE_TTL_S)
            if next_at is not None:
                member = f"{message_id}|{attempt + 1}|{trigger}"
                pipe.zadd(due_key(self.prefix), {member: int(next_at * 1000)})
            if outcome == "dead":
                pipe.xadd(
                    dead_key(self.prefix),
                    {"m": message_id, "sub": sub.id, "type": event_type, "at": iso(now)},
                    maxlen=self.config.outbox_maxlen,
                    approximate=True,
                )
            await pipe.execute()
        if outcome == "disabled":  # only while it exists: a deleted one is not brought back
            await self.store.update(sub, enabled=False)
        self.metrics.attempts.labels(event_type, outcome).inc()
        if outcome == "delivered" and msg.get("state") != b"delivered":
            self.metrics.latency.observe(max(0.0, now - int(msg["created_ms"]) / 1000))
        if outcome == "dead":
            self.metrics.dead_letters.inc()
        if outcome == "disabled":
            self.metrics.disabled.inc()
        logger.info(
            "webhook attempt",
            extra={k: v for k, v in log.items() if k != "response_excerpt"} | {"sub": sub.id},
        )
