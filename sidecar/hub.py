"""The completion hub: one `XREAD BLOCK` loop per process over every configured stream, waking the
in-memory waiters of each correlation id.

- One dedicated Redis connection (socket timeout above the block time), never one per waiter.
- A waiter is a future in a dict keyed by (stream, correlation id); several waiters on one id all
  wake. A waiter resolves only on an event its route calls success or failure; other types for the
  same id (progress, unknown) leave it waiting.
- A bounded, time-limited cache of recent events closes the race where the event lands before the
  waiter exists: `add()` looks there first.
- On a Redis error the loop backs off, reconnects and resumes from the last id it saw per
  stream, so nothing the stream still holds is missed.
- Malformed entries are counted and logged, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .completion import Completion, MalformedEvent, StreamEvent, classify, decode_for, to_completion
from .config import Settings, StreamWait
from .connections import REDIS_FAULTS, Backoff, Client, PrimaryCheck, RedisConnections, close
from .logs import Every
from .metrics import Metrics
from .tasks import cancelling, checkpoint

logger = logging.getLogger(__name__)

EVENTS_PER_ID = 4  # cached events per correlation id (progress events may precede the final one)
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0


def entry_age_s(entry_id: str) -> float:
    """Seconds since Redis added the stream entry `entry_id` (its id starts with the ms time)."""
    ms = entry_id.partition("-")[0]
    return max(0.0, time.time() - int(ms) / 1000) if ms.isdigit() else 0.0


class Waiter:
    """One waiting call: resolved with the first event its route's spec classifies.

    Kept small on purpose (slots, no per-waiter task): a process holds tens of thousands.
    """

    __slots__ = ("future", "key", "spec")

    def __init__(self, spec: StreamWait, correlation_id: str) -> None:
        self.spec = spec
        self.key = (spec.key, correlation_id)
        # None: the wait ended without a completion (its budget, see `sync.wait`).
        self.future: asyncio.Future[Completion | None] = asyncio.get_running_loop().create_future()

    def offer(self, event: StreamEvent) -> bool:
        """Resolve with `event` if it means success or failure for this route."""
        if self.future.done():
            return False
        status = classify(event, self.spec)
        if status is None:
            return False
        self.future.set_result(to_completion(event, status))
        return True


SUSPECT_WINDOW_S = 60.0  # what a misconfiguration diagnosis looks back on
SUSPECT_UNMATCHED = 3  # events of a route's types for nobody, within the window


@dataclass(slots=True)
class StreamWatch:
    """What one stream's events did lately: the clue to a route that waits on the wrong id."""

    matched_at: float = -SUSPECT_WINDOW_S  # when an event last woke a waiter (monotonic)
    window_start: float = 0.0
    unmatched: int = 0  # events of a route's types nobody waited for, since window_start
    example: str = ""  # the id one of them carried

    def saw(self, result: str, correlation_id: str, now: float) -> None:
        """Note one dispatched event."""
        if result == "matched":
            self.matched_at = now
        elif result == "unmatched":
            if now - self.window_start > SUSPECT_WINDOW_S:
                self.window_start, self.unmatched = now, 0
            self.unmatched += 1
            self.example = correlation_id

    def suspect(self, now: float) -> str | None:
        """An id carried by events nobody waits for, when no event woke anyone for a while
        but several went unmatched: calls probably wait on other ids than the events carry."""
        recent = now - self.window_start <= SUSPECT_WINDOW_S
        quiet = now - self.matched_at > SUSPECT_WINDOW_S
        return self.example if recent and quiet and self.unmatched >= SUSPECT_UNMATCHED else None


@dataclass(frozen=True, slots=True)
class _Decoder:
    """How one stream's entries are decoded (routes on a stream may differ in field names)."""

    spec: StreamWait
    known_types: frozenset[str]


def decoders_for(settings: Settings) -> dict[str, list[_Decoder]]:
    """Per stream key, one decoder per distinct (id, type, data) field triple."""
    out: dict[str, dict[tuple[str, str, str], tuple[StreamWait, set[str]]]] = {}
    for route in settings.routes:
        if route.wait is None or route.wait.stream is None:
            continue
        spec = route.wait.stream
        triple = (spec.id_field, spec.type_field, spec.data_field)
        entry = out.setdefault(spec.key, {}).setdefault(triple, (spec, set()))
        entry[1].update(spec.success, spec.failure)
    return {
        key: [_Decoder(spec, frozenset(types)) for spec, types in triples.values()]
        for key, triples in out.items()
    }


class CompletionHub:
    """Reads completion streams and wakes waiters. Run `run()` as a background task."""

    def __init__(self, connections: RedisConnections, settings: Settings, metrics: Metrics) -> None:
        self.connections = connections
        self.metrics = metrics
        self.block_ms = int(settings.stream_reader.block * 1000)
        self.count = settings.stream_reader.count
        self.recent_size = settings.stream_reader.recent_size
        self.recent_bytes = settings.stream_reader.recent_bytes
        self.recent_ttl_s = settings.stream_reader.recent_ttl
        self._recent_held = 0  # bytes the cached events hold
        self._decoders = decoders_for(settings)
        self._last_ids: dict[str, str] = {}
        self._waiters: dict[tuple[str, str], list[Waiter]] = {}
        self._recent: OrderedDict[tuple[str, str], tuple[float, list[StreamEvent]]] = OrderedDict()
        self._watch: dict[str, StreamWatch] = {}
        self._said: dict[str, Every] = {}
        self.connected = asyncio.Event()  # every group of streams is being read
        self._up: dict[int, bool] = {}
        self._said_down = False
        self._changed = asyncio.Event()

    # -- configuration ---------------------------------------------------------------------

    def update(self, settings: Settings) -> None:
        """Follow a config reload: new streams are read from their current end."""
        self._decoders = decoders_for(settings)
        self._changed.set()

    @property
    def streams(self) -> list[str]:
        """Stream keys being read."""
        return list(self._decoders)

    # -- waiters ---------------------------------------------------------------------------

    def add(self, spec: StreamWait, correlation_id: str, *, cached: bool = True) -> Waiter:
        """Register a waiter; with `cached`, resolved at once if a matching event is in the
        recent-event cache. The caller must `discard()` it (in a `finally`)."""
        waiter = Waiter(spec, correlation_id)
        recent = self._recent.get(waiter.key) if cached else None
        if recent is not None and recent[0] > time.monotonic():
            for event in recent[1]:
                if waiter.offer(event):
                    break
        waiters = self._waiters.get(waiter.key)
        if waiters is None:
            self._waiters[waiter.key] = [waiter]
        else:
            waiters.append(waiter)
        return waiter

    def discard(self, waiter: Waiter) -> None:
        """Unregister a waiter (idempotent)."""
        waiters = self._waiters.get(waiter.key)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[waiter.key]

    @property
    def waiting(self) -> int:
        """Number of registered waiters."""
        return sum(len(w) for w in self._waiters.values())

    # -- events ----------------------------------------------------------------------------

    def dispatch(self, stream: str, entry_id: str, fields: Mapping[Any, Any]) -> str:
        """Handle one entry; returns its result label (matched, unmatched, ignored, malformed)."""
        decoders = self._decoders.get(stream, [])
        result = "ignored"
        for decoder in decoders:
            try:
                event = decode_for(stream, entry_id, fields, decoder.spec)
            except MalformedEvent as exc:
                logger.warning(
                    "malformed completion event",
                    extra={"stream": stream, "entry_id": entry_id, "reason": str(exc)},
                )
                return "malformed"
            if event.event_type not in decoder.known_types:
                continue
            self._remember(event)
            woke = False
            for waiter in self._waiters.get((stream, event.correlation_id), ()):
                woke = waiter.offer(event) or woke
            result = "matched" if woke else ("unmatched" if result != "matched" else result)
            watch = self._watch.get(stream) or self._watch.setdefault(stream, StreamWatch())
            watch.saw(result, event.correlation_id, time.monotonic())
        return result

    def said(self, route: str) -> Every:
        """The once-a-minute gate of a route's diagnosis line."""
        return self._said.setdefault(route, Every(SUSPECT_WINDOW_S))

    def suspect(self, stream: str) -> str | None:
        """An example id of the events on `stream` nobody waits for, when calls on it likely
        wait on other ids (see `StreamWatch.suspect`)."""
        watch = self._watch.get(stream)
        return watch.suspect(time.monotonic()) if watch else None

    def _remember(self, event: StreamEvent) -> None:
        if self.recent_size <= 0 or event.size > self.recent_bytes:
            return
        key = (event.stream, event.correlation_id)
        now = time.monotonic()
        entry = self._recent.pop(key, None)
        kept = (entry[1] if entry else [])[-(EVENTS_PER_ID - 1) :]
        if entry:
            self._recent_held -= sum(e.size for e in entry[1]) - sum(e.size for e in kept)
        self._recent[key] = (now + self.recent_ttl_s, [*kept, event])
        self._recent_held += event.size
        self._evict(now)

    def _evict(self, now: float) -> None:
        """Drop cached events, oldest first: past the count or the bytes, and whatever expired
        (insertion order is expiry order)."""
        while self._recent:
            expiry, events = next(iter(self._recent.values()))
            over = len(self._recent) > self.recent_size or self._recent_held > self.recent_bytes
            if not over and expiry > now:
                break
            self._recent.popitem(last=False)
            self._recent_held -= sum(e.size for e in events)
        self.metrics.recent_bytes.set(self._recent_held)

    @property
    def recent_held(self) -> int:
        """Bytes held by the recent-event cache."""
        return self._recent_held

    # -- the loop --------------------------------------------------------------------------

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
            self._changed.clear()
            groups = self.connections.slot_groups(self.streams)
            if not groups:
                self._up = {}
                self._mark_connected([])
                await self._changed.wait()
                continue
            self._up = dict.fromkeys(range(len(groups)), False)
            readers = [asyncio.create_task(self._read(n, group)) for n, group in enumerate(groups)]
            changed = asyncio.create_task(self._changed.wait())
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
                if self.connected.is_set() or not self._said_down:
                    logger.warning(
                        "completion reader lost Redis; reconnecting quietly",
                        extra={"streams": streams, "error": f"{exc.__class__.__name__}: {exc}"},
                    )
                    self._said_down = True
                self.connected.clear()
                await asyncio.sleep(backoff.next())
            finally:
                await close(client)

    def _mark_connected(self, streams: list[str]) -> None:
        if self.connected.is_set() or not all(self._up.values()):
            return
        logger.info("completion reader connected", extra={"streams": self.streams})
        self._said_down = False
        self.connected.set()

    def _handle(self, streams: list[str], reply: Any) -> None:
        if not reply and self._recent:  # a quiet read: let expired events go all the same
            self._evict(time.monotonic())
        lagging: dict[str, float] = dict.fromkeys(streams, 0.0)
        for raw_stream, entries in reply or ():
            stream = raw_stream.decode()
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                self._last_ids[stream] = entry_id
                result = self.dispatch(stream, entry_id, fields)
                self.metrics.series(self.metrics.stream_events, stream, result).inc()
            if entries:
                lagging[stream] = entry_age_s(self._last_ids[stream])
        for stream, lag in lagging.items():
            self.metrics.series(self.metrics.stream_lag, stream).set(lag)
