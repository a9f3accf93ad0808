"""What the sidecar remembers about a 202'd call, in Redis with a TTL, so any replica (webhook
fan-out, long-poll) can learn its route, owner and Location."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis
from yarl import URL

from .keys import call_key, location_key

WRITE_BATCH = 1000  # records per pipeline

State = Literal["pending", "succeeded", "failed"]


@dataclass(frozen=True, slots=True)
class TrackedCall:
    """One call the upstream answered 202."""

    correlation_id: str
    route: str
    tenant: str | None  # keyed hash of the caller's credential, None when it sent none
    location: str | None  # client-facing Location
    upstream_location: str | None  # absolute upstream URL of the Location
    state: State = "pending"
    created_at: float = 0.0


def location_lookup_path(url: str | URL) -> str:
    """The part of a Location used to find its call: raw path and query."""
    return URL(url, encoded=True).raw_path_qs if isinstance(url, str) else url.raw_path_qs


class CallTracker:
    """Reads and writes tracked calls under `{prefix}:call:*` and `{prefix}:loc:*`."""

    def __init__(self, redis: Redis, prefix: str, ttl_s: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_ms = int(ttl_s * 1000)
        self._queue: list[tuple[TrackedCall, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, call: TrackedCall) -> None:
        """Remember a call. Concurrent records are written together ("group commit"): while
        one pipeline is in flight the next calls queue, and the whole queue goes in the next
        one, so a burst of 10,000 calls needs a few round trips and connections, not 10,000."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieve)  # a waiter that gave up leaves no "never retrieved"
        self._queue.append((call, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        await asyncio.shield(done)  # a caller that gives up does not cancel the others' write

    async def _write_queued(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:WRITE_BATCH], self._queue[WRITE_BATCH:]
            try:
                await self._write([call for call, _ in batch])
            except Exception as exc:  # every waiter learns it; the writer goes on
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _write(self, calls: list[TrackedCall]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for call in calls:
                key = call_key(self.prefix, call.correlation_id)
                mapping = {
                    "route": call.route,
                    "tenant": call.tenant or "",
                    "location": call.location or "",
                    "upstream_location": call.upstream_location or "",
                    "state": call.state,
                    "created_at": repr(call.created_at or time.time()),
                }
                pipe.hset(key, mapping=mapping)
                pipe.pexpire(key, self.ttl_ms)
                if call.upstream_location:
                    path = location_lookup_path(call.upstream_location)
                    pipe.set(location_key(self.prefix, path), call.correlation_id, px=self.ttl_ms)
            await pipe.execute()

    async def get(self, correlation_id: str) -> TrackedCall | None:
        """The tracked call, or None when unknown or expired."""
        raw = await self.redis.hgetall(call_key(self.prefix, correlation_id))  # type: ignore[misc]
        return _decode(correlation_id, raw)

    async def get_many(self, correlation_ids: list[str]) -> list[TrackedCall | None]:
        """Several tracked calls in one round trip, in order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in correlation_ids:
                pipe.hgetall(call_key(self.prefix, cid))
            rows = await pipe.execute()
        return [_decode(cid, raw) for cid, raw in zip(correlation_ids, rows, strict=True)]

    async def by_location(self, url: str | URL) -> TrackedCall | None:
        """The call whose upstream Location has this path and query, if tracked."""
        cid = await self.redis.get(location_key(self.prefix, location_lookup_path(url)))
        return await self.get(cid.decode()) if cid else None

    async def finish(self, correlation_id: str, state: State) -> bool:
        """Mark a tracked call done; True only for the first caller (deduplicates completions)."""
        key = call_key(self.prefix, correlation_id)
        first = await self.redis.hsetnx(key, "finished", state)  # type: ignore[misc]
        if first:
            await self.redis.hset(key, "state", state)  # type: ignore[misc]
        return bool(first)


def _decode(correlation_id: str, raw: dict[bytes, bytes]) -> TrackedCall | None:
    if not raw:
        return None
    f = {k.decode(): v.decode() for k, v in raw.items()}
    state = f.get("state", "pending")
    return TrackedCall(
        correlation_id=correlation_id,
        route=f.get("route", ""),
        tenant=f.get("tenant") or None,
        location=f.get("location") or None,
        upstream_location=f.get("upstream_location") or None,
        state="succeeded" if state == "succeeded" else "failed" if state == "failed" else "pending",
        created_at=float(f.get("created_at") or 0),
    )


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
