"""The Lua steps of a delivery: take entries with their messages, record an outcome only under a
live claim, and bury a message whose record Redis lost.

A queue entry is *claimed* by the consumer it is pending for, and each claim (a read, an
`XAUTOCLAIM`) raises its delivery count. The pair (consumer, delivery count) is the attempt's
fence token: the outcome of an attempt is written only while the entry is still pending for
that consumer with that count, in the same script that checks it. An attempt that outlived its
claim (a replica frozen past `claim_after`, whose entry another replica, or its own claim loop,
took over) is *stale*: its outcome is dropped, so it can neither undo a delivery made
meanwhile nor schedule a retry of it.

A message whose hash has lost its body (Redis restarted empty, a failover to a replica without
the latest writes) can never be sent: it is buried (a `dead` record that says why, without a
body) instead of recorded, so no partial record is created and nothing retries it.

Every script touches one owner's keys (one hash tag, one cluster slot), plus, on one server
only, the operator's log of every owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from ..connections import Client, is_cluster, register

# KEYS: queue[, the subscriptions' version (one server only)]. ARGV: group, consumer, count,
# the owner's message key prefix (`…:msg:`). Reads up to `count` new entries and each one's
# message: {version or false, {id, {field, value, ...}, {message field, value, ...}}, ...}.
_READ = """
local version = false
if KEYS[2] then version = redis.call('GET', KEYS[2]) end
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], '>')
if not reply then return {version} end
local out = {version}
for _, entry in ipairs(reply[1][2]) do
  local fields, m = entry[2], nil
  for i = 1, #fields, 2 do if fields[i] == 'm' then m = fields[i + 1] end end
  local msg = {}
  if m then msg = redis.call('HGETALL', ARGV[4] .. m) end
  out[#out + 1] = {entry[1], fields, msg}
end
return out
"""

# KEYS: queue, message, message log, subscription's attempts, owner's log, owner's due set,
# subscription[, every owner's log (one server only)].
# ARGV: entry, group, consumer, token (delivery count), state, attempt, headers, ttl_s, line,
# summary, everyone's line, due member ('' for none), due ms, delivered (1/0), now,
# attempts kept, message attempts kept, owner log kept, every owner's log kept.
# Returns {'ok', failing since (0: not failing, -1: subscription gone)}, {'stale', 0} or
# {'lost', 0}.
_RECORD = """
if redis.call('HEXISTS', KEYS[2], 'body') == 0 then return {'lost', '0'} end
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[2], ARGV[1], ARGV[1], 1, ARGV[3])
if not ok or #pending == 0 or tostring(pending[1][4]) ~= ARGV[4] then
  return {'stale', '0'}
end
redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[4], ARGV[9])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[16]) - 1)
redis.call('HSET', KEYS[2], 'state', ARGV[5], 'attempts', ARGV[6], 'headers', ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call('LPUSH', KEYS[3], ARGV[9])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[17]) - 1)
redis.call('EXPIRE', KEYS[3], ARGV[8])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[18], '*', 'a', ARGV[10])
if KEYS[8] then redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[19], '*', 'a', ARGV[11]) end
if ARGV[12] ~= '' then redis.call('ZADD', KEYS[6], ARGV[13], ARGV[12]) end
if redis.call('EXISTS', KEYS[7]) == 0 then return {'ok', '-1'} end
local since = redis.call('HGET', KEYS[7], 'failing_since') or '0'
if ARGV[14] == '1' then
  if since ~= '0' then redis.call('HSET', KEYS[7], 'failing_since', '0') end
  return {'ok', '0'}
end
if (tonumber(since) or 0) > 0 then return {'ok', since} end
redis.call('HSET', KEYS[7], 'failing_since', ARGV[15])
return {'ok', ARGV[15]}
"""

# KEYS: queue, message, message log, subscription's attempts, owner's log[, every owner's
# log (one server only)].
# ARGV: entry, group, consumer, sub, type, created_ms, trigger, attempts, reason, ttl_s, line,
# summary, everyone's line, attempts kept, message attempts kept, owner log kept, every
# owner's log kept.
# The queue entry is taken out when it is pending for this consumer. Returns 1 when the
# message was buried now; 0 when its record is whole after all, or was buried already.
_BURY = """
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[2], ARGV[1], ARGV[1], 1, ARGV[3])
if ok and #pending > 0 then
  redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[1], ARGV[1])
end
local have = redis.call('HMGET', KEYS[2], 'body', 'sub', 'type', 'state')
if have[1] and have[2] and have[3] then return 0 end
if have[4] == 'dead' then return 0 end
redis.call('HSET', KEYS[2], 'sub', ARGV[4], 'type', ARGV[5], 'created_ms', ARGV[6],
  'trigger', ARGV[7], 'state', 'dead', 'attempts', ARGV[8], 'dead_reason', ARGV[9],
  'ttl', ARGV[10])
redis.call('EXPIRE', KEYS[2], ARGV[10])
redis.call('LPUSH', KEYS[3], ARGV[11])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[15]) - 1)
redis.call('EXPIRE', KEYS[3], ARGV[10])
redis.call('LPUSH', KEYS[4], ARGV[11])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[14]) - 1)
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[16], '*', 'a', ARGV[12])
if KEYS[6] then redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[17], '*', 'a', ARGV[13]) end
return 1
"""

# One call of a batch: a script with its keys and args, or (script None) a plain command.
Call = tuple[AsyncScript | None, Sequence[Any], Sequence[Any]]


class RoundTrip:
    """Sends the delivery's calls made while a round trip is on its way (the outcomes of the
    attempts that ended, the reads for the slots they freed) together as the next one: one
    round trip for all of them, however many. Each caller gets its own reply, or its own
    error; a fault of the round trip itself is every caller's."""

    def __init__(self, redis: Client) -> None:
        self.redis = redis
        self._calls: list[tuple[Call, asyncio.Future[Any]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's reply to (keys, args), with the others of its round trip."""
        return await self._run((script, keys, args))

    async def command(self, *args: Any) -> Any:
        """A command's reply, with the others of its round trip."""
        return await self._run((None, (), args))

    async def _run(self, call: Call) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls.append((call, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # the calls made in the same turn of the loop go along
            while self._calls:
                batch, self._calls = self._calls, []
                try:
                    replies = await send(self.redis, [call for call, _ in batch])
                except Exception as exc:  # every caller of the round trip learns the fault
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:  # cancelled on its way: so are its callers
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), reply in zip(batch, replies, strict=True):
                    if future.done():
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._flushing = None
            for _, future in self._calls:  # cancelled with calls left: they end too
                future.cancel()
            self._calls.clear()

    async def close(self) -> None:
        """Stop the round trip on its way (its callers are cancelled with it)."""
        if self._flushing is not None:
            self._flushing.cancel()
            await asyncio.gather(self._flushing, return_exceptions=True)


class Fence:
    """The delivery's scripts, bound to one Redis, and its round trips."""

    def __init__(self, redis: Client) -> None:
        self.read = register(redis, _READ)
        self.bury = register(redis, _BURY)
        self.record = register(redis, _RECORD)
        self.trips = RoundTrip(redis)


async def send(redis: Client, calls: Sequence[Call]) -> list[Any]:
    """Every call in one pipeline on one server (concurrently on a cluster, each script on the
    node of its keys): each call's reply, or the error it met. A Redis that lost its scripts
    (restarted, flushed) answers NOSCRIPT: they are loaded and those calls sent again."""
    if is_cluster(redis):
        return list(await asyncio.gather(*(_one(redis, c) for c in calls), return_exceptions=True))
    replies = await _pipelined(redis, calls)
    missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        for text in {id(c[0]): c[0].script for c in (calls[n] for n in missing) if c[0]}.values():
            await redis.script_load(text)
        again = await _pipelined(redis, [calls[n] for n in missing])
        for n, reply in zip(missing, again, strict=True):
            replies[n] = reply
    return replies


async def _one(redis: Client, call: Call) -> Any:
    script, keys, args = call
    if script is None:
        return await redis.execute_command(*args)
    return await script(keys=list(keys), args=list(args))


async def _pipelined(redis: Client, calls: Sequence[Call]) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            if script is None:
                pipe.execute_command(*args)
            else:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))
