"""Reading operations back, and the few writes that cannot wait for a batch: claiming an
Idempotency-Key a dead call left behind, and expunging an operation the operator must forget.

Every read is by a digest or a correlation id the caller was allowed to name: a status token is
looked up by its SHA-256, an Idempotency-Key by the SHA-256 of its scope (tenant, route, key),
so no value a client sends selects another client's data.
"""

from __future__ import annotations

import time

from ..connections import Client, register
from ..keys import (
    call_key,
    idempotency_key,
    location_key,
    operation_events_key,
    operation_key,
    status_token_key,
)
from ..timeline import HARD_CAP
from ..tracking import location_lookup_path
from .records import IdemHold, Operation, digest

# KEYS: an Idempotency-Key. ARGV: the hold seen (its stored form), the new hold, now (ms).
# Takes over a key whose holder never learnt its upstream's answer (no correlation id) and
# whose lease ran out, or whose operation is gone: only if it is still the hold seen.
_TAKE_OVER = """
local held = redis.call('GET', KEYS[1])
if held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""

# KEYS: an Idempotency-Key. ARGV: the correlation id. Deletes it if it names that operation.
_FORGET_KEY = """
local held = redis.call('GET', KEYS[1])
if not held then return 0 end
local cid = string.match(held, '^%S+ %S+ %S+ (.*)$')
if cid ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# KEYS: a tracking record. ARGV: the correlation id. Deletes it if it is that operation's.
_FORGET_CALL = """
if redis.call('HGET', KEYS[1], 'correlation_id') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

_SHOWN = (  # what a timeline shows of the hash: not the kept bytes
    "route",
    "tenant",
    "wait_id",
    "created",
    "location",
    "upstream_location",
    "tracked_at",
    "token",
    "idem",
    "done",
    "kind",
    "state",
    "done_at",
    "source",
    "etype",
    "json",
    "kept",
    "ctype",
    "code",
    "dropped",
)


class OperationStore:
    """Reads of operations, tokens and Idempotency-Keys under one key prefix."""

    def __init__(self, redis: Client, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._take_over = register(redis, _TAKE_OVER)
        self._forget_key = register(redis, _FORGET_KEY)
        self._forget_call = register(redis, _FORGET_CALL)

    async def get(self, correlation_id: str) -> Operation | None:
        """The operation whole (with the bytes kept for answers), or None."""
        raw = await self.redis.hgetall(operation_key(self.prefix, correlation_id))  # type: ignore[misc]
        return Operation.decode(correlation_id, raw)

    async def summary(self, correlation_id: str) -> tuple[Operation | None, list[bytes]]:
        """The operation without its kept bytes, and its timeline events as stored."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(operation_key(self.prefix, correlation_id), list(_SHOWN))
            pipe.lrange(operation_events_key(self.prefix, correlation_id), 0, HARD_CAP - 1)
            values, events = await pipe.execute()
        raw = {name.encode(): v for name, v in zip(_SHOWN, values, strict=True) if v is not None}
        return Operation.decode(correlation_id, raw), list(events)

    async def done(self, correlation_id: str) -> bool | None:
        """Whether the operation's outcome is known (None: there is no such operation)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            key = operation_key(self.prefix, correlation_id)
            pipe.exists(key)
            pipe.hget(key, "done")
            exists, done = await pipe.execute()
        return None if not exists else done == b"1"

    async def tracked(self, wait_id: str) -> bool:
        """True while the call's tracking record lives (a completion can still be matched)."""
        return bool(await self.redis.exists(call_key(self.prefix, wait_id)))

    async def token(self, token: str) -> tuple[str | None, str] | None:
        """(tenant, correlation id) of a status token; None when unknown or expired."""
        raw = await self.redis.get(status_token_key(self.prefix, digest(token)))
        if raw is None:
            return None
        tenant, _, correlation_id = raw.decode().partition(" ")
        return (None if tenant == "-" else tenant), correlation_id

    async def hold(self, scope: str) -> IdemHold | None:
        """Who holds the Idempotency-Key of this scope digest, if anyone."""
        return IdemHold.decode(await self.redis.get(idempotency_key(self.prefix, scope)))

    async def take_over(self, scope: str, seen: IdemHold, new: IdemHold) -> bool:
        """Hold the key as `new` if it is still held as `seen` (see `_TAKE_OVER`)."""
        keys = [idempotency_key(self.prefix, scope)]
        return bool(await self._take_over(keys=keys, args=[seen.encode(), new.encode()]))

    async def expunge(self, op: Operation, also: list[str]) -> None:
        """Forget an operation: its hash and events, its status token, its Idempotency-Key and
        tracking record (if they are still its own), its Location's lookup, and its webhook
        messages (`also`: their keys, whose payloads hold its result). Attempt summaries (no
        payload) stay."""
        cid = op.correlation_id
        keys = [operation_key(self.prefix, cid), operation_events_key(self.prefix, cid), *also]
        if op.token_digest:
            keys.append(status_token_key(self.prefix, op.token_digest))
        if op.upstream_location:
            keys.append(location_key(self.prefix, location_lookup_path(op.upstream_location)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:  # one by one: on a cluster they live in several slots
                pipe.delete(key)
            await pipe.execute()
        if op.idem_digest:
            await self._forget_key(keys=[idempotency_key(self.prefix, op.idem_digest)], args=[cid])
        if op.wait_id:
            await self._forget_call(keys=[call_key(self.prefix, op.wait_id)], args=[cid])


def now_ms() -> int:
    """Wall-clock time in milliseconds (leases are compared across replicas)."""
    return int(time.time() * 1000)
