"""One loop per source and role per process: connect with backoff, read, hand every batch on.

    SourceLoop    runs one `Source` forever: connects (retrying with backoff and jitter while
                  the broker is down or what the routes name is missing), reads, hands each
                  batch to its handler, probes the broker when reads are idle, follows reloads
                  that change the source's streams; says its state in `SourceHealth`
    feed_waiters  the waiters' handler: every message to the hub, counted by stream and result

Libraries that reconnect on their own (aio-pika's robust connection, nats-py, aiokafka) are let
do so: a failed probe marks the source down without tearing anything down, and the next good
probe (or message) marks it up again. Only a read that raises `SourceFault` (the library gave
up, a channel was closed under us) makes the loop close the source and connect it again; the
source keeps its positions across that, so it resumes where it was.

Logs stay quiet: one warning when a source goes down, one line when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..completions.hub import CompletionHub
from ..connections import Backoff
from ..metrics import Metrics
from ..routing import Runtime
from ..tasks import cancelling, checkpoint
from .base import (
    Received,
    Role,
    Source,
    SourceFault,
    SourceMissing,
    SourceStale,
    streams_of,
)
from .health import SourceHealth
from .kinds import open_source

logger = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
PROBE_EVERY_S = 1.0  # an idle read probes the broker this often
RELOAD_CHECK_S = 1.0  # how often a source with no stream looks for one (after a reload)

Handler = Callable[[Source, list[Received]], Awaitable[None]]


def describe(exc: BaseException) -> str:
    """A fault in one line, without the URL (it may hold a password)."""
    text = str(exc) or exc.__class__.__name__
    return text if isinstance(exc, SourceFault) else f"{exc.__class__.__name__}: {text}"


class SourceLoop:
    """Reads one source in one role, forever (cancel to stop)."""

    def __init__(
        self,
        name: str,
        role: Role,
        runtime: Runtime,
        health: SourceHealth,
        handle: Handler,
        *,
        block_s: float,
        started_at: float | None = None,
    ) -> None:
        self.name, self.role, self.runtime = name, role, runtime
        self.health, self.handle = health, handle
        self.block_s = block_s
        self.started_at = time.time() if started_at is None else started_at
        self.source: Source | None = None  # the one being read (tests look at it)
        self._down_since: float | None = None

    async def run(self) -> None:
        """Read until cancelled; a new `Source` only when a reload changed the streams."""
        try:
            while True:
                checkpoint()
                streams = streams_of(self.runtime.settings, self.name)
                if not streams:
                    self.health.forget(self.name, self.role)
                    await asyncio.sleep(RELOAD_CHECK_S)
                    continue
                self.health.watch(self.name, self.role)
                source = open_source(
                    self.name, self.runtime.settings, streams, self.role, self.started_at
                )
                self.source = source
                try:
                    await self._serve(source)
                finally:
                    await source.close()
        finally:
            self.health.forget(self.name, self.role)

    def _current(self, source: Source) -> bool:
        return streams_of(self.runtime.settings, self.name) == source.streams

    async def _serve(self, source: Source) -> None:
        """Connect, read and reconnect this source until its streams change."""
        backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)
        timeout_s = source.connect_timeout_s
        while self._current(source):
            checkpoint()
            try:
                async with asyncio.timeout(timeout_s):
                    await source.connect()
                self._up()
                backoff.reset()
                await self._read(source)
                return  # the streams changed
            except SourceStale as exc:
                logger.info(
                    "completion source set up again",
                    extra={"source": self.name, "read": self.role, "why": str(exc)},
                )
                await source.close()
            except (SourceFault, TimeoutError) as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                self._down(exc)
                await source.close()
                await asyncio.sleep(backoff.next())

    async def _read(self, source: Source) -> None:
        """Read and hand on until the streams change; probe while idle. A read that raises
        `SourceStale` ends it (the loop sets the source up again, at once)."""
        probed = time.monotonic()
        while self._current(source):
            checkpoint()
            batch = await source.read(self.block_s)
            now = time.monotonic()
            if batch:
                await self.handle(source, batch)
                probed = now
                self._up()
            elif now - probed >= PROBE_EVERY_S:
                probed = now
                try:
                    async with asyncio.timeout(source.config.connect_timeout):
                        await source.probe()
                except (SourceMissing, SourceStale):
                    raise  # a topic deleted, partitions added: set up again (and say so)
                except (SourceFault, TimeoutError) as exc:
                    # The library is reconnecting by itself: say so, keep reading.
                    self._down(exc)
                else:
                    self._up()
            else:
                await self.handle(source, batch)

    def _up(self) -> None:
        if self._down_since is not None:
            logger.info(
                "completion source connected again",
                extra={
                    "source": self.name,
                    "read": self.role,
                    "down_s": round(time.monotonic() - self._down_since, 3),
                },
            )
            self._down_since = None
        self.health.mark(self.name, self.role, None)

    def _down(self, exc: BaseException) -> None:
        why = describe(exc) if not isinstance(exc, TimeoutError) else "no answer in time"
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning(
                "completion source unavailable; retrying quietly",
                extra={"source": self.name, "read": self.role, "error": why},
            )
        self.health.mark(self.name, self.role, why)


def feed_waiters(hub: CompletionHub, metrics: Metrics) -> Handler:
    """The waiters' handler: every message to the hub, counted (and its lag measured)."""

    async def handle(source: Source, batch: list[Received]) -> None:
        if not batch:
            hub.quiet()
            return
        newest: dict[str, float] = {}
        for received in batch:
            result = hub.dispatch_message(received.stream, received.message)
            metrics.series(metrics.stream_events, received.stream, result).inc()
            stamp = received.message.timestamp_s
            if stamp is not None:
                newest[received.stream] = max(newest.get(received.stream, 0.0), stamp)
        now = time.time()
        for stream, stamp in newest.items():
            metrics.series(metrics.stream_lag, stream).set(max(0.0, now - stamp))

    return handle
