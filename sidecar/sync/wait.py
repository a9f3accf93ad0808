"""The one wait primitive of the call path, shared by synchronised calls and long-polls.

A call waits on a stream waiter and/or a poll task; `wait_for_completion` races them against
the budget and returns the first verdict (or None when the budget ran out). The client going
away cancels the handler (`handler_cancellation`), and with it the wait, at once. `HeldCalls`
counts the calls each route holds in this process, against its `max_waiting`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..completions.completion import Completion
from ..completions.hub import CompletionHub, Waiter
from ..completions.poll import PollAnswer
from ..config import StreamWait
from ..metrics import Metrics


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a call ended: its completion, and the poll's final answer when a poll decided."""

    completion: Completion
    answer: PollAnswer | None = None


PollTask = asyncio.Task[Verdict | None]


class HeldCalls:
    """Calls held per route in this process (load shedding counts against `max_waiting`)."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    def take(self, route: str, limit: int) -> bool:
        """Take a slot of `route`; False (nothing taken) when it holds `limit` already."""
        held = self._held.get(route, 0)
        if held >= limit:
            return False
        self._held[route] = held + 1
        return True

    def release(self, route: str) -> None:
        """Give back a slot taken by `take`."""
        self._held[route] -= 1

    def __getitem__(self, route: str) -> int:
        return self._held.get(route, 0)


HELD = web.AppKey("held", HeldCalls)


class Waits:
    """What one call waits on. `close()` it in a `finally`: it unregisters the waiter and stops
    a poll nobody else needs."""

    __slots__ = ("_hub", "_owns_poll", "poll", "waiter")

    def __init__(self, hub: CompletionHub | None) -> None:
        self._hub = hub
        self.waiter: Waiter | None = None
        self.poll: PollTask | None = None
        self._owns_poll = False

    def listen(self, spec: StreamWait, wait_id: str, *, cached: bool) -> bool:
        """Wait for `wait_id`'s event on the route's stream (when the hub runs). With `cached`,
        an event the hub saw shortly before counts too (the id was learnt from the 202)."""
        if self._hub is None or self.waiter is not None:
            return self.waiter is not None
        self.waiter = self._hub.add(spec, wait_id, cached=cached)
        return True

    def follow(self, task: PollTask | None, *, owned: bool) -> None:
        """Also wait for a poll task's verdict; an `owned` task is cancelled on `close()`."""
        self.poll, self._owns_poll = task, owned

    @property
    def empty(self) -> bool:
        """True when there is nothing to wait on (no Redis, no poll)."""
        return self.waiter is None and self.poll is None

    def close(self) -> None:
        """Unregister the waiter; cancel an owned poll."""
        if self.waiter is not None and self._hub is not None:
            self._hub.discard(self.waiter)
            self.waiter = None
        if self.poll is not None and self._owns_poll and not self.poll.done():
            self.poll.cancel()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


async def _first(waits: Waits, timeout_s: float) -> Verdict | None:
    waiter, poll = waits.waiter, waits.poll
    if poll is None and waiter is not None:
        # The common case, kept lean: no task, set or timeout context per waiting call, just
        # one timer that ends the waiter's future with None when the budget is spent.
        future = waiter.future
        timer = asyncio.get_running_loop().call_later(timeout_s, _expire, future)
        try:
            completion = await future
        finally:
            timer.cancel()
        return None if completion is None else Verdict(completion)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending: set[asyncio.Future[Any]] = {f for f in (waiter and waiter.future, poll) if f}
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        done, pending = await asyncio.wait(
            pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            return None
        if waiter is not None and waiter.future in done:
            completion = waiter.future.result()
            return None if completion is None else Verdict(completion)
        if poll is not None and poll in done and not poll.cancelled() and not poll.exception():
            verdict = poll.result()
            if verdict is not None:
                return verdict
    # Nothing left to wait on (a poll gave up): hold until the budget, as promised.
    await asyncio.sleep(max(0.0, deadline - loop.time()))
    return None


async def wait_for_completion(
    waits: Waits, timeout_s: float, metrics: Metrics, route: str
) -> tuple[Verdict | None, float]:
    """The first verdict within `timeout_s` (None: the budget ran out) and the time waited;
    counted in `sidecar_waiting_requests` meanwhile and in the wait-duration histogram."""
    loop = asyncio.get_running_loop()
    gauge = metrics.series(metrics.waiting, route)
    gauge.inc()
    started = loop.time()
    outcome = "client_gone"
    try:
        verdict = await _first(waits, timeout_s)
        outcome = "completed" if verdict else "budget"
        return verdict, loop.time() - started
    finally:
        gauge.dec()
        metrics.series(metrics.wait_duration, route, outcome).observe(loop.time() - started)
