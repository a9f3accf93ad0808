"""When a webhook is retried: the schedule with its jitter, slowing down, Retry-After, the end."""

from __future__ import annotations

import pytest

from sidecar.webhooks.attempt import AttemptResult
from sidecar.webhooks.retry import RETRY_AFTER_MAX_S, decide, is_slow, next_delay

SCHEDULE = [10.0, 100.0]


def failed(
    status: int | None = 500, error: str = "http", retry_after_s: float | None = None
) -> AttemptResult:
    return AttemptResult(status, 0.0, error, retry_after_s=retry_after_s)


def test_each_delay_is_the_schedule_within_20_percent() -> None:
    delays = [next_delay([10.0], 1, failed()) for _ in range(200)]
    assert all(d is not None and 8.0 <= d <= 12.0 for d in delays)
    assert max(d for d in delays if d) - min(d for d in delays if d) > 1.0  # jitter, not constant


def test_429_502_504_double_the_delay_and_retry_after_is_honoured_up_to_an_hour() -> None:
    for status in (429, 502, 504):
        delay = next_delay([10.0], 1, failed(status))
        assert delay is not None and 16.0 <= delay <= 24.0
    assert next_delay([0.05, 0.1], 1, failed(429, retry_after_s=7)) == 7
    assert next_delay([0.05], 1, failed(503, retry_after_s=10**9)) == RETRY_AFTER_MAX_S


@pytest.mark.parametrize(
    ("result", "attempt", "trigger", "expected"),
    [
        (AttemptResult(204, 0.0), 1, "scheduled", ("delivered", "delivered")),
        (failed(410), 1, "scheduled", ("failed", "disabled")),
        (failed(500), 1, "manual", ("failed", "failed")),
        (failed(500), 1, "recover", ("failed", "failed")),
        (failed(500), 2, "scheduled", ("scheduled", "retry")),
        (failed(500), 3, "scheduled", ("failed", "dead")),
        (failed(None, "timeout"), 1, "test", ("scheduled", "retry")),
    ],
)
def test_what_follows_an_attempt(
    result: AttemptResult, attempt: int, trigger: str, expected: tuple[str, str]
) -> None:
    decision = decide(SCHEDULE, attempt, trigger, result)
    assert (decision.state, decision.outcome) == expected
    assert (decision.delay_s is not None) == (decision.outcome == "retry")


@pytest.mark.parametrize(
    ("result", "slow"),
    [
        (failed(None, "timeout"), True),
        (failed(None, "connect"), True),
        (failed(503), True),
        (failed(429), True),
        (failed(404), False),
        (AttemptResult(200, 0.0), False),
    ],
)
def test_an_endpoint_is_slow_after_timeouts_refusals_5xx_and_429(
    result: AttemptResult, slow: bool
) -> None:
    assert is_slow(result) is slow
