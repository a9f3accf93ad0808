"""Delivery workers: the loops that read the subscriptions' queues and make the attempts.

Loops per process, each run by `supervise.supervised`:

    read       plans a read of the ready queues (`planner`: round-robin across owners, within
               the global, per-owner and per-endpoint caps) and starts an attempt per entry;
               the ready set is read again only when the bell rang (or after IDLE_WAIT_S)
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
written by `outcome`, only while the attempt's claim holds (`fence`). An endpoint's slot is
given back once its receiver answered; the reads for the freed slots (entries with their
messages, one script per queue) and the outcomes of the attempts that ended go to Redis
together, in one round trip. A message whose record Redis lost is dead-lettered, not sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from redis.exceptions import ResponseError

from ..connections import REDIS_FAULTS, PrimaryCheck, close
from ..tasks import checkpoint
from ..trace import current, from_traceparent
from .attempt import post_once
from .fence import WHOLE, message_fields, pairs
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
from .outcome import INCOMPLETE, LOST, Claim, OutcomeWriter
from .planner import PlannedRead, Slots
from .retry import is_slow
from .runtime import WebhookRuntime
from .supervise import supervised
from .sweep import CLAIM_STEP_S, RECONCILE_S, Queue, Sweep

logger = logging.getLogger(__name__)

FAULT_LOG_EVERY_S = 1.0  # at most one line a second for outcomes a Redis fault kept back

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
            self.redis, self.prefix, config, self.consumer, self.store, self.metrics
        )
        self.claim_idle_s = config.claim_after_s
        self.due_interval_s = min(max(min(config.schedule) / 4, 0.01), 0.5)
        self.slots = Slots(config, webhooks.breakers)
        self.sweep = Sweep(self.redis, self.prefix)
        self._tasks: set[asyncio.Task[None]] = set()
        # Attempts taken over from a dead process, waiting for a slot (made first), by sub.
        self._claimed: dict[str, list[tuple[Claim, dict[bytes, bytes]]]] = {}
        self._wake = asyncio.Event()
        self.recording = 0  # attempts started and not yet recorded (at most twice concurrency)
        # The ready set as last read: read again when the bell rang (something was enqueued,
        # on any replica) or it is older than IDLE_WAIT_S, not before every read.
        self._ready: list[tuple[bytes, float]] = []
        self._ready_at = -IDLE_WAIT_S
        self._bell_rang = True
        self.read_from: set[str] = set()  # queues this consumer joined (left at shutdown)
        # Counts a Redis fault of the loops or of an outcome's write (sidecar_redis_faults_total).
        self.on_fault: Callable[[], object] | None = None
        self._fault_logged = -FAULT_LOG_EVERY_S

    # -- loops ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every loop until cancelled; then cancel attempts in flight."""
        try:
            async with asyncio.TaskGroup() as group:
                for name, loop in (
                    ("read", self._read_forever),
                    ("bell", self._bell_forever),
                    ("claim", self._claim_forever),
                    ("due", self._due_forever),
                    ("reconcile", self._reconcile_forever),
                ):
                    group.create_task(supervised(f"delivery-{name}", loop, self.on_fault))
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.outcomes.close()

    async def ensure_group(self) -> None:
        """Nothing to create up front: each queue's group is made with its first entry."""

    def _start_claimed(self) -> int:
        """Start the held taken-over attempts that now have a slot; how many."""
        started = 0
        for sub_id, held in list(self._claimed.items()):
            while held and self.slots.can_start(held[0][0].owner, sub_id):
                claim, fields = held.pop(0)
                self._spawn(claim, fields, None, None)
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
                    self._bell_rang = True
                    self._wake.set()
                await primary.ensure()
        finally:
            await close(reader)

    async def read_once(self) -> bool:
        """One planned read (after the taken-over attempts waiting for a slot); True when it
        started at least one attempt."""
        claimed = self._start_claimed()
        if self.slots.free() <= 0 or self.recording >= 2 * self.config.concurrency:
            return claimed > 0
        now = time.monotonic()
        if self._bell_rang or now - self._ready_at > IDLE_WAIT_S:
            self._bell_rang, self._ready_at = False, now
            self._ready = await self.redis.zrange(
                ready_key(self.prefix), 0, READY_SCAN - 1, withscores=True
            )
        planned = [p for p in self.slots.plan(self._ready) if p.sub not in self._claimed]
        if not planned:
            return claimed > 0
        # One script per queue: its entries with their messages; and the subscriptions'
        # version (in the first script on one server), with the outcomes of the attempts that
        # freed the slots: one round trip.
        fence, one_server = self.outcomes.fence, self.outcomes.one_server
        version_at = version_key(self.prefix)
        calls = [self._read_call(read, n == 0 and one_server) for n, read in enumerate(planned)]
        # First in the round trip, ahead of the reads: these queues are read from (the claim
        # walk looks at them from now on until it finds them empty).
        noted = self.sweep.note_reads_args(read.member for read in planned)
        replies: list[Any] = await asyncio.gather(
            fence.trips.command(*noted),
            *(fence.trips.script(fence.read, keys, args) for keys, args in calls),
            *(() if one_server else (fence.trips.command("GET", version_at),)),
            return_exceptions=True,
        )
        version = None if one_server else replies.pop()
        if isinstance(version, BaseException):
            raise version
        if isinstance(replies[0], BaseException):
            raise replies[0]
        replies = replies[1:]
        started = 0
        for n, (read, reply) in enumerate(zip(planned, replies, strict=True)):
            owner, sub = read.owner, read.sub
            queue = queue_key(self.prefix, owner, sub)
            if isinstance(reply, ResponseError):
                if not group_lost(reply):
                    raise reply
                await create_group(self.redis, queue, DELIVERY_GROUP, "0")
                continue
            if isinstance(reply, BaseException):
                raise reply
            if n == 0 and one_server:
                version = reply[0] or None
            reply = reply[1:]
            if len(reply) < read.count:  # drained: not read again before the bell says so
                self._forget(read.member)
            if not reply:
                await self.outbox.unready(read.member, read.score)
                continue
            self.read_from.add(queue)
            for entry_id, flat, raw in reply:
                # A new entry read by this consumer: its delivery count is 1.
                claim = Claim(owner, sub, entry_id.decode(), 1)
                self._spawn(claim, pairs(flat), message_fields(raw), version)
                started += 1
        return started + claimed > 0

    def _read_call(self, read: PlannedRead, with_version: bool) -> tuple[list[str], list[Any]]:
        """The read script's keys and args for one planned read."""
        keys = [queue_key(self.prefix, read.owner, read.sub)]
        if with_version:
            keys.append(version_key(self.prefix))
        args = [DELIVERY_GROUP, self.consumer, read.count, message_key(self.prefix, read.owner, "")]
        return keys, args

    def _forget(self, member: str) -> None:
        """Drop a queue found drained from the ready set as last read."""
        raw = member.encode()
        self._ready = [row for row in self._ready if row[0] != raw]

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
        lengths: list[tuple[Queue, int]] = []
        taken: list[tuple[Queue, str, dict[bytes, bytes]]] = []
        for q, room in zip(queues, rooms, strict=True):
            length = next(replies)
            lengths.append((q, length if isinstance(length, int) else 1))  # unknown: kept
            reply = next(replies) if room > 0 else None
            if isinstance(reply, Exception) or not reply:
                continue  # no queue (or group) yet
            # Not deleted meanwhile.
            taken += ((q, entry_id.decode(), fields) for entry_id, fields in reply[1] if fields)
        await self.sweep.seen(lengths)
        if not taken:
            return 0
        # Each claim's fence token: the entry's delivery count now (the claim raised it).
        async with self.redis.pipeline(transaction=False) as pipe:
            for q, entry_id, _fields in taken:
                pipe.xpending_range(
                    queue_key(self.prefix, q.owner, q.sub),
                    DELIVERY_GROUP,
                    min=entry_id,
                    max=entry_id,
                    count=1,
                    consumername=self.consumer,
                )
            pending = await pipe.execute(raise_on_error=False)
        claimed = 0
        for (q, entry_id, fields), rows in zip(taken, pending, strict=True):
            if isinstance(rows, Exception) or not rows:
                continue  # taken out or over meanwhile
            logger.info("claimed an abandoned attempt", extra={"sub": q.sub, "entry": entry_id})
            self.read_from.add(queue_key(self.prefix, q.owner, q.sub))
            claim = Claim(q.owner, q.sub, entry_id, int(rows[0]["times_delivered"]))
            self._claimed.setdefault(q.sub, []).append((claim, fields))
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
                for claim, _fields in held:
                    # JUSTID leaves the delivery count, the claim's fence token, as it is.
                    pipe.xclaim(
                        queue_key(self.prefix, claim.owner, sub_id),
                        DELIVERY_GROUP,
                        self.consumer,
                        min_idle_time=0,
                        message_ids=[claim.entry_id],
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

    def _spawn(
        self,
        claim: Claim,
        fields: dict[bytes, bytes],
        msg: dict[str, bytes] | None,
        version: bytes | None,
    ) -> None:
        slot = Slot(self, claim.owner, claim.sub_id)
        task = asyncio.create_task(self._handle(claim, fields, msg, version, slot))
        self._tasks.add(task)
        slot.timer = asyncio.get_running_loop().call_later(
            self.config.breaker.linger_after, slot.linger
        )
        task.add_done_callback(lambda done: self._done(done, slot))

    def _done(self, task: asyncio.Task[None], slot: Slot) -> None:
        self._tasks.discard(task)
        slot.give_back()
        self.recording -= 1
        self._wake.set()
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, REDIS_FAULTS):  # the entry stays pending: taken over after claim_after
            if self.on_fault is not None:
                self.on_fault()
            now = time.monotonic()
            if now - self._fault_logged > FAULT_LOG_EVERY_S:
                self._fault_logged = now
                logger.warning(
                    "an attempt's outcome was not recorded (Redis fault); it is made again "
                    "once its claim lapses",
                    extra={"sub": slot.sub_id, "error": str(exc)},
                )
        elif exc is not None:
            logger.error("delivery failed unexpectedly", exc_info=exc)

    async def _handle(
        self,
        claim: Claim,
        fields: dict[bytes, bytes],
        msg: dict[str, bytes] | None,
        version: bytes | None,
        slot: Slot,
    ) -> None:
        """Make one attempt of a claimed entry, and record it. `msg` and `version` come with an
        entry read by the read script; a claimed one has them read here. The endpoint's slot is
        given back once the receiver answered: the record goes with the next batch meanwhile."""
        owner, sub_id = claim.owner, claim.sub_id
        message_id = fields[b"m"].decode()
        attempt, trigger = int(fields[b"n"]), fields[b"t"].decode()
        mkey = message_key(self.prefix, owner, message_id)
        if msg is None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(mkey)
                pipe.get(version_key(self.prefix))
                raw, version = await pipe.execute()
            msg = {k.decode(): v for k, v in raw.items()}
        if not all(field in msg for field in WHOLE):
            # Lost by Redis, or left without its body: it can never be sent. Dead, not retried.
            reason = INCOMPLETE if msg else LOST
            detail = (
                f"the message's record is missing {', '.join(f for f in WHOLE if f not in msg)}"
                if msg
                else "the message's record is gone from Redis"
            )
            await self.outcomes.bury(claim, message_id, msg, attempt - 1, reason, detail)
            return
        if int(msg.get("attempts") or 0) >= attempt:
            # Already made and recorded: a replayed entry (e.g. a group created again from the
            # stream's start) must not send the message again.
            await self.outcomes.finish_entry(owner, sub_id, claim.entry_id)
            return
        sub = self.store.cached(sub_id, version) or await self.store.get_owned(owner, sub_id)
        if sub is None or not sub.enabled:
            await self.redis.hset(mkey, "state", "skipped")  # type: ignore[misc]
            await self.outcomes.finish_entry(owner, sub_id, claim.entry_id)
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
        slow = is_slow(result) and slot.lingered is None  # a lingering hang counted already
        self.slots.mark(sub.id, delivered=result.delivered, slow=slow, owner=owner)
        slot.give_back()
        await self.outcomes.record(claim, message_id, msg, sub, attempt, trigger, result)


class Slot:
    """One attempt's place under the caps, taken when it starts, given back once (when its
    receiver answered, or when it ends without an attempt). Still in flight past
    `linger_after`, it counts as a failure of its endpoint, once, and gives its global and
    endpoint slots back early when the lingering have room (`planner.Slots.linger`)."""

    __slots__ = ("held", "lingered", "owner", "sub_id", "timer", "worker")

    def __init__(self, worker: DeliveryWorker, owner: str, sub_id: str) -> None:
        self.worker, self.owner, self.sub_id = worker, owner, sub_id
        worker.slots.take(owner, sub_id)
        worker.recording += 1
        self.held = True
        self.lingered: str | None = None  # "counted", or "released" when its slots went back
        self.timer: asyncio.TimerHandle | None = None

    def linger(self) -> None:
        """Still in flight: a failure of its endpoint, and its global slot given back."""
        if not self.held:
            return
        released = self.worker.slots.linger(self.owner, self.sub_id)
        self.lingered = "released" if released else "counted"
        if released:
            self.worker._wake.set()

    def give_back(self) -> None:
        """Free the place (once) and wake the reader."""
        if self.held:
            self.held = False
            if self.timer is not None:
                self.timer.cancel()
            released = self.lingered == "released"
            self.worker.slots.give_back(self.owner, self.sub_id, lingered=released)
            self.worker._wake.set()
