"""The completion hub: the in-memory waiters of each correlation id, woken by the events the
sources' readers hand it (`sources.redis_streams` for Redis Streams through `dispatch`; the
brokers' readers, `sources.broadcast`, through `dispatch_message`).

- A waiter is a future in a dict keyed by (stream, correlation id); several waiters on one id all
  wake. A waiter resolves only on an event its route calls success or failure; other types for the
  same id (progress, unknown) leave it waiting.
- A bounded, time-limited cache of recent events closes the race where the event lands before the
  waiter exists: `add()` looks there first.
- Entries are decoded by the one `Decoder`; malformed ones are counted and logged, never fatal.
- `connected` is set while every Redis reader reads (a call that times out meanwhile says so);
  the brokers' readers say theirs in `sources.health`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import Settings, StreamWait
from ..logs import Every
from ..metrics import Metrics
from .completion import Completion, Event, MalformedEvent, Message
from .decoder import Decoder, Reading

logger = logging.getLogger(__name__)

EVENTS_PER_ID = 4  # cached events per correlation id (progress events may precede the final one)


class Waiter:
    """One waiting call: resolved with the first event its route's spec classifies.

    Kept small on purpose (slots, no per-waiter task): a process holds tens of thousands.
    """

    __slots__ = ("future", "key", "spec")

    def __init__(self, spec: StreamWait, correlation_id: str) -> None:
        self.spec = spec
        self.key = (spec.stream_id, correlation_id)
        # None: the wait ended without a completion (its budget, see `sync.wait`).
        self.future: asyncio.Future[Completion | None] = asyncio.get_running_loop().create_future()

    def offer(self, event: Event) -> bool:
        """Resolve with `event` if it means success or failure for this route."""
        if self.future.done():
            return False
        status = event.verdict(self.spec)
        if status is None:
            return False
        self.future.set_result(event.completion(status))
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


class CompletionHub:
    """Wakes waiters with the events the readers hand it (`dispatch`)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.metrics = metrics
        self.recent_size = settings.stream_reader.recent_size
        self.recent_bytes = settings.stream_reader.recent_bytes
        self.recent_ttl_s = settings.stream_reader.recent_ttl
        self._recent_held = 0  # bytes the cached events hold
        self.decoder = Decoder(settings)
        self._waiters: dict[tuple[str, str], list[Waiter]] = {}
        self._recent: OrderedDict[tuple[str, str], tuple[float, list[Event]]] = OrderedDict()
        self._watch: dict[str, StreamWatch] = {}
        self._said: dict[str, Every] = {}
        self.connected = asyncio.Event()  # every reader reads (set and cleared by the readers)
        self.changed = asyncio.Event()  # the streams to read changed (a reload)

    # -- configuration ---------------------------------------------------------------------

    def update(self, settings: Settings) -> None:
        """Follow a config reload: new streams are read from their current end."""
        self.decoder = Decoder(settings)
        self.changed.set()

    @property
    def streams(self) -> list[str]:
        """Redis stream keys being read (brokers' streams are their sources' readers')."""
        return self.decoder.streams

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
        try:
            events = self.decoder.decode(stream, entry_id, fields)
        except MalformedEvent as exc:
            logger.warning(
                "malformed completion event",
                extra={"stream": stream, "entry_id": entry_id, "reason": str(exc)},
            )
            return "malformed"
        return self._wake(stream, events)

    def dispatch_message(self, stream: str, message: Message) -> str:
        """Handle one broker message read from `stream` (`<source>/<key>`); returns its
        result label like `dispatch`."""
        try:
            events = self.decoder.decode_message(stream, message)
        except MalformedEvent as exc:
            logger.warning(
                "malformed completion event",
                extra={"stream": stream, "entry_id": message.position, "reason": str(exc)},
            )
            return "malformed"
        return self._wake(stream, events)

    def _wake(self, stream: str, events: list[tuple[Event, Reading]]) -> str:
        result = "ignored"
        for event, _reading in events:
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

    def _remember(self, event: Event) -> None:
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

    def quiet(self) -> None:
        """A read brought nothing: let expired events go all the same."""
        if self._recent:
            self._evict(time.monotonic())
