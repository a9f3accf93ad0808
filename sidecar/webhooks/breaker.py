"""Each endpoint's circuit breaker, in this process: how many attempts it may have in flight.

    closed     `per_subscription` slots. `failures` failed attempts in a row (none older than
               `window`) open it; a hang (an attempt in flight past `linger_after`) counts as
               a failure at once, so a hanging endpoint opens without waiting for its timeouts
    open       no slot: the endpoint's messages wait in its queue, unread, so they hold no slot
               and burn none of their attempts; after `open_for` (the n-th delay for the n-th
               opening in a row) it half-opens
    half-open  one slot: one probe attempt; delivered, the breaker closes; failed, it opens
               again for the next delay

A failure is what `retry.is_slow` calls one (timeout, refused or failed connection, 5xx, 429):
a receiver that answers 4xx at once is not overloaded. A delivery closes the breaker whatever
its state. Each replica keeps its own breakers (no Redis round trip per attempt); an endpoint
down for everyone is found so by each within `failures` attempts.

`Breakers` is bookkeeping without I/O: one log line and a transition counted per change of
state, and a gauge of the endpoints not closed (a state per endpoint would be a series per
endpoint).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from ..config import Webhooks
from .metrics import WebhookMetrics

logger = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class _Endpoint:
    state: State = "closed"
    failures: int = 0  # in a row
    last_failure: float = 0.0
    openings: int = 0  # in a row, without a delivery between
    until: float = 0.0  # open until (monotonic)
    delivered: bool = False  # its last attempt that ended delivered
    owner: str = ""


class Breakers:
    """The breakers of every endpoint this process has attempted."""

    def __init__(
        self,
        config: Webhooks,
        metrics: WebhookMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config.breaker
        self.per_subscription = config.per_subscription
        self.metrics = metrics
        self.clock = clock
        self._endpoints: dict[str, _Endpoint] = {}
        self._not_closed = 0

    def cap(self, sub_id: str) -> int:
        """Attempts of the endpoint that may be in flight now."""
        ep = self._endpoints.get(sub_id)
        if ep is None or ep.state == "closed":
            return self.per_subscription
        if ep.state == "open":
            if self.clock() < ep.until:
                return 0
            self._move(sub_id, ep, "half_open")
        return 1

    def state(self, sub_id: str) -> State:
        """The endpoint's state now (open turns half-open when its time is up)."""
        self.cap(sub_id)
        ep = self._endpoints.get(sub_id)
        return ep.state if ep else "closed"

    def proven(self, sub_id: str) -> bool:
        """True when the endpoint's last finished attempt here was delivered."""
        ep = self._endpoints.get(sub_id)
        return ep is not None and ep.delivered and ep.state == "closed"

    def open_until(self, sub_id: str) -> float | None:
        """Seconds until an open endpoint half-opens; None when it is not open."""
        ep = self._endpoints.get(sub_id)
        if ep is None or ep.state != "open":
            return None
        return max(0.0, ep.until - self.clock())

    def record(self, sub_id: str, owner: str, *, delivered: bool, failed: bool) -> None:
        """An attempt ended: delivered, failed (as `retry.is_slow` says), or neither (a 4xx)."""
        if not self.config.enabled:
            return
        ep = self._endpoints.get(sub_id)
        if delivered:
            if ep is None:
                self._endpoints[sub_id] = _Endpoint(delivered=True, owner=owner)
                return
            ep.delivered, ep.failures, ep.openings = True, 0, 0
            if ep.state != "closed":
                self._move(sub_id, ep, "closed")
            return
        if ep is None:
            ep = self._endpoints[sub_id] = _Endpoint(owner=owner)
        ep.delivered = False
        if failed:
            self._failed(sub_id, ep)

    def hung(self, sub_id: str, owner: str) -> None:
        """An attempt is still in flight past `linger_after`: a failure now."""
        if not self.config.enabled:
            return
        ep = self._endpoints.get(sub_id)
        if ep is None:
            ep = self._endpoints[sub_id] = _Endpoint(owner=owner)
        self._failed(sub_id, ep)

    def known(self) -> list[str]:
        """The endpoints this process keeps a breaker for."""
        return list(self._endpoints)

    def forget_except(self, sub_ids: Iterable[str]) -> None:
        """Drop the breakers of endpoints that no longer exist."""
        keep = set(sub_ids)
        for sub_id in [s for s in self._endpoints if s not in keep]:
            ep = self._endpoints.pop(sub_id)
            if ep.state != "closed":
                self._count(-1)

    def _failed(self, sub_id: str, ep: _Endpoint) -> None:
        now = self.clock()
        if ep.failures and now - ep.last_failure > self.config.window:
            ep.failures = 0
        ep.failures += 1
        ep.last_failure = now
        if ep.state == "half_open" or (
            ep.state == "closed" and ep.failures >= self.config.failures
        ):
            delays = self.config.open_for
            ep.until = now + delays[min(ep.openings, len(delays) - 1)]
            ep.openings += 1
            self._move(sub_id, ep, "open")

    def _move(self, sub_id: str, ep: _Endpoint, to: State) -> None:
        was = ep.state
        ep.state = to
        if (was == "closed") != (to == "closed"):
            self._count(1 if was == "closed" else -1)
        if self.metrics is not None:
            self.metrics.breaker_transitions.labels(to).inc()
        extra: dict[str, object] = {"sub": sub_id, "owner": ep.owner, "from": was, "to": to}
        if to == "open":
            extra |= {"failures": ep.failures, "open_s": round(ep.until - self.clock(), 3)}
        logger.info("webhook endpoint breaker %s", to.replace("_", "-"), extra=extra)

    def _count(self, change: int) -> None:
        self._not_closed += change
        if self.metrics is not None:
            self.metrics.breakers_open.set(self._not_closed)
