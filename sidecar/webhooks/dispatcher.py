"""The dispatcher: reads every completion stream through one consumer group and fans out.

Each event is dispatched once across replicas; a crashed replica's pending entries are claimed
(XAUTOCLAIM) by another. An event whose call is not tracked yet (it can beat the 202) stays
pending for `UNTRACKED_GRACE_S`, then goes to operator-owned subscriptions only. Completions are
handled in batches: a few Redis round trips per read, not per completion. The dispatcher also
records each tracked call's outcome on its operation (once across replicas, like the fan-out),
so the status monitor and idempotent retries learn completions that came after a fallback 202.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from ..completions.completion import Event, MalformedEvent, Status
from ..completions.decoder import Decoder
from ..config import Route, Settings
from ..operations import Operations
from ..operations.records import Outcome
from ..operations.writer import completed
from ..routing import Runtime
from ..tasks import checkpoint
from ..tracking import TrackedCall
from .fanout import messages_for
from .keys import dispatch_group
from .outbox import create_group, group_lost
from .runtime import WebhookRuntime

logger = logging.getLogger(__name__)

UNTRACKED_GRACE_S = 4.0
OUTCOME_TRIES = 5  # reads an outcome may wait for its operation (its intake may trail it)
RETRY_PENDING_S = 0.1
CLAIM_IDLE_S = 15.0  # longer than the grace: an entry being retried here is never stolen
BLOCK_MS = 1000
MULTI_SLOT_BLOCK_MS = 50  # per read, when the streams live in several cluster slots
BATCH = 200
# After a short read, wait this long before the next one so completions are dispatched in
# batches (a few Redis round trips per batch, not per completion): at 1,000 completions/s the
# dispatcher would otherwise take a core from the calls being synchronised. Webhooks wait at
# most this much longer.
LINGER_S = 0.02


@dataclass(slots=True)
class Pending:
    """An event waiting for its tracked call."""

    stream: str
    entry_id: str
    route: Route
    status: Status
    event: Event
    first_seen: float
    recorded: bool = False  # its operation's outcome is written (or there is none to write)
    tries: int = 0


class Dispatcher:
    """Turns stream completions into outbox messages."""

    def __init__(
        self, webhooks: WebhookRuntime, runtime: Runtime, operations: Operations | None = None
    ) -> None:
        self.redis, self.runtime = webhooks.redis, runtime
        self.operations = operations
        self.connections = webhooks.connections
        self.store, self.outbox, self.tracker = webhooks.store, webhooks.outbox, webhooks.tracker
        self.consumer = webhooks.consumer
        self._pending: dict[tuple[str, str], Pending] = {}
        self._groups: set[str] = set()
        self._last_claim = 0.0
        self._decoder = Decoder(runtime.settings)
        self._decoder_of = runtime.settings

    @property
    def decoder(self) -> Decoder:
        """The one decoder of the live config (made again after a reload)."""
        if self._decoder_of is not self.settings:
            self._decoder, self._decoder_of = Decoder(self.settings), self.settings
        return self._decoder

    @property
    def settings(self) -> Settings:
        """The live config."""
        return self.runtime.settings

    async def _ensure(self, stream: str, start: str = "$") -> None:
        await create_group(self.redis, stream, dispatch_group(self.settings.key_prefix), start)
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
        group = dispatch_group(self.settings.key_prefix)
        try:
            entries = await self._read(streams, group)
        except ResponseError as exc:
            if not group_lost(exc):
                raise
            logger.info("dispatcher group missing (Redis restarted?); recreating")
            for stream in streams:
                await self._ensure(stream, "0")
            # Redis may have lost its data: the YAML-declared subscriptions are written again.
            await self.store.declare(self.settings.webhooks.subscriptions)
            return
        done: list[tuple[str, str]] = []  # entries with nothing to dispatch: acked together
        for stream, entry_id, fields in entries:
            if not self._hold(stream, entry_id, fields):
                done.append((stream, entry_id))
        await self._ack(done)
        await self._dispatch_pending()
        if len(entries) < BATCH:
            await asyncio.sleep(LINGER_S)

    async def _read(self, streams: list[str], group: str) -> list[tuple[str, str, Any]]:
        out: list[tuple[str, str, Any]] = []
        if time.monotonic() - self._last_claim > CLAIM_IDLE_S / 3:
            self._last_claim = time.monotonic()
            for stream in streams:
                reply = await self.redis.xautoclaim(
                    stream, group, self.consumer, int(CLAIM_IDLE_S * 1000), count=100
                )
                out += [(stream, e.decode(), f) for e, f in reply[1] if f]
        groups = self.connections.slot_groups(streams)
        block = int(RETRY_PENDING_S * 1000) if self._pending else BLOCK_MS
        if len(groups) > 1:  # one read per slot on a cluster: each blocks briefly, in turn
            block = min(block, MULTI_SLOT_BLOCK_MS)
        for keys in groups:
            reply = await self.redis.xreadgroup(
                group, self.consumer, dict.fromkeys(keys, ">"), count=BATCH, block=block
            )
            for stream, items in reply or []:
                out += [(stream.decode(), e.decode(), f) for e, f in items]
        return out

    def _hold(self, stream: str, entry_id: str, fields: Any) -> bool:
        """Keep a completion for dispatch; False for an entry with nothing to dispatch."""
        try:
            found = self.decoder.route_for(stream, entry_id, fields)
        except MalformedEvent as exc:
            logger.warning(
                "malformed completion event",
                extra={"stream": stream, "entry": entry_id, "error": str(exc)},
            )
            return False
        if found is None:
            return False  # no route uses this event type
        route, status, event = found
        self._pending[(stream, entry_id)] = Pending(
            stream, entry_id, route, status, event, time.monotonic(), self.operations is None
        )
        return True

    async def _dispatch_pending(self) -> None:
        """Fan out every held completion whose call is tracked (or whose grace is over), in a
        few round trips for the whole batch: the tracked calls, the subscriptions (cached), the
        enqueues, the acks."""
        if not self._pending:
            return
        items = list(self._pending.values())
        subs = await self.store.snapshot()
        tracked: list[TrackedCall | None] = [None] * len(items)
        # The tracked calls, when anything needs them: a subscription (fan-out goes to the
        # call's owner), or an operation whose correlation id is not the completion's id.
        if subs or any(not i.recorded and i.route.correlation.source != "request" for i in items):
            tracked = await self.tracker.get_many([i.event.correlation_id for i in items])
        await self._record_outcomes(items, tracked)
        now = time.monotonic()
        ready: list[tuple[Pending, TrackedCall | None]] = [
            (item, call)
            for item, call in zip(items, tracked, strict=True)
            if ((call is not None or not subs) and item.recorded)
            or now - item.first_seen > UNTRACKED_GRACE_S
        ]
        messages = [
            message
            for item, call in ready
            for message in messages_for(
                subs,
                item.route,
                item.status,
                item.event.data,
                item.event.correlation_id,
                call,
                _entry_time(item.entry_id),
                f"{item.stream}/{item.entry_id}",
            )
        ]
        count = await self.outbox.enqueue_many(messages)
        await self._ack([(item.stream, item.entry_id) for item, _ in ready])
        for item, _ in ready:
            del self._pending[(item.stream, item.entry_id)]
        if messages:
            logger.debug(
                "completions dispatched",
                extra={"completions": len(ready), "messages": len(messages), "new": count},
            )

    async def _record_outcomes(
        self, items: list[Pending], tracked: list[TrackedCall | None]
    ) -> None:
        """Each completion's outcome on the operation waiting on it (one batch; the first
        writer of an outcome wins). An operation not found yet (its intake trails its event)
        is tried again with the next reads, a few times."""
        if self.operations is None:
            return
        settings = self.settings
        todo = []
        for item, call in zip(items, tracked, strict=True):
            if item.recorded:
                continue
            if call is not None:
                cid = call.identity
            elif item.route.correlation.source == "request":
                cid = item.event.correlation_id  # a call's own id is what its event carries
            else:
                continue  # its correlation id is in its tracking record, not written yet
            outcome = Outcome.of_event(item.event, item.status, _entry_time(item.entry_id))
            update = completed(
                cid,
                item.event.correlation_id,
                outcome,
                max_result=settings.operations.max_result,
                events_ttl_ms=int(settings.tracking_ttl * 1000),
            )
            todo.append((item, self.operations.writer.soon(update)))
        for item, written in todo:
            item.tries += 1
            item.recorded = bool(await written) or item.tries >= OUTCOME_TRIES

    async def _ack(self, entries: list[tuple[str, str]]) -> None:
        """Acknowledge entries, one XACK per stream."""
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        group = dispatch_group(self.settings.key_prefix)
        for stream, ids in by_stream.items():
            await self.redis.xack(stream, group, *ids)

    async def run(self) -> None:
        """Dispatch until cancelled."""
        while True:
            checkpoint()
            await self.run_once()


def _entry_time(entry_id: str) -> float:
    """When a stream entry was written (its id's milliseconds), in epoch seconds."""
    return int(entry_id.split("-")[0]) / 1000
