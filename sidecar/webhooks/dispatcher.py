"""The dispatcher: reads every completion stream through one consumer group and fans out.

Each event is dispatched once across replicas; a crashed replica's pending entries are claimed
(XAUTOCLAIM) by another. An event whose call is not tracked yet (it can beat the 202) stays
pending for `UNTRACKED_GRACE_S`, then goes to operator-owned subscriptions only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ..completion import MalformedEvent, Status, StreamEvent, classify, decode_for
from ..config import Route, Settings
from ..state import Runtime
from ..tasks import checkpoint
from ..tracking import CallTracker
from .fanout import fan_out
from .outbox import Outbox, group_lost
from .store import SubscriptionStore

logger = logging.getLogger(__name__)

UNTRACKED_GRACE_S = 4.0
RETRY_PENDING_S = 0.1
CLAIM_IDLE_S = 15.0  # longer than the grace: an entry being retried here is never stolen
BLOCK_MS = 1000


def group_name(prefix: str) -> str:
    """The consumer group reading the completion streams."""
    return f"{prefix}:webhooks"


@dataclass(slots=True)
class Pending:
    """An event waiting for its tracked call."""

    stream: str
    entry_id: str
    route: Route
    status: Status
    event: StreamEvent
    first_seen: float


class Dispatcher:
    """Turns stream completions into outbox messages."""

    def __init__(
        self,
        redis: Redis,
        runtime: Runtime,
        store: SubscriptionStore,
        outbox: Outbox,
        consumer: str,
    ) -> None:
        self.redis, self.runtime, self.store, self.outbox = redis, runtime, store, outbox
        self.consumer = consumer
        self._pending: dict[tuple[str, str], Pending] = {}
        self._groups: set[str] = set()
        self._last_claim = 0.0

    @property
    def settings(self) -> Settings:
        """The live config."""
        return self.runtime.settings

    async def _ensure(self, stream: str, start: str = "$") -> None:
        try:
            await self.redis.xgroup_create(
                stream, group_name(self.settings.key_prefix), id=start, mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    async def ensure_groups(self) -> None:
        """Create the group on every completion stream (at `$`: from now on) unless it exists."""
        for stream in self.settings.stream_keys:
            await self._ensure(stream)

    async def run_once(self) -> None:
        """One read (or claim) and dispatch pass."""
        streams = self.settings.stream_keys
        if not streams:
            await asyncio.sleep(1.0)
            return
        for stream in streams:
            if stream not in self._groups:
                await self._ensure(stream)
        group = group_name(self.settings.key_prefix)
        try:
            entries = await self._read(streams, group)
        except ResponseError as exc:
            if not group_lost(exc):
                raise
            logger.info("dispatcher group missing (Redis restarted?); recreating")
            for stream in streams:
                await self._ensure(stream, "0")
            return
        for stream, entry_id, fields in entries:
            await self._handle(stream, entry_id, fields)
        await self._retry_pending()

    async def _read(self, streams: list[str], group: str) -> list[tuple[str, str, Any]]:
        out: list[tuple[str, str, Any]] = []
        if time.monotonic() - self._last_claim > CLAIM_IDLE_S / 3:
            self._last_claim = time.monotonic()
            for stream in streams:
                reply = await self.redis.xautoclaim(
                    stream, group, self.consumer, int(CLAIM_IDLE_S * 1000), count=100
                )
                out += [(stream, e.decode(), f) for e, f in reply[1] if f]
        block = int(RETRY_PENDING_S * 1000) if self._pending else BLOCK_MS
        reply = await self.redis.xreadgroup(
            group, self.consumer, dict.fromkeys(streams, ">"), count=200, block=block
        )
        for stream, items in reply or []:
            out += [(stream.decode(), e.decode(), f) for e, f in items]
        return out

    def _match(self, stream: str, entry_id: str, fields: Any) -> tuple[Route, Status, StreamEvent]:
        malformed: MalformedEvent | None = None
        for route in self.settings.routes:
            spec = route.wait.stream if route.wait else None
            if spec is None or spec.key != stream:
                continue
            try:
                event = decode_for(stream, entry_id, fields, spec)
            except MalformedEvent as exc:
                malformed = exc
                continue
            status = classify(event, spec)
            if status is not None:
                return route, status, event
        raise malformed or LookupError("no route uses this event type")

    async def _handle(self, stream: str, entry_id: str, fields: Any) -> None:
        try:
            route, status, event = self._match(stream, entry_id, fields)
        except MalformedEvent as exc:
            logger.warning(
                "malformed completion event",
                extra={"stream": stream, "entry": entry_id, "error": str(exc)},
            )
            await self._ack(stream, entry_id)
            return
        except LookupError:
            await self._ack(stream, entry_id)
            return
        self._pending[(stream, entry_id)] = Pending(
            stream, entry_id, route, status, event, time.monotonic()
        )

    async def _retry_pending(self) -> None:
        tracker = CallTracker(self.redis, self.settings.key_prefix, self.settings.tracking_ttl)
        for key, item in list(self._pending.items()):
            tracked = await tracker.get(item.event.correlation_id)
            expired = time.monotonic() - item.first_seen > UNTRACKED_GRACE_S
            if tracked is None and not expired:
                continue
            completed_at = int(item.entry_id.split("-")[0]) / 1000
            count = await fan_out(
                self.store,
                self.outbox,
                item.route,
                item.status,
                item.event.data,
                item.event.correlation_id,
                tracked,
                completed_at,
                f"{item.stream}/{item.entry_id}",
            )
            await self._ack(item.stream, item.entry_id)
            del self._pending[key]
            logger.info(
                "completion dispatched",
                extra={
                    "route": item.route.name,
                    "correlation_id": item.event.correlation_id,
                    "messages": count,
                    "tracked": tracked is not None,
                },
            )

    async def _ack(self, stream: str, entry_id: str) -> None:
        await self.redis.xack(stream, group_name(self.settings.key_prefix), entry_id)

    async def run(self) -> None:
        """Dispatch until cancelled."""
        while True:
            checkpoint()
            await self.run_once()
