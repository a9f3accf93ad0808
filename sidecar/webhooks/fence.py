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
only, the operator's log of every owner and the subscriptions' version.
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

# The outcomes of one owner's attempts, one after the other.
# KEYS: per outcome (7): queue, message, message log, subscription's attempts, owner's log,
# owner's due set, subscription; then, on one server only, every owner's log.
# ARGV: group, consumer, attempts kept, message attempts kept, owner log kept, every owner's log
# kept; then per outcome (13): entry, token (delivery count), state, attempt, headers, ttl_s,
# line, summary, everyone's line, due member ('' for none), due ms, delivered (1/0), now.
# Returns per outcome {'ok', failing since (0: not failing, -1: subscription gone)},
# {'stale', 0} or {'lost', 0}.
_RECORD = """
local group, consumer = ARGV[1], ARGV[2]
local kept, kept_msg = tonumber(ARGV[3]) - 1, tonumber(ARGV[4]) - 1
local n = math.floor(#KEYS / 7)
local everyone = nil
if #KEYS > n * 7 then everyone = KEYS[#KEYS] end
local function record(k, a)
  local queue, msg, mlog, attempts, log, due, sub = k[1], k[2], k[3], k[4], k[5], k[6], k[7]
  if redis.call('HEXISTS', msg, 'body') == 0 then return {'lost', '0'} end
  local ok, pending = pcall(redis.call, 'XPENDING', queue, group, a[1], a[1], 1, consumer)
  if not ok or #pending == 0 or tostring(pending[1][4]) ~= a[2] then return {'stale', '0'} end
  redis.call('XACK', queue, group, a[1])
  redis.call('XDEL', queue, a[1])
  redis.call('LPUSH', attempts, a[7])
  redis.call('LTRIM', attempts, 0, kept)
  redis.call('HSET', msg, 'state', a[3], 'attempts', a[4], 'headers', a[5])
  redis.call('EXPIRE', msg, a[6])
  redis.call('LPUSH', mlog, a[7])
  redis.call('LTRIM', mlog, 0, kept_msg)
  redis.call('EXPIRE', mlog, a[6])
  redis.call('XADD', log, 'MAXLEN', '~', ARGV[5], '*', 'a', a[8])
  if everyone then redis.call('XADD', everyone, 'MAXLEN', '~', ARGV[6], '*', 'a', a[9]) end
  if a[10] ~= '' then redis.call('ZADD', due, a[11], a[10]) end
  if redis.call('EXISTS', sub) == 0 then return {'ok', '-1'} end
  local since = redis.call('HGET', sub, 'failing_since') or '0'
  if a[12] == '1' then
    if since ~= '0' then redis.call('HSET', sub, 'failing_since', '0') end
    return {'ok', '0'}
  end
  if (tonumber(since) or 0) > 0 then return {'ok', since} end
  redis.call('HSET', sub, 'failing_since', a[13])
  return {'ok', a[13]}
end
local out = {}
for i = 0, n - 1 do
  out[i + 1] = record({unpack(KEYS, i * 7 + 1, i * 7 + 7)}, {unpack(ARGV, 7 + i * 13, 19 + i * 13)})
end
return out
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
        # Calls of a script that takes many at once, by (script, group): each one call's keys
        # and args with its future, and what the group's call starts and ends with.
        self._grouped: dict[tuple[int, str], Grouped] = {}
        self._flushing: asyncio.Task[None] | None = None

    async def script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's reply to (keys, args), with the others of its round trip."""
        return await self._run((script, keys, args))

    async def command(self, *args: Any) -> Any:
        """A command's reply, with the others of its round trip."""
        return await self._run((None, (), args))

    async def grouped(
        self,
        script: AsyncScript,
        group: str,
        keys: Sequence[Any],
        args: Sequence[Any],
        shared: tuple[Sequence[Any], Sequence[Any]],
    ) -> Any:
        """The reply to one (keys, args) of a script that takes many: the calls of one `group`
        (one owner: one hash tag) in a round trip are one call, `shared` args first and
        `shared` keys last; its reply is the list of theirs, in order."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        found = self._grouped.get((id(script), group))
        if found is None:
            found = self._grouped[(id(script), group)] = Grouped(script, shared)
        found.keys.extend(keys)
        found.args.extend(args)
        found.futures.append(future)
        self._start()
        return await future

    async def _run(self, call: Call) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls.append((call, future))
        self._start()
        return await future

    def _start(self) -> None:
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # the calls made in the same turn of the loop go along
            while self._calls or self._grouped:
                batch, self._calls = self._calls, []
                for grouped in self._grouped.values():
                    batch.append((grouped.call(), grouped.future()))
                self._grouped = {}
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
            for grouped in self._grouped.values():
                for future in grouped.futures:
                    future.cancel()
            self._calls.clear()
            self._grouped = {}

    async def close(self) -> None:
        """Stop the round trip on its way (its callers are cancelled with it)."""
        if self._flushing is not None:
            self._flushing.cancel()
            await asyncio.gather(self._flushing, return_exceptions=True)


class Grouped:
    """The calls of one group of a script that takes many at once, gathered for one call."""

    def __init__(self, script: AsyncScript, shared: tuple[Sequence[Any], Sequence[Any]]) -> None:
        self.script, self.shared = script, shared
        self.keys: list[Any] = []
        self.args: list[Any] = []
        self.futures: list[asyncio.Future[Any]] = []

    def call(self) -> Call:
        """The one call: every call's keys then the shared ones; the shared args then every
        call's."""
        shared_keys, shared_args = self.shared
        return (self.script, [*self.keys, *shared_keys], [*shared_args, *self.args])

    def future(self) -> asyncio.Future[Any]:
        """A future whose result, the list of replies, is handed out to each call's future
        (and whose error to each)."""
        whole: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        futures = self.futures

        def hand_out(done: asyncio.Future[Any]) -> None:
            for n, future in enumerate(futures):
                if future.done():
                    continue
                if done.cancelled():
                    future.cancel()
                elif done.exception() is not None:
                    future.set_exception(done.exception())  # type: ignore[arg-type]
                else:
                    future.set_result(done.result()[n])

        whole.add_done_callback(hand_out)
        return whole


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


WHOLE = ("body", "sub", "type", "created_ms")  # a message without these cannot be sent


def pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """A flat [field, value, ...] reply as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def message_fields(flat: list[bytes]) -> dict[str, bytes]:
    """A message hash read as a flat [field, value, ...] reply, by field name."""
    return {k.decode(): v for k, v in zip(flat[::2], flat[1::2], strict=True)}
