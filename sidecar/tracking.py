"""What the sidecar remembers about a 202'd call, in Redis with a TTL, so any replica (webhook
fan-out, long-poll) can learn its route, owner and Location; and who owns the ids calls wait on.

A call waits under one id (`wait_id`: its correlation id, or the operation id its 202 named).
That id belongs to the first call that claims it (`{prefix}:claim:{id}`, SET NX with the
tracking TTL), and only that call writes its record, once: a later call with the same id can
neither wait on it nor overwrite who it belongs to.

Writes are group-committed: while one pipeline is in flight the next requests queue, and the
whole queue goes in the next one, so a burst of 10,000 calls needs a few round trips, not 10,000.
An operation's first timeline events, its status token and the binding of its Idempotency-Key
ride the same script (`timeline.Intake`); claims of Idempotency-Keys ride the claims' pipeline.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import orjson
from yarl import URL

from .connections import Client, is_cluster, register, run_scripts
from .keys import (
    call_key,
    claim_key,
    idempotency_key,
    location_key,
    operation_events_key,
    operation_key,
    status_token_key,
)
from .timeline import LUA_BIND, LUA_INTAKE, Intake

WRITE_BATCH = 1000  # requests per pipeline
RECORD_CHUNK = 32  # records per script on one server: each holds Redis well under 1 ms

State = Literal["pending", "succeeded", "failed"]
T = TypeVar("T")
R = TypeVar("R")

# KEYS, for each call: its claim, its record and, when it has one, its Location's lookup key;
# with an intake, its operation's hash and events, then its status token's key and its
# Idempotency-Key when it has them.
# ARGV: ttl_ms, then for each call: its token (its correlation id), its fields as a JSON object,
# the id its Location leads to ('' when no lookup key follows), its intake (JSON, '' for none)
# and the 202's body kept with it ('' for none). A call's record is written when its id is
# unclaimed (claimed now) or claimed by this very call, and only if no record exists yet; its
# Location then leads to it, unless it leads to another call already; its status token only
# names a call so recorded. An id claimed by another call marks that call's record `ambiguous`.
# One reply per call, in order: 1 when written, 0 when the id belongs to another call.
# On a cluster, one call per script without its lookup key or intake (keys of one script share
# a slot); on one server up to RECORD_CHUNK calls, so a burst costs one command per chunk.
_RECORD = (
    LUA_INTAKE
    + LUA_BIND
    + """
local ttl = ARGV[1]
local written = {}
local k = 1
for a = 2, #ARGV, 5 do
  local claim, record, token, leads_to = KEYS[k], KEYS[k + 1], ARGV[a], ARGV[a + 2]
  k = k + 2
  local lookup = nil
  if leads_to ~= '' then
    lookup = KEYS[k]
    k = k + 1
  end
  local ok = 1
  local owner = redis.call('GET', claim)
  if not owner then
    redis.call('SET', claim, token, 'PX', ttl)
  elseif owner ~= token then
    ok = 0
    -- Another call waits on this id too: its completions cannot be told apart, so the record
    -- says so and no completion by this id is delivered to either call's client.
    if redis.call('EXISTS', record) == 1 then redis.call('HSET', record, 'ambiguous', '1') end
  end
  if ok == 1 and redis.call('EXISTS', record) == 1 then ok = 0 end
  if ok == 1 then
    local flat = {}
    for field, value in pairs(cjson.decode(ARGV[a + 1])) do
      flat[#flat + 1] = field
      flat[#flat + 1] = value
    end
    redis.call('HSET', record, unpack(flat))
    redis.call('PEXPIRE', record, ttl)
    if lookup then redis.call('SET', lookup, leads_to, 'NX', 'PX', ttl) end
  end
  if ARGV[a + 3] ~= '' then
    local spec = cjson.decode(ARGV[a + 3])
    intake(KEYS[k], KEYS[k + 1], spec, ARGV[a + 4])
    k = k + 2
    if spec.tk then
      if ok == 1 then redis.call('SET', KEYS[k], spec.tv, 'PX', spec.tt) end
      k = k + 1
    end
    if spec.io then
      bind(KEYS[k], spec.io, spec.ic)
      k = k + 1
    end
  end
  written[#written + 1] = ok
end
return written
"""
)

# KEYS: operation, its events. ARGV: intake (JSON), the 202's body. A cluster's intake, in the
# operation's own slot.
_INTAKE = (
    LUA_INTAKE
    + """
intake(KEYS[1], KEYS[2], cjson.decode(ARGV[1]), ARGV[2])
return 1
"""
)

# KEYS: an Idempotency-Key. ARGV: its owner, the correlation id. A cluster's binding.
_BIND = (
    LUA_BIND
    + """
return bind(KEYS[1], ARGV[1], ARGV[2])
"""
)

# KEYS: call. ARGV: state. Marks a tracked call done once; never creates a record.
_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'finished', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class TrackedCall:
    """One call the upstream answered 202."""

    wait_id: str  # the id its completion carries (the record's key)
    route: str
    tenant: str | None  # keyed hash of the caller's credential, None when it sent none
    location: str | None  # client-facing Location
    upstream_location: str | None  # absolute upstream URL of the Location
    state: State = "pending"
    created_at: float = 0.0
    correlation_id: str = ""  # the call's identity; empty means the same as wait_id
    traceparent: str = ""  # the sidecar's span of the call: its deliveries are its children
    ambiguous: bool = False  # another call waits on the same id: completions by it are nobody's
    intake: Intake | None = None  # its operation's first writes, made with the record

    @property
    def identity(self) -> str:
        """The call's correlation id."""
        return self.correlation_id or self.wait_id

    @property
    def operation_id(self) -> str | None:
        """The id the completion was matched on, when it is not the correlation id."""
        return self.wait_id if self.wait_id != self.identity else None


@dataclass(frozen=True, slots=True)
class Claim:
    """A `SET key value NX PX ttl_ms` made before a call is forwarded (a correlation id, an
    Idempotency-Key); with `get`, the reply is the value already there (None: claimed now)."""

    key: str
    value: str
    ttl_ms: int
    get: bool = False


# An absolute URL of a host name or address (no user, no IPv6 literal) and a plain path: its
# path and query are the rest of the text as it is, no parse needed.
_PLAIN_URL = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*://[A-Za-z0-9.\-]+(?::[0-9]{1,5})?(/[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*)"
)


def location_lookup_path(url: str | URL) -> str:
    """The part of a Location used to find its call: raw path and query."""
    if isinstance(url, URL):
        return url.raw_path_qs
    plain = _PLAIN_URL.fullmatch(url)
    if plain is not None:
        path = plain.group(1)
        if "/." not in path and not path.startswith("//") and not path.endswith("?"):
            return path
    return URL(url, encoded=True).raw_path_qs


class GroupCommit(Generic[T, R]):
    """Runs `write` over every request queued meanwhile, one batch at a time, each batch within
    `timeout_s` (its requests then fail with TimeoutError): callers need no timer of their own.
    """

    def __init__(self, write: Callable[[list[T]], Awaitable[list[R]]], timeout_s: float) -> None:
        self._write = write
        self.timeout_s = timeout_s
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    def soon(self, item: T) -> asyncio.Future[R]:
        """A future of the result of writing `item` (with the others queued alongside). A
        caller that stops waiting for it does not cancel anyone's write."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieve)  # a waiter that gave up leaves no "never retrieved"
        self._queue.append((item, done))
        if self._writer is None or self._writer.done():
            # A context of its own: the writer is nobody's call (its log lines no call's trace).
            self._writer = asyncio.create_task(self._drain(), context=contextvars.Context())
        return done

    async def submit(self, item: T) -> R:
        """The result of writing `item`."""
        return await asyncio.shield(self.soon(item))

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:WRITE_BATCH], self._queue[WRITE_BATCH:]
            try:
                async with asyncio.timeout(self.timeout_s):
                    results = await self._write([item for item, _ in batch])
            except Exception as exc:  # every waiter learns it; the writer goes on
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (_, done), result in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(result)


class CallTracker:
    """Claims ids and reads and writes tracked calls (`{prefix}:claim|call|loc:*`)."""

    def __init__(
        self,
        redis: Client,
        prefix: str,
        ttl_s: float,
        *,
        claim_timeout_s: float = 2.0,
        record_timeout_s: float = 10.0,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_ms = int(ttl_s * 1000)
        self._record_script = register(redis, _RECORD)
        self._finish_script = register(redis, _FINISH)
        self._intake_script = register(redis, _INTAKE)
        self._bind_script = register(redis, _BIND)
        self._claims: GroupCommit[list[Claim], list[Any]] = GroupCommit(
            self._claim_batch, claim_timeout_s
        )
        self._records: GroupCommit[TrackedCall, bool] = GroupCommit(
            self._record_batch, record_timeout_s
        )

    async def claim(self, wait_id: str, token: str) -> bool:
        """Claim `wait_id` for the call `token` names; False when another call holds it."""
        (reply,) = await self._claims.submit([self.id_claim(wait_id, token)])
        return bool(reply)

    def id_claim(self, wait_id: str, token: str) -> Claim:
        """The claim of an id a call waits on (see `claim`)."""
        return Claim(claim_key(self.prefix, wait_id), token, self.ttl_ms)

    async def claim_all(self, claims: list[Claim]) -> list[Any]:
        """Make several claims of one call in one round trip (shared with other calls'): each
        reply is True/None for a plain claim, None/the value held for one with `get`."""
        return await self._claims.submit(claims)

    async def record(self, call: TrackedCall) -> bool:
        """Write a call's record once; False when its id belongs to another call (or it was
        written already). The id is claimed for the call if nobody holds it."""
        return await self._records.submit(call)

    def record_soon(self, call: TrackedCall) -> asyncio.Future[bool]:
        """`record` as a future: no task of its own per call."""
        return self._records.soon(call)

    async def _claim_batch(self, batch: list[list[Claim]]) -> list[list[Any]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for claims in batch:
                for c in claims:
                    pipe.set(c.key, c.value, nx=True, px=c.ttl_ms, get=c.get)
            replies = iter(await pipe.execute())
        return [[next(replies) for _ in claims] for claims in batch]

    async def _record_batch(self, calls: list[TrackedCall]) -> list[bool]:
        cluster = is_cluster(self.redis)
        if cluster:  # first, so a record found by the dispatcher has its operation beside it
            await self._write_intakes([c.intake for c in calls if c.intake is not None])
        items = [self._record_item(call, in_one=not cluster) for call in calls]
        chunk = 1 if cluster else RECORD_CHUNK
        batch = []
        for n in range(0, len(items), chunk):
            part = items[n : n + chunk]
            keys = [key for keys, _ in part for key in keys]
            batch.append((keys, [self.ttl_ms, *(arg for _, args in part for arg in args)]))
        replies = await run_scripts(self.redis, self._record_script, batch)
        written = [bool(ok) for reply in replies for ok in reply]
        if cluster:  # the lookup keys live in slots of their own: written after the records
            await self._write_lookups(
                [c for c, ok in zip(calls, written, strict=True) if ok and c.upstream_location]
            )
            await self._write_tokens(
                [c.intake for c, ok in zip(calls, written, strict=True) if ok and c.intake]
            )
        return written

    async def _write_intakes(self, intakes: list[Intake]) -> None:
        """A cluster's intakes: each operation in its slot, then each Idempotency-Key in its."""
        if not intakes:
            return
        await run_scripts(
            self.redis,
            self._intake_script,
            [(self._intake_keys(i), [i.spec(), i.accepted_body]) for i in intakes],
        )
        binds = [i for i in intakes if i.idem_digest is not None]
        await run_scripts(
            self.redis,
            self._bind_script,
            [
                ([idempotency_key(self.prefix, i.idem_digest or "")], [i.idem_owner, i.identity])
                for i in binds
            ],
        )

    async def _write_tokens(self, intakes: list[Intake]) -> None:
        """A cluster's status tokens, of calls whose records were written."""
        tokens = [i for i in intakes if i.token_digest is not None]
        if not tokens:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in tokens:
                key = status_token_key(self.prefix, i.token_digest or "")
                pipe.set(key, i.token_value, px=i.token_ttl_ms)
            await pipe.execute()

    def _intake_keys(self, intake: Intake) -> list[str]:
        return [
            operation_key(self.prefix, intake.identity),
            operation_events_key(self.prefix, intake.identity),
        ]

    async def _write_lookups(self, located: list[TrackedCall]) -> None:
        if not located:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for call in located:
                key = self._lookup_key(call.upstream_location or "")
                pipe.set(key, call.wait_id, nx=True, px=self.ttl_ms)
            await pipe.execute()

    def _record_item(self, call: TrackedCall, *, in_one: bool) -> tuple[list[str], list[Any]]:
        """One call's keys and arguments of the record script (`in_one`: with its lookup key
        and intake, on one server)."""
        fields = {
            "route": call.route,
            "tenant": call.tenant or "",
            "location": call.location or "",
            "upstream_location": call.upstream_location or "",
            "state": call.state,
            "created_at": repr(call.created_at or time.time()),
            "correlation_id": call.identity,
            "traceparent": call.traceparent,
        }
        keys = [claim_key(self.prefix, call.wait_id), call_key(self.prefix, call.wait_id)]
        leads_to = ""
        if in_one and call.upstream_location:
            keys.append(self._lookup_key(call.upstream_location))
            leads_to = call.wait_id
        intake = call.intake if in_one else None
        if intake is None:
            return keys, [call.identity, orjson.dumps(fields), leads_to, "", ""]
        keys += self._intake_keys(intake)
        if intake.token_digest is not None:
            keys.append(status_token_key(self.prefix, intake.token_digest))
        if intake.idem_digest is not None:
            keys.append(idempotency_key(self.prefix, intake.idem_digest))
        args = [call.identity, orjson.dumps(fields), leads_to, intake.spec(), intake.accepted_body]
        return keys, args

    def _lookup_key(self, upstream_location: str) -> str:
        return location_key(self.prefix, location_lookup_path(upstream_location))

    async def get(self, wait_id: str) -> TrackedCall | None:
        """The tracked call, or None when unknown or expired."""
        raw = await self.redis.hgetall(call_key(self.prefix, wait_id))  # type: ignore[misc]
        return _decode(wait_id, raw)

    async def get_many(self, wait_ids: list[str]) -> list[TrackedCall | None]:
        """Several tracked calls in one round trip, in order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for wait_id in wait_ids:
                pipe.hgetall(call_key(self.prefix, wait_id))
            rows = await pipe.execute()
        return [_decode(wid, raw) for wid, raw in zip(wait_ids, rows, strict=True)]

    async def by_location(self, url: str | URL) -> TrackedCall | None:
        """The call whose upstream Location has this path and query, if tracked."""
        wait_id = await self.redis.get(location_key(self.prefix, location_lookup_path(url)))
        return await self.get(wait_id.decode()) if wait_id else None

    async def finish(self, wait_id: str, state: State) -> bool:
        """Mark a tracked call done; True only for the first caller (deduplicates completions).
        An untracked id is left alone (no record is created for it)."""
        return bool(await self._finish_script(keys=[call_key(self.prefix, wait_id)], args=[state]))


def _decode(wait_id: str, raw: dict[bytes, bytes]) -> TrackedCall | None:
    if not raw:
        return None
    f = {k.decode(): v.decode() for k, v in raw.items()}
    state = f.get("state", "pending")
    return TrackedCall(
        wait_id=wait_id,
        route=f.get("route", ""),
        tenant=f.get("tenant") or None,
        location=f.get("location") or None,
        upstream_location=f.get("upstream_location") or None,
        state="succeeded" if state == "succeeded" else "failed" if state == "failed" else "pending",
        created_at=float(f.get("created_at") or 0),
        correlation_id=f.get("correlation_id", ""),
        traceparent=f.get("traceparent", ""),
        ambiguous=f.get("ambiguous") == "1",
    )


def _retrieve(future: asyncio.Future[R]) -> None:
    if not future.cancelled():
        future.exception()
