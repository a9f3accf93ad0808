"""The dispatcher: reads every completion stream through one consumer group and fans out.

Each event is dispatched once across replicas; a crashed replica's pending entries are claimed
(XAUTOCLAIM) by another. Completions go to the outbox through the `Handoff` every dispatcher
shares (an event whose call is not tracked yet stays pending for its grace); an entry is
acknowledged only once the outbox holds its messages. The brokers' dispatchers are in
`brokers`.
The hand-off also records each tracked call's outcome on its operation (see `handoff`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.exceptions import ResponseError

from ..completions.completion import MalformedEvent
from ..completions.decoder import Decoder
from ..config import Settings
from ..operations import Operations
from ..routing import Runtime
from ..tasks import checkpoint
from .handoff import Handoff, Held
from .keys import dispatch_group
from .outbox import create_group, group_lost
from .runtime import WebhookRuntime

logger = logging.getLogger(__name__)

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
        self.handoff = Handoff(webhooks, "redis", runtime, operations)
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
        handed = await self.handoff.flush()
        await self._ack([item.token for item in handed])
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
        block = int(RETRY_PENDING_S * 1000) if self.handoff.pending else BLOCK_MS
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
            self.handoff.set_aside(stream, entry_id, "malformed", str(exc))
            return False
        if found is None:
            return False  # no route uses this event type
        route, status, event = found
        self.handoff.hold(
            Held(
                (stream, entry_id),
                route,
                status,
                event,
                int(entry_id.split("-")[0]) / 1000,
                f"{stream}/{entry_id}",
                (stream, entry_id),
            )
        )
        return True

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
