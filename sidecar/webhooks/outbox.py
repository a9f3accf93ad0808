"""The durable outbox: messages (hashes) and their attempts (a stream read by a consumer group).

Message ids are derived from (correlation id, call identity, subscription), so enqueueing the
same completion twice (a reclaimed dispatcher entry, poll and stream both seeing it) is a no-op.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .keys import DELIVERY_GROUP, due_key, message_key, outbox_key

MESSAGE_TTL_S = 7 * 24 * 3600

# Trims the outbox once it is longer than `maxlen`, but only of attempts the delivery group has
# read and acknowledged: an unread or pending entry is the only record of its message's next
# attempt, so a plain MAXLEN would lose messages whenever the backlog outgrew the bound.
_TRIM = """
local function trim(key, maxlen, group)
  if redis.call('XLEN', key) <= maxlen then return end
  local cutoff = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == group then cutoff = f['last-delivered-id'] end
  end
  if not cutoff then return end
  local pending = redis.call('XPENDING', key, group)
  if pending[1] > 0 then cutoff = pending[2] end
  redis.call('XTRIM', key, 'MINID', '~', cutoff)
end
"""

# KEYS: msg, outbox. ARGV: sub, type, body, created_ms, trigger, maxlen, ttl_s, message_id, group.
_ENQUEUE = (
    _TRIM
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'sub', ARGV[1], 'type', ARGV[2], 'body', ARGV[3],
  'created_ms', ARGV[4], 'trigger', ARGV[5], 'state', 'queued', 'attempts', '0')
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('XADD', KEYS[2], '*', 'm', ARGV[8], 'n', '1', 't', ARGV[5])
trim(KEYS[2], tonumber(ARGV[6]), ARGV[9])
return 1
"""
)

# KEYS: outbox. ARGV: message_id, attempt, trigger, maxlen, group. One more attempt, now.
_REQUEUE = (
    _TRIM
    + """
redis.call('XADD', KEYS[1], '*', 'm', ARGV[1], 'n', ARGV[2], 't', ARGV[3])
trim(KEYS[1], tonumber(ARGV[4]), ARGV[5])
"""
)

# KEYS: due, outbox. ARGV: now_ms, maxlen, group. Moves due retries back to the outbox atomically.
_MOVE_DUE = (
    _TRIM
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 200)
for _, member in ipairs(due) do
  local m, n, t = string.match(member, '^([^|]+)|([^|]+)|(.+)$')
  redis.call('XADD', KEYS[2], '*', 'm', m, 'n', n, 't', t)
  redis.call('ZREM', KEYS[1], member)
end
if #due > 0 then trim(KEYS[2], tonumber(ARGV[2]), ARGV[3]) end
return #due
"""
)


async def create_group(redis: Redis, stream: str, group: str, start: str) -> None:
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
    sub_id: str
    event_type: str
    body: bytes
    created_ms: int
    trigger: str = "scheduled"


def message_id_for(correlation_id: str, call_identity: str, sub_id: str) -> str:
    """A stable message id: the same completion for the same subscription gets the same id."""
    digest = hashlib.sha256(f"{correlation_id}\n{call_identity}\n{sub_id}".encode()).hexdigest()
    return "msg_" + digest[:26]


class Outbox:
    """Enqueues messages and moves due retries back to the outbox stream."""

    def __init__(self, redis: Redis, prefix: str, maxlen: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.maxlen = maxlen
        self._enqueue = redis.register_script(_ENQUEUE)
        self._move = redis.register_script(_MOVE_DUE)
        self._requeue = redis.register_script(_REQUEUE)

    async def enqueue(
        self,
        message_id: str,
        sub_id: str,
        event_type: str,
        body: bytes,
        created_ms: int | None = None,
        trigger: str = "scheduled",
    ) -> bool:
        """Create the message and queue its first attempt; False when it already existed."""
        created = created_ms if created_ms is not None else int(time.time() * 1000)
        message = Message(message_id, sub_id, event_type, body, created, trigger)
        return await self.enqueue_many([message]) == 1

    async def enqueue_many(self, messages: list[Message]) -> int:
        """Enqueue messages in one round trip; how many were new (the others already existed)."""
        if not messages:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in messages:
                await self._enqueue(
                    keys=[message_key(self.prefix, m.message_id), outbox_key(self.prefix)],
                    args=[
                        m.sub_id,
                        m.event_type,
                        m.body,
                        m.created_ms,
                        m.trigger,
                        self.maxlen,
                        MESSAGE_TTL_S,
                        m.message_id,
                        DELIVERY_GROUP,
                    ],
                    client=pipe,
                )
            replies = await pipe.execute()
        return sum(1 for reply in replies if reply)

    async def requeue(self, message_id: str, attempt: int, trigger: str) -> None:
        """Queue one more attempt of an existing message now (manual redelivery)."""
        await self._requeue(
            keys=[outbox_key(self.prefix)],
            args=[message_id, attempt, trigger, self.maxlen, DELIVERY_GROUP],
        )

    async def move_due(self) -> int:
        """Move every due retry to the outbox stream; the number moved."""
        moved = await self._move(
            keys=[due_key(self.prefix), outbox_key(self.prefix)],
            args=[int(time.time() * 1000), self.maxlen, DELIVERY_GROUP],
        )
        return int(moved)
