"""`webhooks.retention` and `webhooks.breaker` as an operator meets them: their defaults, the
durations they take, and their mistakes in the exact words a user reads."""

from __future__ import annotations

import pytest

from .support import problems_of, settings_of

WEEK_S = 7 * 86400.0


def test_retention_and_breaker_default_to_what_the_reference_file_says() -> None:
    webhooks = settings_of("{}").webhooks
    assert (webhooks.retention.messages, webhooks.retention.attempts) == (WEEK_S, WEEK_S)
    breaker = webhooks.breaker
    assert (breaker.enabled, breaker.failures, breaker.window) == (True, 5, 60.0)
    assert (breaker.open_for, breaker.linger_after) == ([5.0, 30.0, 120.0, 300.0], 2.0)


def test_retention_takes_durations() -> None:
    retention = settings_of("webhooks: {retention: {messages: 48h, attempts: 90m}}").webhooks
    assert (retention.retention.messages, retention.retention.attempts) == (172800.0, 5400.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "webhooks: {retention: {messages: 500ms}}",
            "webhooks.retention.messages: must be between 1s and 2160h (90 days), not 500ms",
        ),
        (
            "webhooks: {retention: {attempts: 2161h}}",
            "webhooks.retention.attempts: must be between 1s and 2160h (90 days), not 2161h",
        ),
        (
            "webhooks: {retention: {attempts: 7d}}",
            "webhooks.retention.attempts: invalid duration '7d' (use 250ms, 10s, 2m or seconds)",
        ),
        (
            "webhooks: {retention: {message: 1h}}",
            "webhooks.retention.message: unknown key (check the spelling against "
            "config/sidecar.yaml)",
        ),
        (
            "webhooks: {breaker: {failures: 0}}",
            "webhooks.breaker.failures: Input should be greater than or equal to 1",
        ),
        (
            "webhooks: {breaker: {open_for: []}}",
            "webhooks.breaker.open_for: List should have at least 1 item after validation, not 0",
        ),
        (
            "webhooks: {breaker: {open_for: [5s, 0]}}",
            "webhooks.breaker.open_for[1]: must be more than 0s and at most 24h, not 0s",
        ),
    ],
    ids=["too-short", "too-long", "days", "typo", "no-failures", "no-delays", "zero-delay"],
)
def test_retention_and_breaker_mistakes_are_named(text: str, expected: str) -> None:
    assert problems_of(text) == [expected]
