"""What clients' bodies may cost the whole process: memory held, and time taken to send them.

    budget   every request body the sidecar holds in memory counts against one budget per
             process, `clients.buffer_budget`: a synchronised call's body (read whole before it
             is forwarded) and the start of a pass-through body (up to
             `clients.pass_through_buffer`, read before an upstream connection is taken). A
             body that does not fit is refused with 503 + Retry-After (counted in
             `sidecar_body_budget_refused_total`); its bytes are given back once it has been
             forwarded, or when its call ends, whichever comes first. A limit per client alone
             would be one an attacker multiplies by inventing clients (nginx buffers to disk,
             Envoy's overload manager sheds; the sidecar sheds).
    pace     after `clients.body_rate_grace`, a body must have come at `clients.min_body_rate`
             bytes a second on average, counting only the time spent waiting for the client
             (not the time the upstream took to accept the bytes), as Kestrel's
             MinRequestBodyDataRate; slower: 408 and the connection is closed. So 1 byte every
             20 s, which no pause limit catches, is refused after the grace period.

`Held` is one request's share of the budget, kept on the request (`HELD_BODY`) so that the
call's end gives back whatever it still holds.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.streams import StreamReader
from prometheus_client import Gauge

from ..config import Clients
from ..errors import Overloaded

RETRY_AFTER_S = 1  # a refused body may try again soon: bodies are given back as they are sent


class ByteBudget:
    """The bytes of request bodies the process holds now, against `limit`."""

    def __init__(self, limit: int, gauge: Gauge) -> None:
        self.limit = limit
        self.held = 0
        self._gauge = gauge

    def take(self, size: int) -> bool:
        """Hold `size` more bytes; False (nothing taken) when they do not fit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        self._gauge.set(self.held)
        return True

    def fits(self, size: int) -> bool:
        """Whether `size` more bytes would fit now."""
        return self.held + size <= self.limit

    def give(self, size: int) -> None:
        """Give back `size` bytes."""
        self.held -= size
        self._gauge.set(self.held)


class Held:
    """What one request holds of the budget."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.size = 0

    def take(self, size: int) -> None:
        """Hold `size` more bytes of this request's body; 503 when the budget is spent."""
        if size <= 0:
            return
        if not self._budget.take(size):
            raise over_budget()
        self.size += size

    def release(self) -> None:
        """Give everything back (the body was forwarded, or the call ended)."""
        if self.size:
            self._budget.give(self.size)
            self.size = 0


def over_budget() -> Overloaded:
    """The 503 for a body that does not fit the budget."""
    return Overloaded(
        "too many request bodies are held in memory right now; try again shortly",
        headers={"Retry-After": str(RETRY_AFTER_S)},
        kind="body_budget",
    )


BUDGET = web.AppKey("body_budget", ByteBudget)
HELD_BODY = web.RequestKey("held_body", Held)


def held(request: web.Request) -> Held:
    """This request's share of the budget (made on first use)."""
    share = request.get(HELD_BODY)
    if share is None:
        share = request[HELD_BODY] = Held(request.app[BUDGET])
    return share


def release(request: web.Request) -> None:
    """Give back whatever this request still holds (its body was forwarded, or it ended)."""
    share = request.get(HELD_BODY)
    if share is not None:
        share.release()


class TooSlow(Exception):
    """A body broke a time limit: `phase` is `body` (a pause too long) or `body_rate` (too slow
    on average), `detail` what the client is told."""

    def __init__(self, phase: str, detail: str) -> None:
        super().__init__(detail)
        self.phase = phase
        self.detail = detail


class Pace:
    """The time limits on one body's parts: no pause longer than `body_timeout`, and, after
    `body_rate_grace` of waiting, `min_body_rate` bytes a second or more on average."""

    __slots__ = ("_limits", "received", "waited_s")

    def __init__(self, limits: Clients) -> None:
        self._limits = limits
        self.received = 0
        self.waited_s = 0.0  # time spent waiting for the client's bytes, and only that

    def _allowance(self) -> tuple[float, str, str]:
        """How long the next part may take to come, the limit's phase and the 408's detail."""
        limits = self._limits
        pause_s = limits.body_timeout
        if limits.min_body_rate > 0:
            # The average falls below the rate once the waiting time passes received / rate.
            due_s = max(limits.body_rate_grace, self.received / limits.min_body_rate)
            rate_s = max(due_s - self.waited_s, 0.0)
            if rate_s < pause_s:
                return (
                    rate_s,
                    "body_rate",
                    f"the body must arrive at {limits.min_body_rate} bytes a second or more",
                )
        return pause_s, "body", f"each part of the body must arrive within {pause_s:g}s"

    async def read(self, content: StreamReader) -> bytes:
        """The body's next part (b"" at its end); `TooSlow` when it is late."""
        limit_s, phase, detail = self._allowance()
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit_s):
                chunk = await content.readany()
        except TimeoutError:
            raise TooSlow(phase, detail) from None
        self.waited_s += time.monotonic() - started
        self.received += len(chunk)
        return chunk
