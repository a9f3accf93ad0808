"""The hand-off of completions to the outbox, shared by every dispatcher (Redis Streams and the
brokers alike): completions are held until their call is tracked, then written in batches.

A completion can beat its call's `202` (a fast backend), and the call's record (its tenant, its
Location) is written only after that: a completion whose call is not tracked yet is held for
`UNTRACKED_GRACE_S`, then goes to operator-owned subscriptions only. A completion that cannot
be turned into messages (malformed, or a payload that cannot be made) is set aside on its own:
recorded in the dead-completions stream, counted, said in one log line (a second at most), and
released to be acknowledged with the rest; it never holds its batch back, and no replica
retries it. Each flush costs a few
Redis round trips for the whole batch (the tracked calls, the subscriptions of the owners it
concerns (cached), the enqueues), not a few per completion. A completion is released to be
acknowledged only once the outbox holds its messages; a Redis fault leaves it held
(unacknowledged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from redis.typing import EncodableT, FieldT

from ..completions.completion import Event, Status
from ..config import Route
from ..connections import REDIS_FAULTS, is_cluster
from ..logs import Every
from ..operations import Operations
from ..operations.records import Outcome
from ..operations.writer import completed
from ..routing import Runtime
from ..tenancy import OPERATOR
from ..timestamps import iso
from ..tracking import TrackedCall
from .fanout import candidates, messages_for
from .keys import dead_completions_key
from .outbox import Message
from .runtime import WebhookRuntime

logger = logging.getLogger(__name__)

UNTRACKED_GRACE_S = 4.0
OUTCOME_TRIES = 5  # flushes an outcome may wait for its operation (its intake may trail it)


@dataclass(slots=True)
class Held:
    """A completion waiting to be handed to the outbox."""

    key: Hashable  # unique per message read: (stream, position)
    route: Route
    status: Status
    event: Event
    completed_at: float  # wall clock, the payload's timestamp
    identity: str  # the message's identity when its call is not tracked: `<stream>/<position>`
    token: Any = None  # what the reader needs to acknowledge it
    first_seen: float = 0.0  # monotonic
    recorded: bool = False  # its operation's outcome is written (or there is none to write)
    tries: int = 0  # flushes its outcome waited for its operation
    call: TrackedCall | None = None  # its tracked call, once found (not looked up again)


DEAD_KEPT = 10_000  # completions set aside, kept for inspection (approximate)
_dead_log = Every()


class Handoff:
    """Completions held for the outbox, released once written."""

    def __init__(
        self,
        webhooks: WebhookRuntime,
        source: str,
        runtime: Runtime,
        operations: Operations | None = None,
    ) -> None:
        self.runtime, self.operations = runtime, operations
        self.store, self.outbox, self.tracker = webhooks.store, webhooks.outbox, webhooks.tracker
        self.redis, self.prefix, self.metrics = webhooks.redis, webhooks.prefix, webhooks.metrics
        self.pending: dict[Hashable, Held] = {}
        self._dead: list[dict[FieldT, EncodableT]] = []  # set aside, to record at the next flush
        self._gauge = webhooks.metrics.held.labels(source)

    def set_aside(
        self, stream: str, position: str, reason: str, detail: str, route: str = ""
    ) -> None:
        """A completion that cannot be turned into messages: counted and said now, recorded in
        the dead-completions stream at the next flush. The caller acknowledges it."""
        self.metrics.dead_completions.labels(reason).inc()
        self._dead.append(
            {
                "stream": stream,
                "position": position,
                "route": route,
                "reason": reason,
                "detail": detail[:500],
                "at": iso(time.time()),
            }
        )
        if _dead_log.ready():
            logger.warning(
                "completion set aside: it cannot be turned into webhook messages",
                extra={
                    "stream": stream,
                    "entry": position,
                    "route": route or None,
                    "reason": reason,
                    "detail": detail[:500],
                    "since_last_line": _dead_log.take_skipped(),
                },
            )

    def hold(self, held: Held) -> None:
        """Keep a completion until its call is tracked (or its grace is over)."""
        if held.key not in self.pending:
            held.first_seen = time.monotonic()
            held.recorded = self.operations is None
            self.pending[held.key] = held
            self._gauge.set(len(self.pending))

    async def flush(self) -> list[Held]:
        """Write every held completion whose call is tracked (or whose grace is over) to the
        outbox; those, released, are returned for the reader to acknowledge. Raises Redis
        faults, and then nothing is released and every grace starts again: a call's tracking
        record kept while Redis was away is written once it answers (sync/backlog.py)."""
        try:
            return await self._flush()
        except REDIS_FAULTS:
            now = time.monotonic()
            for held in self.pending.values():
                held.first_seen = now
            raise

    async def _flush(self) -> list[Held]:
        if not self.pending:
            await self._record_dead()
            return []
        items = list(self.pending.values())
        anyone = await self.store.anyone()
        # The tracked calls, when anything needs them: a subscription (fan-out goes to the
        # call's owner), or an operation whose correlation id is not the completion's id. A
        # call found by an earlier flush is not looked up again.
        unknown = [i for i in items if i.call is None]
        if unknown and (
            anyone
            or any(not i.recorded and i.route.correlation.source != "request" for i in unknown)
        ):
            found = await self.tracker.get_many([i.event.correlation_id for i in unknown])
            for item, call in zip(unknown, found, strict=True):
                item.call = call
        tracked = [i.call for i in items]
        await self._record_outcomes(items, tracked)
        now = time.monotonic()
        ready: list[tuple[Held, TrackedCall | None]] = [
            (item, call)
            for item, call in zip(items, tracked, strict=True)
            if ((call is not None or not anyone) and item.recorded)
            or now - item.first_seen > UNTRACKED_GRACE_S
        ]
        # Only the owners this batch concerns are read: its callers and the operator.
        tenants = {call.tenant for _, call in ready if call is not None and call.tenant}
        subs = await self.store.of_owners({OPERATOR, *tenants}) if anyone else {}
        messages: list[Message] = []
        for item, call in ready:
            try:
                messages += messages_for(
                    candidates(subs, call),
                    item.route,
                    item.status,
                    item.event.data,
                    item.event.correlation_id,
                    # An id several calls wait on belongs to none of them: operator
                    # subscriptions only (the calls' own polls publish to their own clients).
                    None if call is not None and call.ambiguous else call,
                    item.completed_at,
                    item.identity,
                    traceparent=item.event.traceparent,
                )
            except (ValueError, TypeError) as exc:  # orjson's, for data it cannot write
                stream, _, position = item.identity.rpartition("/")
                detail = f"{exc.__class__.__name__}: {exc}"
                self.set_aside(stream, position, "unsendable", detail, item.route.name)
        count = await self.outbox.enqueue_many(messages)
        await self._record_dead()
        for item, _ in ready:
            del self.pending[item.key]
        self._gauge.set(len(self.pending))
        if messages:
            logger.debug(
                "completions dispatched",
                extra={"completions": len(ready), "messages": len(messages), "new": count},
            )
        return [item for item, _ in ready]

    async def _record_outcomes(self, items: list[Held], tracked: list[TrackedCall | None]) -> None:
        """Each completion's outcome on the operation waiting on it (one batch; the first
        writer of an outcome wins), so the status monitor and idempotent retries learn
        completions that came after a fallback 202. An operation not found yet (its intake
        trails its event) is tried again with the next flushes, a few times."""
        if self.operations is None:
            return
        settings = self.runtime.settings
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
            outcome = Outcome.of_event(item.event, item.status, item.completed_at)
            update = completed(
                cid,
                item.event.correlation_id,
                outcome,
                max_result=settings.operations.max_result,
                events_ttl_ms=int(settings.tracking_ttl * 1000),
            )
            # A tracked call's operation was written with its record (on a cluster, by the
            # script after it): not found now, it is not coming; an untracked call's may be.
            tries = OUTCOME_TRIES if call is None else (2 if is_cluster(self.redis) else 1)
            todo.append((item, tries, self.operations.writer.soon(update)))
        for item, tries, written in todo:
            item.tries += 1
            item.recorded = bool(await written) or item.tries >= tries

    async def _record_dead(self) -> None:
        """Write the completions set aside since the last flush (a Redis fault keeps them)."""
        if not self._dead:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for fields in self._dead:
                pipe.xadd(
                    dead_completions_key(self.prefix), fields, maxlen=DEAD_KEPT, approximate=True
                )
            await pipe.execute()
        self._dead.clear()
