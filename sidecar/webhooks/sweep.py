"""The delivery workers' walks, each bounded per tick whatever the number of subscriptions.

    claim      walks the read index (the queues some consumer has read from: the only ones that
               can hold an attempt in flight), CLAIM_BATCH queues a tick, with a cursor kept
               from one tick to the next; a queue found empty leaves the index, unless it was
               read again meanwhile
    reconcile  walks every subscription, RECONCILE_BATCH a tick, with a cursor kept from one
               tick to the next: a queue holding work is marked ready and put in the read
               index, an owner's earliest retry is put back in the due index
    depth      the queue-depth gauges from the ready and due indexes (at most DEPTH_SAMPLE
               members of each, the rest estimated) and the read index's lengths as the claim
               walk last saw them

An idle process with no work queued therefore costs a few commands a tick plus one reconcile
batch, not one command per subscription. A full pass over N subscriptions takes
ceil(N / RECONCILE_BATCH) reconcile ticks; a full pass over the read index takes
ceil(M / CLAIM_BATCH) claim steps (`docs/webhooks.md`, "Taking over").
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..connections import Client, register, run_scripts
from .keys import (
    all_subscriptions_key,
    due_key,
    dues_key,
    queue_key,
    read_index_key,
    ready_key,
)
from .outbox import Outbox, ready_member

CLAIM_BATCH = 256  # queues of the read index looked at per claim step
CLAIM_STEP_S = 1.0  # longest pause between two claim steps while a pass is under way
RECONCILE_BATCH = 500  # subscriptions looked at per reconcile tick
RECONCILE_S = 5.0  # between two reconcile ticks
DEPTH_SAMPLE = 1000  # members of the ready and due indexes read per depth sample

# KEYS: the read index. ARGV: member, value seen. Forget a queue found empty, unless it was
# read again since it was seen (the read wrote a new time).
_FORGET = """
local seen = redis.call('HGET', KEYS[1], ARGV[1])
if seen and seen == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Queue:
    """One subscription's queue, as a walk met it: its index member, owner and subscription,
    and the value the read index held for it (b"" when not from the read index)."""

    member: str
    owner: str
    sub: str
    seen: bytes = b""


def _queue(member: str, seen: bytes = b"") -> Queue | None:
    owner, _, sub = member.partition("|")
    return Queue(member, owner, sub, seen) if owner and sub else None


class Sweep:
    """The cursors and indexes of the delivery workers' walks (one per worker)."""

    def __init__(self, redis: Client, prefix: str) -> None:
        self.redis, self.prefix = redis, prefix
        self._forget = register(redis, _FORGET)
        self._claim_cursor = 0
        self._reconcile_cursor = 0
        self.claim_pass_done = True  # the last claim step ended a pass over the read index
        # Read-index member → its queue's length when the claim walk last looked.
        self.lengths: dict[str, int] = {}
        self._this_pass: set[str] = set()  # read-index members met in the pass under way

    def note_reads_args(self, members: Iterable[str]) -> list[Any]:
        """The command (its args) that notes these queues as read from, to go ahead of their
        reads: from then on the claim walk looks at them until it finds them empty."""
        stamp = time.time_ns() // 1000
        args: list[Any] = ["HSET", read_index_key(self.prefix)]
        for member in members:
            args += (member, stamp)
        return args

    async def claim_batch(self) -> list[Queue]:
        """The next part of the read index (about CLAIM_BATCH queues)."""
        cursor, fields = await self.redis.hscan(
            read_index_key(self.prefix), self._claim_cursor, count=CLAIM_BATCH
        )
        self._claim_cursor = int(cursor)
        self.claim_pass_done = self._claim_cursor == 0
        found = [q for q in (_queue(m.decode(), v) for m, v in fields.items()) if q is not None]
        self._this_pass.update(q.member for q in found)
        return found

    async def seen(self, lengths: list[tuple[Queue, int]]) -> None:
        """Note the queues' lengths as the claim walk found them; an empty one leaves the read
        index, unless it was read from since."""
        empty = []
        for queue, length in lengths:
            if length > 0:
                self.lengths[queue.member] = length
            else:
                self.lengths.pop(queue.member, None)
                empty.append(([read_index_key(self.prefix)], [queue.member, queue.seen]))
        if self.claim_pass_done:  # what left the index meanwhile (another process) goes too
            self.lengths = {m: n for m, n in self.lengths.items() if m in self._this_pass}
            self._this_pass = set()
        await run_scripts(self.redis, self._forget, empty)

    async def reconcile_step(self, outbox: Outbox) -> bool:
        """Look at the next RECONCILE_BATCH subscriptions: mark those whose queue holds work
        ready and put them in the read index (what a process that died between writing an entry
        and indexing it left unmarked, and anything left pending in it), and put their owners'
        earliest retries back in the due index. True when this ended a pass over all."""
        cursor, fields = await self.redis.hscan(
            all_subscriptions_key(self.prefix), self._reconcile_cursor, count=RECONCILE_BATCH
        )
        self._reconcile_cursor = int(cursor)
        subs = [(owner.decode(), sub.decode()) for sub, owner in fields.items()]
        owners = sorted({owner for owner, _sub in subs})
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner, sub in subs:
                pipe.xlen(queue_key(self.prefix, owner, sub))
            for owner in owners:
                pipe.zrange(due_key(self.prefix, owner), 0, 0, withscores=True)
            replies = await pipe.execute(raise_on_error=False)
        lengths, firsts = replies[: len(subs)], replies[len(subs) :]
        busy = [q for q, n in zip(subs, lengths, strict=True) if isinstance(n, int) and n > 0]
        if busy:
            await outbox.mark_ready(busy)
            async with self.redis.pipeline(transaction=False) as pipe:
                for owner, sub in busy:
                    pipe.hsetnx(read_index_key(self.prefix), ready_member(owner, sub), "0")
                await pipe.execute()
        dues = {
            o: int(f[0][1])
            for o, f in zip(owners, firsts, strict=True)
            if isinstance(f, list) and f
        }
        if dues:
            await self.redis.zadd(dues_key(self.prefix), dues)
        return self._reconcile_cursor == 0

    async def depth(self) -> tuple[int, int]:
        """(entries queued or in flight, retries scheduled), summed over at most DEPTH_SAMPLE
        ready queues and DEPTH_SAMPLE owners with retries, scaled up when there are more; the
        queues only in the read index count as the claim walk last saw them."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(ready_key(self.prefix))
            pipe.zrange(ready_key(self.prefix), 0, DEPTH_SAMPLE - 1)
            pipe.zcard(dues_key(self.prefix))
            pipe.zrange(dues_key(self.prefix), 0, DEPTH_SAMPLE - 1)
            n_ready, ready, n_owners, owners = await pipe.execute()
        queues = [q for q in (_queue(m.decode()) for m in ready) if q is not None]
        async with self.redis.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.xlen(queue_key(self.prefix, q.owner, q.sub))
            for owner in owners:
                pipe.zcard(due_key(self.prefix, owner.decode()))
            replies = await pipe.execute(raise_on_error=False)
        counts = [r if isinstance(r, int) else 0 for r in replies]
        queued = _scaled(sum(counts[: len(queues)]), len(queues), int(n_ready))
        sampled = {q.member for q in queues}
        queued += sum(n for m, n in self.lengths.items() if m not in sampled)
        scheduled = _scaled(sum(counts[len(queues) :]), len(owners), int(n_owners))
        return queued, scheduled


def _scaled(total: int, sampled: int, everyone: int) -> int:
    """`total` over `sampled` members, estimated for `everyone`."""
    return total if sampled >= everyone or not sampled else round(total * everyone / sampled)
