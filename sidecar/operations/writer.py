"""Writing what happens to operations after their intake: events, outcomes, and the holds of
Idempotency-Keys, group-committed so that no call pays a round trip of its own for them.

A call's closing write (its last events, its outcome) is queued when it answers and written
with the other calls' in the next batch, a few milliseconds later; nobody waits for it on the
call path. The completion
dispatcher and the pollers record outcomes learnt after a call was answered through the same
writer. An outcome is written once (the first to record it wins; the other writers' events that
only the first should add, like `completed`, are then left out). An update never creates an
operation unless it says so (`create`, for a call that had no tracking record: then afresh):
a completion for a call the sidecar never saw leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..connections import REDIS_FAULTS, Client, is_cluster, register, run_scripts
from ..keys import idempotency_key, operation_events_key, operation_key
from ..logs import Every
from ..timeline import COMPLETED, LUA_APPEND, Event
from .records import Outcome

logger = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 10.0
WRITE_BATCH = 1000  # updates per pipeline
UPDATE_CHUNK = 32  # updates per script on one server (as tracking records)
LINGER_S = 0.02  # how long the first update queued waits for others to join its batch

# KEYS, for each update: the operation, its events. ARGV, for each: its spec (JSON: c fields to
# create it with, t its ttl_ms; o outcome fields; e/m events and flags; fe/fm events and flags
# added only by the writer whose outcome is recorded; et the events' ttl_ms; w the id its
# completion carried, which the operation must wait on), the outcome's data, its body. One
# reply per update: 0 nothing written (no such operation, or not the one waiting on `w`), 1
# written, 2 written with its outcome (the first).
_UPDATE = (
    LUA_APPEND
    + """
local replies = {}
local k = 1
for a = 1, #ARGV, 3 do
  local op, ev = KEYS[k], KEYS[k + 1]
  k = k + 2
  local spec = cjson.decode(ARGV[a])
  local reply = 0
  local mine = true
  if spec.w and redis.call('HGET', op, 'wait_id') ~= spec.w then
    mine = false  -- a completion of another call than the one under this id now: not its
  end
  if mine and spec.c then
    -- A call that had no tracking record makes its operation here, afresh (an earlier call's
    -- under the same id, whose claim expired first, is not this one's).
    redis.call('DEL', op, ev)
    local flat = {}
    for name, value in pairs(spec.c) do
      flat[#flat + 1] = name
      flat[#flat + 1] = value
    end
    redis.call('HSET', op, unpack(flat))
    redis.call('PEXPIRE', op, spec.t)
  end
  if mine and redis.call('EXISTS', op) == 1 then
    reply = 1
    if spec.o then
      if redis.call('HSETNX', op, 'done', '1') == 1 then
        reply = 2
        local flat = {}
        for name, value in pairs(spec.o) do
          flat[#flat + 1] = name
          flat[#flat + 1] = value
        end
        if ARGV[a + 1] ~= '' then
          flat[#flat + 1] = 'data'
          flat[#flat + 1] = ARGV[a + 1]
        end
        if ARGV[a + 2] ~= '' then
          flat[#flat + 1] = 'body'
          flat[#flat + 1] = ARGV[a + 2]
        end
        redis.call('HSET', op, unpack(flat))
        append_events(op, ev, spec.fe, spec.fm, spec.et)
      elseif ARGV[a + 2] ~= '' and redis.call('HEXISTS', op, 'body') == 0
          and redis.call('HGET', op, 'kept') == '1' then
        -- the resource a held call fetched, for an outcome recorded without it
        redis.call('HSET', op, 'body', ARGV[a + 2], 'ctype', spec.o.ctype or '')
      end
    end
    append_events(op, ev, spec.e, spec.m, spec.et)
  end
  replies[#replies + 1] = reply
end
return replies
"""
)

# KEYS: an Idempotency-Key. ARGV: action (bind | release), its owner, the correlation id.
_IDEM = """
local held = redis.call('GET', KEYS[1])
if not held then return 0 end
local o, f, l = string.match(held, '^(%S+) (%S+) (%S+)')
if o ~= ARGV[2] then return 0 end
if ARGV[1] == 'release' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], o .. ' ' .. f .. ' ' .. l .. ' ' .. ARGV[3], 'KEEPTTL')
end
return 1
"""


@dataclass(slots=True)
class Update:
    """What one write adds to an operation."""

    correlation_id: str
    events: list[Event] = field(default_factory=list)
    outcome: Outcome | None = None
    first_events: list[Event] = field(default_factory=list)  # only with the outcome recorded
    create: dict[str, str] | None = None  # the operation's fields, when it may not exist yet
    ttl_ms: int = 0  # of an operation created here
    events_ttl_ms: int = 0
    idem_digest: str | None = None  # an Idempotency-Key held by the call: bound, or released
    idem_owner: str = ""
    release: bool = False
    wait_id: str | None = None  # a completion's id: only the operation waiting on it takes it
    routine: bool = False  # its events repeat (reads, retries): not milestones (see timeline)

    def spec(self) -> tuple[bytes, bytes, bytes]:
        """The script's arguments for this update."""
        flag = 0 if self.routine else 1
        spec: dict[str, Any] = {
            "e": self.events,
            "m": [flag] * len(self.events),
            "et": self.events_ttl_ms,
        }
        if self.wait_id is not None:
            spec["w"] = self.wait_id
        if self.create is not None:
            spec["c"], spec["t"] = self.create, self.ttl_ms
        data = body = b""
        if self.outcome is not None:
            spec["o"] = self.outcome.fields()
            spec["fe"], spec["fm"] = self.first_events, [1] * len(self.first_events)
            data, body = self.outcome.data or b"", self.outcome.body or b""
        return orjson.dumps(spec), data, body


def completed(
    correlation_id: str,
    wait_id: str,
    outcome: Outcome,
    *,
    max_result: int,
    events_ttl_ms: int,
) -> Update:
    """The update recording a completion learnt outside the held call (the dispatcher, a
    poller) on the operation waiting on `wait_id`: its outcome and, if it is the first to
    record one, the `completed` event."""
    first: Event = {"k": COMPLETED, "t": outcome.at_ms, "source": outcome.source}
    if outcome.event_type is not None:
        first["event_type"] = outcome.event_type
    first["state"] = outcome.state
    return Update(
        correlation_id,
        outcome=outcome.bounded(max_result),
        first_events=[first],
        events_ttl_ms=events_ttl_ms,
        wait_id=wait_id,
    )


_failed_log = Every()


class OperationWriter:
    """Queues updates and writes them in batches, a moment (`LINGER_S`) after the first one
    queued: the calls ending meanwhile share one round trip and one script per 32 updates.
    `later` when nobody needs to know (a call's closing write), `soon` for a future."""

    def __init__(self, redis: Client, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._update = register(redis, _UPDATE)
        self._idem = register(redis, _IDEM)
        self._queue: list[tuple[Update, asyncio.Future[int] | None]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def later(self, update: Update) -> None:
        """Write `update` with the next batch; a failure is logged (once a second at most)."""
        self._queue.append((update, None))
        self._wake()

    def soon(self, update: Update) -> asyncio.Future[int]:
        """Write `update` with the next batch; its future says what was written (see
        `_UPDATE`) or raises what the write raised."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((update, done))
        self._wake()
        return done

    async def write(self, update: Update) -> int:
        """Write `update` with the next batch and wait for it."""
        return await asyncio.shield(self.soon(update))

    async def close(self) -> None:
        """Write what is queued (within `WRITE_TIMEOUT_S`) and stop: at the app's cleanup,
        after the calls and background loops that queue updates have stopped."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing is not None:
            await asyncio.wait({self._flushing}, timeout=WRITE_TIMEOUT_S)
        while self._queue:
            await self._flush()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _wake(self) -> None:
        if self._timer is None and (self._flushing is None or self._flushing.done()):
            self._timer = asyncio.get_running_loop().call_later(LINGER_S, self._flush_now)

    def _flush_now(self) -> None:
        self._timer = None
        # A context of its own: the writer is nobody's call (its log lines no call's trace).
        self._flushing = asyncio.create_task(self._flush(), context=contextvars.Context())

    async def _flush(self) -> None:
        """Write one batch; what was queued meanwhile waits for the next linger (so a steady
        stream of calls makes a few large batches, not many small ones)."""
        batch, self._queue = self._queue[:WRITE_BATCH], self._queue[WRITE_BATCH:]
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                written = await self._write([update for update, _ in batch])
        except Exception as exc:  # every waiter learns it; the writer goes on
            _log_failure(exc)
            for _, done in batch:
                if done is not None and not done.done():
                    done.set_exception(exc)
                    done.exception()  # retrieved: a waiter that gave up leaves no warning
        else:
            for (_, done), result in zip(batch, written, strict=True):
                if done is not None and not done.done():
                    done.set_result(result)
        finally:
            self._flushing = None
            if self._queue:
                self._wake()

    async def _write(self, updates: list[Update]) -> list[int]:
        specs = [(self._keys(u), u.spec()) for u in updates]
        chunk = 1 if is_cluster(self.redis) else UPDATE_CHUNK
        calls = []
        for n in range(0, len(specs), chunk):
            part = specs[n : n + chunk]
            calls.append(
                ([key for keys, _ in part for key in keys], [a for _, args in part for a in args])
            )
        replies = await run_scripts(self.redis, self._update, calls)
        written = [int(r) for reply in replies for r in reply]
        holds = [
            (
                [idempotency_key(self.prefix, u.idem_digest)],
                ["release" if u.release else "bind", u.idem_owner, u.correlation_id],
            )
            for u in updates
            if u.idem_digest is not None
        ]
        await run_scripts(self.redis, self._idem, holds)
        return written

    def _keys(self, update: Update) -> list[str]:
        return [
            operation_key(self.prefix, update.correlation_id),
            operation_events_key(self.prefix, update.correlation_id),
        ]


def _log_failure(exc: BaseException) -> None:
    if not isinstance(exc, (*REDIS_FAULTS, TimeoutError)):
        logger.error("operation update failed", exc_info=exc)
    elif _failed_log.ready():
        logger.warning(
            "operation updates not written (Redis fault); their timelines miss those steps",
            extra={"error": repr(exc), "since_last_line": _failed_log.take_skipped()},
        )
