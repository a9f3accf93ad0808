"""Tracking records that could not be written because Redis was away, kept in memory and written
once Redis answers again, so a call made during a Redis outage still reaches its client's
webhooks (its record says whose call it is).

- Bounded by `tracking_backlog.max_calls` (the oldest is dropped when full) and
  `tracking_backlog.max_age` (a record not written by then is dropped); a record whose
  tenant was still to be derived (the tenant key not loaded yet) keeps the credential, in memory
  only, until it is written or dropped.
- One writer task retries the oldest records first, at most `RETRY_MAX_S` apart while Redis is
  away; every record keeps its first `created_at`.
- Counted: `sidecar_tracking_backlog_total{outcome}` (kept, written, dropped),
  `sidecar_tracking_backlog_dropped_total{reason}`, `sidecar_tracking_backlog_size`; one log
  line when records are dropped (a second at most) and one when the backlog is written out.

Ordering with completions: a completion of such a call can be read only once Redis answers
again (a Redis stream), or is held by the dispatcher while it cannot reach Redis (a broker). The
dispatcher holds a completion whose call is not tracked for its grace (`UNTRACKED_GRACE_S`, four
seconds, started again after a pass that failed on Redis), and this writer retries at most
`RETRY_MAX_S` apart, so the late record normally lands within that grace and the completion goes
to the call's owner. A record written after the grace (a backlog Redis cannot take in so fast)
is still written, for long-polls and later completions; that completion went to operator
subscriptions.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from ..config import Settings
from ..connections import REDIS_FAULTS, Backoff
from ..logs import Every
from ..metrics import METRICS, Metrics
from ..routing import RUNTIME
from ..state import HASHER, TRACKER
from ..tasks import TaskSet, checkpoint
from ..tenancy import TenantHasher
from ..timeline import Intake
from ..tracking import CallTracker, TrackedCall

logger = logging.getLogger(__name__)

RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 0.5  # while Redis is away: a late record lands within this of its return
BATCH = 1000  # records per attempt (one group-committed write)

_drop_log = Every()


@dataclasses.dataclass(slots=True)
class Kept:
    """A record waiting for Redis."""

    record: TrackedCall
    kept_at: float  # monotonic
    credential: str | None = None  # while its tenant is still to be derived
    intake: Callable[[str | None], Intake | None] | None = None  # with that tenant


class TrackingBacklog:
    """The records kept for a late write, and their writer (`run`)."""

    def __init__(
        self,
        tracker: CallTracker,
        hasher: TenantHasher,
        metrics: Metrics,
        settings: Callable[[], Settings],
    ) -> None:
        self.tracker, self.hasher, self.metrics = tracker, hasher, metrics
        self._settings = settings
        self._kept: collections.deque[Kept] = collections.deque()
        self._wake = asyncio.Event()
        self._written = 0  # since the backlog was last empty
        self._dropped = 0

    def __len__(self) -> int:
        return len(self._kept)

    def keep(
        self,
        record: TrackedCall,
        credential: str | None = None,
        intake: Callable[[str | None], Intake | None] | None = None,
    ) -> None:
        """Keep `record` to write once Redis answers (with `credential` and `intake` when its
        tenant is still to be derived)."""
        limit = self._settings().tracking_backlog.max_calls
        if limit == 0:
            self._drop(record, "full")
            return
        while len(self._kept) >= limit:
            self._drop(self._kept.popleft().record, "full")
        self._kept.append(Kept(record, time.monotonic(), credential, intake))
        self.metrics.tracking_backlog.labels("kept").inc()
        self._sized()
        self._wake.set()

    async def run(self) -> None:
        """Write what is kept, oldest first, until cancelled."""
        backoff = Backoff(RETRY_INITIAL_S, RETRY_MAX_S)
        while True:
            checkpoint()
            self._expire()
            if not self._kept:
                self._written_out()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._kept[n] for n in range(min(BATCH, len(self._kept)))]
            results = await asyncio.gather(
                *(self._write(kept) for kept in batch), return_exceptions=True
            )
            faulted = False
            settled: set[int] = set()
            for kept, result in zip(batch, results, strict=True):
                if isinstance(result, REDIS_FAULTS):
                    faulted = True
                    continue
                settled.add(id(kept))
                if isinstance(result, BaseException):
                    logger.error("tracking record not written", exc_info=result)
                    self._drop(kept.record, "error")
                elif result:
                    self._written += 1
                    self.metrics.tracking_backlog.labels("written").inc()
                else:
                    self._drop(kept.record, "foreign")
            if settled:
                self._kept = collections.deque(k for k in self._kept if id(k) not in settled)
                self._sized()
            if faulted:
                self.metrics.redis_faults.labels("tracking_backlog").inc()
                await asyncio.sleep(backoff.next())
            else:
                backoff.reset()

    async def _write(self, kept: Kept) -> bool:
        if kept.credential is not None or kept.intake is not None:
            tenant = await self.hasher.tenant(kept.credential)
            intake = kept.intake(tenant) if kept.intake is not None else None
            kept.record = dataclasses.replace(kept.record, tenant=tenant, intake=intake)
            kept.credential = kept.intake = None
        if await self.tracker.record(kept.record):
            return True
        # Already there: this call's own (an earlier try whose answer was lost), or another's.
        found = await self.tracker.get(kept.record.wait_id)
        return found is not None and found.identity == kept.record.identity

    def _expire(self) -> None:
        max_age_s = self._settings().tracking_backlog.max_age
        now = time.monotonic()
        while self._kept and now - self._kept[0].kept_at > max_age_s:
            self._drop(self._kept.popleft().record, "expired")
        self._sized()

    def _drop(self, record: TrackedCall, reason: str) -> None:
        self._dropped += 1
        self.metrics.tracking_backlog.labels("dropped").inc()
        self.metrics.tracking_backlog_dropped.labels(reason).inc()
        if _drop_log.ready():
            logger.warning(
                "tracking record dropped: its completion reaches operator subscriptions only",
                extra={
                    "reason": reason,
                    "route": record.route,
                    "correlation_id": record.identity,
                    "since_last_line": _drop_log.take_skipped(),
                },
            )

    def _written_out(self) -> None:
        if self._written or self._dropped:
            logger.info(
                "tracking records kept while Redis was away are settled",
                extra={"written_late": self._written, "dropped": self._dropped},
            )
        self._written = self._dropped = 0

    def _sized(self) -> None:
        self.metrics.tracking_backlog_size.set(len(self._kept))

    def close(self) -> None:
        """Count what is still kept as dropped (the process stops)."""
        while self._kept:
            self._drop(self._kept.popleft().record, "shutdown")
        self._sized()


BACKLOG: web.AppKey[TrackingBacklog | None] = web.AppKey("tracking_backlog")


async def tracking_backlog_ctx(app: web.Application) -> AsyncIterator[None]:
    """The backlog of tracking writes and its writer (with Redis only)."""
    tracker = app[TRACKER]
    if tracker is None:
        app[BACKLOG] = None
        yield
        return
    runtime = app[RUNTIME]
    backlog = app[BACKLOG] = TrackingBacklog(
        tracker, app[HASHER], app[METRICS], lambda: runtime.settings
    )
    tasks = TaskSet("tracking-backlog")
    tasks.spawn(backlog.run())
    yield
    await tasks.close()
    backlog.close()
