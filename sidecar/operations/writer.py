"""Writing what happens to operations after their intake: events, outcomes, and the holds of
Idempotency-Keys, group-committed so that no call pays a round trip of its own for them.

A call's closing write (its last events, its outcome) is queued when it answers and written
with the other calls' in the next batch; nobody waits for it on the call path. The completion
dispatcher and the pollers record outcomes learnt after a call was answered through the same
writer. An outcome is written once (the first to record it wins; the other writers' events that
only the first should add, like `completed`, are then left out). An update never creates an
operation unless it says so (`create`, for a call that had no tracking record: then afresh):
a completion for a call the sidecar never saw leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..completions.completion import Completion
from ..connections import REDIS_FAULTS, Client, is_cluster, register, run_scripts
from ..keys import idempotency_key, operation_events_key, operation_key
from ..logs import Every
from ..timeline import COMPLETED, LUA_APPEND, Event, event, events_spec
from ..tracking import GroupCommit
from .records import Outcome

logger = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 10.0
UPDATE_CHUNK = 32  # updates per script on one server (as tracking records)

# KEYS, for each update: the operation, its events. ARGV, for each: its spec (JSON: c fields to
# create it with, t its ttl_ms; o outcome fields; e/m events and flags; fe/fm events and flags
# added only by the writer whose outcome is recorded; et the events' ttl_ms), the outcome's
# data, its body. One reply per update: 0 nothing written (no such operation), 1 written, 2
# written with its outcome (the first).
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
  if spec.c then
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
  if redis.call('EXISTS', op) == 1 then
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

    def spec(self) -> tuple[bytes, bytes, bytes]:
        """The script's arguments for this update."""
        events, flags = events_spec(self.events)
        spec: dict[str, Any] = {"e": events, "m": flags, "et": self.events_ttl_ms}
        if self.create is not None:
            spec.update(c=self.create, t=self.ttl_ms)
        data = body = b""
        if self.outcome is not None:
            first, first_flags = events_spec(self.first_events)
            spec.update(o=self.outcome.fields(), fe=first, fm=first_flags)
            data, body = self.outcome.data or b"", self.outcome.body or b""
        return orjson.dumps(spec), data, body


def completed(
    correlation_id: str,
    completion: Completion,
    at_s: float,
    *,
    max_result: int,
    events_ttl_ms: int,
    resource: tuple[bytes, str | None] | None = None,
) -> Update:
    """The update recording a completion learnt outside the held call (the dispatcher, a
    poller): its outcome and, if it is the first to record one, the `completed` event."""
    outcome = Outcome.of_completion(completion, at_s, resource)
    first = event(
        COMPLETED,
        at_s,
        source=completion.source,
        event_type=completion.event_type,
        state=completion.status,
    )
    return Update(
        correlation_id,
        outcome=outcome.bounded(max_result),
        first_events=[first],
        events_ttl_ms=events_ttl_ms,
    )


_failed_log = Every()


class OperationWriter:
    """Queues updates and writes them in batches (`soon`: nobody waits on the call path)."""

    def __init__(self, redis: Client, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._update = register(redis, _UPDATE)
        self._idem = register(redis, _IDEM)
        self._batches: GroupCommit[Update, int] = GroupCommit(self._write, WRITE_TIMEOUT_S)

    def soon(self, update: Update) -> asyncio.Future[int]:
        """Write `update` with the next batch; its future says what was written (see
        `_UPDATE`). A failure is logged (once a second at most), never raised to anyone."""
        written = self._batches.soon(update)
        written.add_done_callback(_log_failure)
        return written

    async def write(self, update: Update) -> int:
        """Write `update` with the next batch and wait for it."""
        return await asyncio.shield(self.soon(update))

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


def _log_failure(done: asyncio.Future[int]) -> None:
    if done.cancelled():
        return
    exc = done.exception()
    if exc is None:
        return
    if not isinstance(exc, (*REDIS_FAULTS, TimeoutError)):
        logger.error("operation update failed", exc_info=exc)
    elif _failed_log.ready():
        logger.warning(
            "operation updates not written (Redis fault); their timelines miss those steps",
            extra={"error": repr(exc), "since_last_line": _failed_log.take_skipped()},
        )
