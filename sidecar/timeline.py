"""What happened to one operation, step by step: the events of its timeline, how they are
encoded, and the Lua that appends them beside the writes they ride on.

An operation is a synchronised call, known by its correlation id. Its events live in a bounded
Redis list (`keys.operation_events_key`) beside its hash (`keys.operation_key`):

    received → forwarded → upstream_answered → held | fallback → completed → answered
    plus client_gone, long_poll, status_read, idempotent_attach, idempotent_replay; the
    webhook_attempt events are read from the message log when the timeline is shown.

No event costs a round trip of its own on the call path: the first ones ride the call's
tracking write (`Intake`, in the tracking script), the rest the call's closing write, group
committed with other calls' (`operations.writer`). The list is bounded: past `SOFT_CAP` events
only milestones are added (a retry storm of long-polls cannot push out "completed"), past
`HARD_CAP` none; what was left out is counted on the operation (`dropped`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from .timestamps import iso

RECEIVED: Final = "received"
FORWARDED: Final = "forwarded"
UPSTREAM_ANSWERED: Final = "upstream_answered"
HELD: Final = "held"
FALLBACK: Final = "fallback"
COMPLETED: Final = "completed"
ANSWERED: Final = "answered"
CLIENT_GONE: Final = "client_gone"
LONG_POLL: Final = "long_poll"
STATUS_READ: Final = "status_read"
IDEMPOTENT_ATTACH: Final = "idempotent_attach"
IDEMPOTENT_REPLAY: Final = "idempotent_replay"
WEBHOOK_ATTEMPT: Final = "webhook_attempt"

KINDS = (
    RECEIVED,
    FORWARDED,
    UPSTREAM_ANSWERED,
    HELD,
    FALLBACK,
    COMPLETED,
    ANSWERED,
    CLIENT_GONE,
    LONG_POLL,
    STATUS_READ,
    IDEMPOTENT_ATTACH,
    IDEMPOTENT_REPLAY,
    WEBHOOK_ATTEMPT,
)
# Steps every call has at most a few of; the others repeat as often as clients ask.
MILESTONES = frozenset({RECEIVED, FORWARDED, UPSTREAM_ANSWERED, HELD, FALLBACK, COMPLETED})
MILESTONES |= {ANSWERED, CLIENT_GONE}

SOFT_CAP = 64  # events kept of any kind
HARD_CAP = 100  # events kept at all (milestones past SOFT_CAP)
MAX_TEXT = 512  # characters of a text field (a path, a Location, a reason)

Event = dict[str, Any]


def event(kind: str, at_s: float, **fields: Any) -> Event:
    """One event at `at_s` (epoch seconds); fields that are None are left out. Text that came
    from outside (a path, a Location) is cut by the caller (`cut`)."""
    out: Event = {"k": kind, "t": int(at_s * 1000)}
    for name, value in fields.items():
        if value is not None:
            out[name] = value
    return out


def cut(text: str | None) -> str | None:
    """Text from a client or the API, at most `MAX_TEXT` characters."""
    return text if text is None or len(text) <= MAX_TEXT else text[:MAX_TEXT]


def decode_event(raw: bytes) -> Event | None:
    """A stored event as the API shows it (`at` as ISO 8601, `kind`); None when unreadable."""
    try:
        stored = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(stored, dict) or not isinstance(stored.get("t"), int | float):
        return None
    shown = {k: v for k, v in stored.items() if k not in ("k", "t")}
    return {"at": iso(stored["t"] / 1000), "at_ms": stored["t"], "kind": stored.get("k"), **shown}


# A Lua function appending `events` (decoded objects, re-encoded here) to the list `ev`, with
# their milestone flags `flags`, within the caps; counts what was left out on the hash `op`
# (which must exist); the list takes `ttl_ms` when it has none yet.
LUA_APPEND = f"""
local function append_events(op, ev, events, flags, ttl_ms)
  if events == nil or #events == 0 then return end
  local n = redis.call('LLEN', ev)
  local dropped = 0
  for i = 1, #events do
    if n < {HARD_CAP} and (n < {SOFT_CAP} or flags[i] == 1) then
      redis.call('RPUSH', ev, cjson.encode(events[i]))
      n = n + 1
    else
      dropped = dropped + 1
    end
  end
  if dropped > 0 then redis.call('HINCRBY', op, 'dropped', dropped) end
  redis.call('PEXPIRE', ev, ttl_ms, 'NX')
end
"""

# A Lua function writing an operation's hash and first events (`spec`: f fields, t ttl_ms,
# e events, m flags, et events' ttl_ms), with the 202's body (`blob`, '' for none), afresh.
LUA_INTAKE = (
    LUA_APPEND
    + """
local function intake(op, ev, spec, blob)
  -- An operation starts here: whatever an earlier call under this id left (its claim expired
  -- before its operation did) is not this one's.
  redis.call('DEL', op, ev)
  local flat = {}
  for name, value in pairs(spec.f) do
    flat[#flat + 1] = name
    flat[#flat + 1] = value
  end
  if blob ~= '' then
    flat[#flat + 1] = 'accepted_body'
    flat[#flat + 1] = blob
  end
  redis.call('HSET', op, unpack(flat))
  redis.call('PEXPIRE', op, spec.t)
  append_events(op, ev, spec.e, spec.m, spec.et)
end
"""
)

# A Lua function binding an Idempotency-Key (`<owner> <fingerprint> <lease> <cid>`) to its
# operation's correlation id, when `owner` still holds it.
LUA_BIND = """
local function bind(idem, owner, cid)
  local held = redis.call('GET', idem)
  if not held then return 0 end
  local o, f, l = string.match(held, '^(%S+) (%S+) (%S+)')
  if o ~= owner then return 0 end
  redis.call('SET', idem, o .. ' ' .. f .. ' ' .. l .. ' ' .. cid, 'KEEPTTL')
  return 1
end
"""


@dataclass(slots=True)  # not frozen: built for every call, where frozen init costs
class Intake:
    """What an operation writes with its call's tracking record: its hash, its first events,
    its status token (`respond.location: sidecar`) and the binding of its Idempotency-Key."""

    correlation_id: str
    fields: dict[str, str]
    events: list[Event]
    ttl_ms: int
    events_ttl_ms: int
    accepted_body: bytes = b""  # the 202's body, kept for retries that attach to the call
    token_digest: str | None = None  # SHA-256 of the status token
    token_value: str = ""  # what the token names: "<tenant or -> <correlation id>"
    token_ttl_ms: int = 0
    idem_digest: str | None = None  # the Idempotency-Key this call claimed
    idem_owner: str = ""

    @property
    def identity(self) -> str:
        """The operation's correlation id."""
        return self.correlation_id

    def spec(self) -> bytes:
        """The JSON the tracking script reads (see `LUA_INTAKE`). Its events are milestones
        (received, forwarded, upstream_answered, held or fallback)."""
        spec: dict[str, Any] = {
            "f": self.fields,
            "t": self.ttl_ms,
            "e": self.events,
            "m": [1] * len(self.events),
            "et": self.events_ttl_ms,
        }
        if self.token_digest is not None:
            spec.update(tk=1, tv=self.token_value, tt=self.token_ttl_ms)
        if self.idem_digest is not None:
            spec.update(io=self.idem_owner, ic=self.correlation_id)
        return orjson.dumps(spec)
