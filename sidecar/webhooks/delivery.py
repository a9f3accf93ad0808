"""Delivery workers: the loops that read the subscriptions' queues and make the attempts.

Loops per process, each run by `supervise.supervised`:

    read       plans a read of the ready queues (`planner`: round-robin across owners, within
               the global, per-owner and per-endpoint caps) and starts an attempt per entry
    bell       wakes the reader on enqueues (on any replica)
    claim      XAUTOCLAIM of attempts a dead process left pending longer than `claim_after`,
               which exceeds the per-attempt timeout, so a live attempt is never duplicated,
               in the queues of the read index only (`sweep`), a bounded part a step; a
               claimed attempt whose endpoint has no free slot is held, and made before
               anything new is read for that endpoint, so a backlog does not put it last
    due        moves due retries back to their queues (`outbox`), samples queue depths
    reconcile  repairs the ready, due and read indexes if a process died between two writes,
               a bounded part of the subscriptions a tick (`sweep`)

An attempt is one signed POST (`attempt`); what follows from it is decided in `retry` and
written by `outcome`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress

from redis.exceptions import ResponseError

from ..connections import PrimaryCheck, close
from ..tasks import checkpoint
from ..trace import current, from_traceparent
from .attempt import post_once
from .keys import (
    DELIVERY_GROUP,
    all_subscriptions_key,
    bell_key,
    message_key,
    queue_key,
    ready_key,
    version_key,
)
from .outbox import create_group, group_lost
from .outcome import OutcomeWriter
from .planner import Slots
from .retry import is_slow
from .runtime import WebhookRuntime
from .supervise import supervised
from .sweep import CLAIM_STEP_S, RECONCILE_S, Sweep

logger = logging.getLogger(__name__)

READY_SCAN = 2000  # queues considered per read
IDLE_WAIT_S = 1.0  # longest the reader sleeps without a bell or a freed slot
DEPTH_SAMPLE_S = 2.0


class DeliveryWorker:
    """Schedules and makes delivery attempts under global, per-owner and per-endpoint caps."""

    def __init__(self, webhooks: WebhookRuntime) -> None:
        self.webhooks = webhooks
        self.redis, self.prefix = webhooks.redis, webhooks.prefix
        self.config = config = webhooks.settings.webhooks
        self.session, self.metrics = webhooks.session, webhooks.metrics
        self.consumer, self.policy = webhooks.consumer, webhooks.policy
        self.store, self.outbox = webhooks.store, webhooks.outbox
        self.outcomes = OutcomeWriter(
            self.redis, self.prefix, config, self.outbox, self.store, self.metrics
        )
        self.claim_idle_s = config.claim_after_s
        self.due_interval_s = min(max(min(config.schedule) / 4, 0.01), 0.5)
        self.slots = Slots(config, webhooks.breakers)
        self.sweep = Sweep(self.redis, self.prefix)
        self._tasks: set[asyncio.Task[None]] = set()
        # Attempts taken over from a dead process, waiting for a slot (made first), by sub.
        self._claimed: dict[str, list[tuple[str, str, dict[bytes, bytes]]]] = {}
        self._wake = asyncio.Event()
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

    def _start_claimed(self) -> int:
        """Start the held taken-over attempts that now have a slot; how many."""
        started = 0
        for sub_id, held in list(self._claimed.items()):
            while held and self.slots.can_start(held[0][0], sub_id):
                owner, entry_id, fields = held.pop(0)
                self._spawn(owner, sub_id, entry_id, fields)
                started += 1
            if not held:
                del self._claimed[sub_id]
        return started

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

    async def read_once(self) -> bool:
        """One planned read (after the taken-over attempts waiting for a slot); True when it
        started at least one attempt."""
        claimed = self._start_claimed()
        if self.slots.free() <= 0:
            return claimed > 0
        rows = await self.redis.zrange(ready_key(self.prefix), 0, READY_SCAN - 1, withscores=True)
        planned = [p for p in self.slots.plan(rows) if p.sub not in self._claimed]
        if not planned:
            return claimed > 0
        async with self.redis.pipeline(transaction=False) as pipe:
            self.sweep.note_reads(pipe, (read.member for read in planned))
            for read in planned:
                queue = queue_key(self.prefix, read.owner, read.sub)
                pipe.xreadgroup(DELIVERY_GROUP, self.consumer, {queue: ">"}, count=read.count)
            replies = (await pipe.execute(raise_on_error=False))[1:]
        started = 0
        for read, reply in zip(planned, replies, strict=True):
            owner, sub = read.owner, read.sub
            queue = queue_key(self.prefix, owner, sub)
            if isinstance(reply, ResponseError):
                if not group_lost(reply):
                    raise reply
                await create_group(self.redis, queue, DELIVERY_GROUP, "0")
                continue
            entries = [e for _stream, items in reply or [] for e in items]
            if not entries:
                await self.outbox.unready(read.member, read.score)
                continue
            self.read_from.add(queue)
            for entry_id, fields in entries:
                self._spawn(owner, sub, entry_id.decode(), fields)
                started += 1
        return started + claimed > 0

    async def _claim_forever(self) -> None:
        interval_s = min(max(self.claim_idle_s / 2, 0.2), 30.0)
        while True:
            checkpoint()
            done = self.sweep.claim_pass_done
            await asyncio.sleep(interval_s if done else min(interval_s, CLAIM_STEP_S))
            await self.claim_once()

    async def claim_once(self) -> int:
        """Take over attempts another (dead) process left pending too long in the next part of
        the read index; how many. Each endpoint takes up to its slot count, whether or not a
        slot is free now: one that is not is held and made at the endpoint's next free slot,
        before anything new."""
        await self._keep_claimed()
        queues = await self.sweep.claim_batch()
        if not queues:
            return 0
        rooms = [self.slots.sub_cap(q.sub) - len(self._claimed.get(q.sub, ())) for q in queues]
        async with self.redis.pipeline(transaction=False) as pipe:
            for q, room in zip(queues, rooms, strict=True):
                queue = queue_key(self.prefix, q.owner, q.sub)
                pipe.xlen(queue)
                if room > 0:
                    pipe.xautoclaim(
                        queue,
                        DELIVERY_GROUP,
                        self.consumer,
                        min_idle_time=int(self.claim_idle_s * 1000),
                        count=room,
                    )
            replies = iter(await pipe.execute(raise_on_error=False))
        lengths, claimed = [], 0
        for q, room in zip(queues, rooms, strict=True):
            length = next(replies)
            lengths.append((q, length if isinstance(length, int) else 1))  # unknown: kept
            reply = next(replies) if room > 0 else None
            if isinstance(reply, Exception) or not reply:
                continue  # no queue (or group) yet
            for entry_id, fields in reply[1]:
                if not fields:
                    continue  # deleted meanwhile
                logger.info(
                    "claimed an abandoned attempt",
                    extra={"sub": q.sub, "entry": entry_id.decode()},
                )
                self.read_from.add(queue_key(self.prefix, q.owner, q.sub))
                self._claimed.setdefault(q.sub, []).append((q.owner, entry_id.decode(), fields))
                claimed += 1
        await self.sweep.seen(lengths)
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
        queued, scheduled = await self.sweep.depth()
        self.metrics.queue_depth.labels("outbox").set(queued)
        self.metrics.queue_depth.labels("scheduled").set(scheduled)

    async def _reconcile_forever(self) -> None:
        while True:
            checkpoint()
            await asyncio.sleep(RECONCILE_S)
            await self.reconcile()

    async def reconcile(self) -> bool:
        """Re-mark queues holding work and owners with retries due, in case a process died
        between writing an entry and indexing it: the next part of the subscriptions; True
        when this ended a pass over all of them."""
        done = await self.sweep.reconcile_step(self.outbox)
        if done:  # once a pass: drop the breakers of endpoints deleted meanwhile
            known = self.slots.breakers.known()
            if known:
                owners = await self.redis.hmget(all_subscriptions_key(self.prefix), known)  # type: ignore[misc]
                self.slots.breakers.forget_except(
                    s for s, o in zip(known, owners, strict=True) if o is not None
                )
        return done

    # -- attempts ---------------------------------------------------------------------------

    def _spawn(self, owner: str, sub_id: str, entry_id: str, fields: dict[bytes, bytes]) -> None:
        self.slots.take(owner, sub_id)
        # Once it lingers its hang is counted (its timeout is not, again): "counted", and
        # "released" when its slots were given back (room permitting).
        lingered: list[str] = []
        task = asyncio.create_task(self._handle(owner, sub_id, entry_id, fields, lingered))
        self._tasks.add(task)

        def linger() -> None:  # still in flight: a failure, and its global slot given back
            released = self.slots.linger(owner, sub_id)
            lingered.append("released" if released else "counted")
            if released:
                self._wake.set()

        timer = asyncio.get_running_loop().call_later(self.config.breaker.linger_after, linger)
        task.add_done_callback(lambda done: self._done(done, owner, sub_id, timer, lingered))

    def _done(
        self,
        task: asyncio.Task[None],
        owner: str,
        sub_id: str,
        timer: asyncio.TimerHandle,
        lingered: list[str],
    ) -> None:
        timer.cancel()
        self._tasks.discard(task)
        self.slots.give_back(owner, sub_id, lingered="released" in lingered)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("delivery failed unexpectedly", exc_info=task.exception())

    async def _handle(
        self,
        owner: str,
        sub_id: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        lingered: list[str],
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
            await self.outcomes.finish_entry(owner, sub_id, entry_id)
            return
        sub = self.store.cached(sub_id, version) or await self.store.get_owned(owner, sub_id)
        if not msg or sub is None or not sub.enabled:
            if msg:
                await self.redis.hset(mkey, "state", "skipped")  # type: ignore[misc]
            await self.outcomes.finish_entry(owner, sub_id, entry_id)
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
        slow = is_slow(result) and not lingered
        self.slots.mark(sub.id, delivered=result.delivered, slow=slow, owner=owner)
        await self.outcomes.record(entry_id, message_id, msg, sub, attempt, trigger, result)
