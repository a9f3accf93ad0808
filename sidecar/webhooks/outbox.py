"""The durable outbox: messages (hashes) and, per subscription, a queue of attempts to make
(a stream read by the `delivery` consumer group), plus the index of queues holding work.

Message ids are derived from (correlation id, call identity, subscription), so enqueueing the
same completion twice (a reclaimed dispatcher entry, poll and stream both seeing it) is a no-op.
Everything one message touches is under its owner's hash tag (one script, one slot); the
global indexes (`ready`, `dues`, the bell) are written after it, and a reconciler in the
delivery workers repairs them if a process dies in between.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from ..connections import Client, is_cluster, register, run_scripts
from .keys import (
    DELIVERY_GROUP,
    bell_key,
    due_key,
    dues_key,
    message_key,
    message_owner_key,
    queue_key,
    ready_key,
)

MESSAGE_TTL_S = 7 * 24 * 3600  # the default of webhooks.retention.messages
ENQUEUE_BATCH = 100  # messages of one owner per script call (a call blocks Redis while it runs)

# Messages of one owner, one after the other. KEYS: per message `per` keys: msg, queue[, its
# owner-of key (one server only)]. ARGV: per, group; then per message (9): sub, type, body,
# created_ms, trigger, ttl_s, message_id, traceparent (of the call the message tells of; may be
# empty), owner. Returns per message 1 (new) or 0 (it existed).
_ENQUEUE = """
local per, group = tonumber(ARGV[1]), ARGV[2]
local out = {}
for i = 0, #KEYS / per - 1 do
  local msg, queue, a = KEYS[i * per + 1], KEYS[i * per + 2], 2 + i * 9
  if redis.call('EXISTS', msg) == 1 then
    out[i + 1] = 0
  else
    if per == 3 then redis.call('SET', KEYS[i * per + 3], ARGV[a + 9], 'EX', ARGV[a + 6]) end
    redis.call('HSET', msg, 'sub', ARGV[a + 1], 'type', ARGV[a + 2], 'body', ARGV[a + 3],
      'created_ms', ARGV[a + 4], 'trigger', ARGV[a + 5], 'state', 'queued', 'attempts', '0',
      'trace', ARGV[a + 8], 'ttl', ARGV[a + 6])
    redis.call('EXPIRE', msg, ARGV[a + 6])
    redis.pcall('XGROUP', 'CREATE', queue, group, '0', 'MKSTREAM')
    redis.call('XADD', queue, '*', 'm', ARGV[a + 7], 'n', '1', 't', ARGV[a + 5])
    out[i + 1] = 1
  end
end
return out
"""

# KEYS: msg, queue. ARGV: message_id, attempt, trigger, group. One more attempt, now, of a
# message that still exists with its body (one buried without it cannot be sent).
_REQUEUE = """
if redis.call('HEXISTS', KEYS[1], 'body') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'queued')
redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[4], '0', 'MKSTREAM')
redis.call('XADD', KEYS[2], '*', 'm', ARGV[1], 'n', ARGV[2], 't', ARGV[3])
return 1
"""

# KEYS: the owner's due set. ARGV: now_ms, queue key prefix (`…:q:`), group. Moves the owner's
# due retries to their subscriptions' queues; returns {next due ms or -1, sub, sub, ...}.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 200)
local moved = {}
for _, member in ipairs(due) do
  local sub, m, n, t = string.match(member, '^([^|]+)|([^|]+)|([^|]+)|(.+)$')
  if sub then
    local queue = ARGV[2] .. sub
    redis.pcall('XGROUP', 'CREATE', queue, ARGV[3], '0', 'MKSTREAM')
    redis.call('XADD', queue, '*', 'm', m, 'n', n, 't', t)
    table.insert(moved, sub)
  end
  redis.call('ZREM', KEYS[1], member)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local nxt = -1
if #first > 0 then nxt = tonumber(first[2]) end
return {nxt, unpack(moved)}
"""

# KEYS: the ready set. ARGV: member, score seen. Forget a queue found empty, unless work was
# enqueued since it was seen (the enqueue moved its score).
_UNREADY = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


async def create_group(redis: Client, stream: str, group: str, start: str) -> None:
    """Create a consumer group (and its stream) at `start` unless it exists."""
    try:
        await redis.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def group_lost(exc: ResponseError) -> bool:
    """True when a consumer group read failed because the group or its stream is gone (Redis
    restarted or flushed, or the stream was deleted): the group must be created again."""
    text = str(exc)
    return "NOGROUP" in text or "UNBLOCKED" in text


@dataclass(frozen=True, slots=True)
class Message:
    """One message to enqueue: a completion (or a test) for one subscription."""

    message_id: str
    owner: str
    sub_id: str
    event_type: str
    body: bytes
    created_ms: int
    trigger: str = "scheduled"
    traceparent: str = ""  # the call's span: each delivery is sent as a child of it
    ttl_s: int | None = None  # kept this long after its last attempt (None: the outbox's)


def message_id_for(correlation_id: str, call_identity: str, sub_id: str) -> str:
    """A stable message id: the same completion for the same subscription gets the same id."""
    digest = hashlib.sha256(f"{correlation_id}\n{call_identity}\n{sub_id}".encode()).hexdigest()
    return "msg_" + digest[:26]


def ready_member(owner: str, sub_id: str) -> str:
    """The ready-set member naming one subscription's queue."""
    return f"{owner}|{sub_id}"


class Outbox:
    """Enqueues messages, requeues attempts, and moves due retries back to their queues."""

    def __init__(self, redis: Client, prefix: str, ttl_s: int = MESSAGE_TTL_S) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s  # webhooks.retention.messages
        self._enqueue = register(redis, _ENQUEUE)
        self._requeue = register(redis, _REQUEUE)
        self._move = register(redis, _MOVE_DUE)
        self._unready = register(redis, _UNREADY)

    async def enqueue(
        self,
        message_id: str,
        owner: str,
        sub_id: str,
        event_type: str,
        body: bytes,
        created_ms: int | None = None,
        trigger: str = "scheduled",
        ttl_s: int | None = None,
    ) -> bool:
        """Create the message and queue its first attempt; False when it already existed."""
        created = created_ms if created_ms is not None else int(time.time() * 1000)
        message = Message(
            message_id, owner, sub_id, event_type, body, created, trigger, ttl_s=ttl_s
        )
        return await self.enqueue_many([message]) == 1

    async def enqueue_many(self, messages: list[Message]) -> int:
        """Enqueue messages (one round trip for the messages, one for the indexes); how many
        were new (the others already existed)."""
        if not messages:
            return 0
        # On one server the owner-of key is written by the script (a cluster: another slot).
        one_server = not is_cluster(self.redis)
        # One script call per owner (one hash tag), at most ENQUEUE_BATCH messages each.
        by_owner: dict[str, list[Message]] = {}
        for m in messages:
            by_owner.setdefault(m.owner, []).append(m)
        groups = [
            group[n : n + ENQUEUE_BATCH]
            for group in by_owner.values()
            for n in range(0, len(group), ENQUEUE_BATCH)
        ]
        calls = [self._enqueue_call(group, one_server) for group in groups]
        replies = [
            flag for reply in await run_scripts(self.redis, self._enqueue, calls) for flag in reply
        ]
        messages = [m for group in groups for m in group]
        new = [m for m, reply in zip(messages, replies, strict=True) if reply]
        await self.mark_ready(
            ((m.owner, m.sub_id) for m in new),
            owners=None
            if one_server
            else {m.message_id: (m.owner, m.ttl_s or self.ttl_s) for m in new},
        )
        return len(new)

    def _enqueue_call(self, group: list[Message], one_server: bool) -> tuple[list[str], list[Any]]:
        """The enqueue script's keys and args for messages of one owner."""
        keys: list[str] = []
        args: list[Any] = [3 if one_server else 2, DELIVERY_GROUP]
        for m in group:
            keys += (
                message_key(self.prefix, m.owner, m.message_id),
                queue_key(self.prefix, m.owner, m.sub_id),
            )
            if one_server:
                keys.append(message_owner_key(self.prefix, m.message_id))
            args += (
                m.sub_id,
                m.event_type,
                m.body,
                m.created_ms,
                m.trigger,
                m.ttl_s or self.ttl_s,
                m.message_id,
                m.traceparent,
                m.owner,
            )
        return keys, args

    async def requeue(
        self, owner: str, sub_id: str, message_id: str, attempt: int, trigger: str
    ) -> bool:
        """Queue one more attempt of an existing message now (manual redelivery, recovery);
        False when the message is gone, or has lost its body."""
        queued = await self._requeue(
            keys=[
                message_key(self.prefix, owner, message_id),
                queue_key(self.prefix, owner, sub_id),
            ],
            args=[message_id, attempt, trigger, DELIVERY_GROUP],
        )
        if queued:
            await self.mark_ready([(owner, sub_id)])
        return bool(queued)

    async def redeliver(
        self, owner: str, sub_id: str, message_ids: list[str], trigger: str
    ) -> dict[str, int]:
        """Queue one more attempt now of each of these messages of the subscription (a manual
        redelivery, a recovery); the attempt number each got, for those that exist and are
        the subscription's (the others are left out)."""
        if not message_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for message_id in message_ids:
                pipe.hmget(message_key(self.prefix, owner, message_id), ["sub", "attempts"])
            rows = await pipe.execute()
        queued: dict[str, int] = {}
        for message_id, (sub, attempts) in zip(message_ids, rows, strict=True):
            if sub is None or sub.decode() != sub_id:
                continue
            attempt = int(attempts or 0) + 1
            if await self.requeue(owner, sub_id, message_id, attempt, trigger):
                queued[message_id] = attempt
        return queued

    async def mark_ready(
        self,
        queues: Iterable[tuple[str, str]],
        owners: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        """Say that these (owner, subscription) queues hold work, and ring the bell; and, for
        new messages, who owns each (`owners`: id → (owner, ttl)), for the operator's lookups."""
        members = {ready_member(owner, sub): None for owner, sub in queues}
        if not members:
            return
        # A fresh score on every enqueue: a reader that found the queue empty before this
        # enqueue cannot forget it (see `unready`).
        score = time.time_ns() // 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(ready_key(self.prefix), dict.fromkeys(members, score))
            pipe.xadd(bell_key(self.prefix), {"r": "1"}, maxlen=1, approximate=False)
            for message_id, (owner, ttl_s) in (owners or {}).items():
                pipe.set(message_owner_key(self.prefix, message_id), owner, ex=ttl_s)
            await pipe.execute()

    async def unready(self, member: str, seen_score: float) -> None:
        """Forget a queue found empty, unless work was enqueued since its score was read."""
        await self._unready(keys=[ready_key(self.prefix)], args=[member, repr(int(seen_score))])

    async def move_due(self, now_ms: int | None = None) -> int:
        """Move every owner's due retries to their queues; the number moved."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        owners = await self.redis.zrangebyscore(dues_key(self.prefix), "-inf", now, 0, 100)
        moved = 0
        for raw in owners:
            owner = raw.decode()
            queue_prefix = queue_key(self.prefix, owner, "")
            reply = await self._move(
                keys=[due_key(self.prefix, owner)], args=[now, queue_prefix, DELIVERY_GROUP]
            )
            nxt, subs = int(reply[0]), [s.decode() for s in reply[1:]]
            moved += len(subs)
            if nxt >= 0:
                await self.redis.zadd(dues_key(self.prefix), {owner: nxt})
            else:
                await self.redis.zrem(dues_key(self.prefix), owner)
            await self.mark_ready((owner, sub) for sub in subs)
        return moved

    async def scheduled(self, owner: str, due_ms: int) -> None:
        """Note that `owner` has a retry due at `due_ms` (after the attempt's record wrote it)."""
        await self.redis.zadd(dues_key(self.prefix), {owner: due_ms}, lt=True)
