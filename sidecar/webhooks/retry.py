"""When a webhook is retried, and what an attempt's result means for its message and endpoint.

    2xx                      delivered
    410 Gone                 failed; the subscription is disabled at once
    a manual or recover try  failed (made once, never retried)
    anything else            retried after the next delay of `webhooks.schedule` (±20 % jitter),
                             doubled after 429/502/504, never before a `Retry-After` (at most
                             an hour); past the last delay the message is dead (dead-lettered)

An attempt that timed out, could not connect, or got a 5xx or 429 marks its endpoint slow: the
delivery workers then give it one slot, not `per_subscription` (see `planner`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .attempt import AttemptResult

SLOW_DOWN = frozenset({429, 502, 504})
RETRY_AFTER_MAX_S = 3600.0  # a receiver cannot push an attempt further than this
JITTER = 0.2
SLOW_ERRORS = frozenset({"timeout", "connect", "dns", "refused", "tls"})

State = Literal["delivered", "failed", "scheduled"]
Outcome = Literal["delivered", "disabled", "failed", "dead", "retry"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What follows from one attempt: the message's state, the attempt's outcome, and when the
    next attempt is due (seconds from now) if there is one."""

    state: State
    outcome: Outcome
    delay_s: float | None = None


def decide(
    schedule: Sequence[float],
    attempt: int,
    trigger: str,
    result: AttemptResult,
    rng: random.Random | None = None,
) -> Decision:
    """The decision after attempt `attempt` (1-based) made by `trigger`."""
    if result.delivered:
        return Decision("delivered", "delivered")
    if result.gone:
        return Decision("failed", "disabled")
    if trigger in ("manual", "recover"):
        return Decision("failed", "failed")
    delay = next_delay(schedule, attempt, result, rng)
    if delay is None:
        return Decision("failed", "dead")
    return Decision("scheduled", "retry", delay)


def next_delay(
    schedule: Sequence[float], attempt: int, result: AttemptResult, rng: random.Random | None = None
) -> float | None:
    """Seconds until the next attempt after failed attempt `attempt` (1-based), or None: dead."""
    if attempt > len(schedule):
        return None
    delay = schedule[attempt - 1] * (rng or random).uniform(1 - JITTER, 1 + JITTER)
    if result.status in SLOW_DOWN:
        delay *= 2
    if result.retry_after_s is not None:
        delay = max(delay, min(result.retry_after_s, RETRY_AFTER_MAX_S))
    return delay


def is_slow(result: AttemptResult) -> bool:
    """True when an attempt suggests the endpoint is down or overloaded."""
    return result.error in SLOW_ERRORS or (
        result.status is not None and (result.status >= 500 or result.status == 429)
    )
