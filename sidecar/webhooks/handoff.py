"""The hand-off of completions to the outbox, shared by every dispatcher (Redis Streams and the
brokers alike): completions are held until their call is tracked, then written in batches.

A completion can beat its call's `202` (a fast backend), and the call's record (its tenant, its
Location) is written only after that: a completion whose call is not tracked yet is held for
`UNTRACKED_GRACE_S`, then goes to operator-owned subscriptions only. Each flush costs a few
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

from ..completions.completion import Event, Status
from ..config import Route
from ..tenancy import OPERATOR
from ..tracking import TrackedCall
from .fanout import candidates, messages_for
from .runtime import WebhookRuntime

logger = logging.getLogger(__name__)

UNTRACKED_GRACE_S = 4.0


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


class Handoff:
    """Completions held for the outbox, released once written."""

    def __init__(self, webhooks: WebhookRuntime, source: str) -> None:
        self.store, self.outbox, self.tracker = webhooks.store, webhooks.outbox, webhooks.tracker
        self.pending: dict[Hashable, Held] = {}
        self._gauge = webhooks.metrics.held.labels(source)

    def hold(self, held: Held) -> None:
        """Keep a completion until its call is tracked (or its grace is over)."""
        if held.key not in self.pending:
            held.first_seen = time.monotonic()
            self.pending[held.key] = held
            self._gauge.set(len(self.pending))

    async def flush(self) -> list[Held]:
        """Write every held completion whose call is tracked (or whose grace is over) to the
        outbox; those, released, are returned for the reader to acknowledge. Raises Redis
        faults, and then nothing is released."""
        if not self.pending:
            return []
        items = list(self.pending.values())
        anyone = await self.store.anyone()
        tracked: list[TrackedCall | None] = [None] * len(items)
        if anyone:  # nobody subscribed: nothing to look up, every completion is done
            tracked = await self.tracker.get_many([i.event.correlation_id for i in items])
        now = time.monotonic()
        ready: list[tuple[Held, TrackedCall | None]] = [
            (item, call)
            for item, call in zip(items, tracked, strict=True)
            if not anyone or call is not None or now - item.first_seen > UNTRACKED_GRACE_S
        ]
        # Only the owners this batch concerns are read: its callers and the operator.
        tenants = {call.tenant for _, call in ready if call is not None and call.tenant}
        subs = await self.store.of_owners({OPERATOR, *tenants}) if anyone else {}
        messages = [
            message
            for item, call in ready
            for message in messages_for(
                candidates(subs, call),
                item.route,
                item.status,
                item.event.data,
                item.event.correlation_id,
                # An id several calls wait on belongs to none of them: operator subscriptions
                # only (the calls' own polls publish what they learn to their own clients).
                None if call is not None and call.ambiguous else call,
                item.completed_at,
                item.identity,
                traceparent=item.event.traceparent,
            )
        ]
        count = await self.outbox.enqueue_many(messages)
        for item, _ in ready:
            del self.pending[item.key]
        self._gauge.set(len(self.pending))
        if messages:
            logger.debug(
                "completions dispatched",
                extra={"completions": len(ready), "messages": len(messages), "new": count},
            )
        return [item for item, _ in ready]
