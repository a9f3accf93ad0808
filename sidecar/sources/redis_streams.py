"""Reading completions from Redis Streams: one `XREAD BLOCK` loop per process over every stream a
route waits on, handing each entry to the hub.

- One dedicated Redis connection per group of streams (all of them on one server; those of one
  slot on a cluster), with a socket timeout above the block time; never one per waiter.
- New streams start at their current last entry; on a Redis error the loop backs off, reconnects
  and resumes from the last id it saw per stream, so nothing the stream still holds is missed.
- The lag of each stream (the age of its last entry read) and every entry's result are counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from ..completions.hub import CompletionHub
from ..connections import REDIS_FAULTS, Backoff, Client, PrimaryCheck, RedisConnections, close
from ..metrics import Metrics
from ..tasks import cancelling, checkpoint

logger = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 0.5  # one connection attempt per process: readiness is back this soon


def entry_age_s(entry_id: str) -> float:
    """Seconds since Redis added the stream entry `entry_id` (its id starts with the ms time)."""
    ms = entry_id.partition("-")[0]
    return max(0.0, time.time() - int(ms) / 1000) if ms.isdigit() else 0.0


class RedisStreamReader:
    """Reads the hub's streams from Redis and hands every entry to it. Run `run()` as a
    background task."""

    def __init__(
        self, connections: RedisConnections, hub: CompletionHub, block_s: float, count: int
    ) -> None:
        self.connections = connections
        self.hub = hub
        self.metrics: Metrics = hub.metrics
        self.block_ms = int(block_s * 1000)
        self.count = count
        self._last_ids: dict[str, str] = {}
        self._up: dict[int, bool] = {}
        self._said_down = False

    async def _resolve_start_ids(self, client: Client, streams: Sequence[str]) -> None:
        """New streams start at their current last entry (or the beginning when empty); a
        round trip in any case, so "connected" is only said of a Redis that answered."""
        await client.ping()
        for stream in streams:
            if stream in self._last_ids:
                continue
            last = await client.xrevrange(stream, count=1)
            self._last_ids[stream] = last[0][0].decode() if last else "0-0"

    async def run(self) -> None:
        """Read forever: one blocking read per group of streams that can share a command (all
        of them on one server; those of one slot on a cluster), regrouped when the routes
        change. Cancel to stop."""
        while True:
            checkpoint()
            self.hub.changed.clear()
            groups = self.connections.slot_groups(self.hub.streams)
            if not groups:
                self._up = {}
                self._mark_connected([])
                await self.hub.changed.wait()
                continue
            self._up = dict.fromkeys(range(len(groups)), False)
            readers = [asyncio.create_task(self._read(n, group)) for n, group in enumerate(groups)]
            changed = asyncio.create_task(self.hub.changed.wait())
            try:
                done, _ = await asyncio.wait(
                    [*readers, changed], return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if task is not changed:
                        task.result()  # a reader only ends by raising: let it be seen
            finally:
                for task in [*readers, changed]:
                    task.cancel()
                await asyncio.gather(*readers, changed, return_exceptions=True)

    async def _read(self, n: int, streams: list[str]) -> None:
        """Read one group of streams forever; reconnect with backoff on any Redis error.

        "Connected" is said (and logged, once) only after a round trip succeeded; a lost
        connection is logged once, not at every attempt to get it back."""
        backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)
        while True:
            checkpoint()
            client = self.connections.reader(self.block_ms / 1000, "sidecar-completions")
            primary = PrimaryCheck(self.connections)
            try:
                await self._resolve_start_ids(client, streams)
                self._up[n] = True
                self._mark_connected(streams)
                backoff.reset()
                while True:
                    checkpoint()
                    reply = await client.xread(
                        {s: self._last_ids[s] for s in streams},
                        count=self.count,
                        block=self.block_ms,
                    )
                    self._handle(streams, reply)
                    await primary.ensure()
            except REDIS_FAULTS as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                self._up[n] = False
                self.metrics.redis_faults.labels("completion_reader").inc()
                if self.hub.connected.is_set() or not self._said_down:
                    logger.warning(
                        "completion reader lost Redis; reconnecting quietly",
                        extra={"streams": streams, "error": f"{exc.__class__.__name__}: {exc}"},
                    )
                    self._said_down = True
                self.hub.connected.clear()
                await asyncio.sleep(backoff.next())
            finally:
                await close(client)

    def _mark_connected(self, streams: list[str]) -> None:
        if self.hub.connected.is_set() or not all(self._up.values()):
            return
        logger.info("completion reader connected", extra={"streams": self.hub.streams})
        self._said_down = False
        self.hub.connected.set()

    def _handle(self, streams: list[str], reply: Any) -> None:
        if not reply:
            self.hub.quiet()
        lagging: dict[str, float] = dict.fromkeys(streams, 0.0)
        for raw_stream, entries in reply or ():
            stream = raw_stream.decode()
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                self._last_ids[stream] = entry_id
                result = self.hub.dispatch(stream, entry_id, fields)
                self.metrics.series(self.metrics.stream_events, stream, result).inc()
            if entries:
                lagging[stream] = entry_age_s(self._last_ids[stream])
        for stream, lag in lagging.items():
            self.metrics.series(self.metrics.stream_lag, stream).set(lag)
