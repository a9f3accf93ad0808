"""The config's scalar types (sidecar/config/types.py): durations."""

from __future__ import annotations

import re

import pytest

from sidecar.config import parse_duration

from .support import settings_of

# --------------------------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5", 1.5),
        (" 1.5s ", 1.5),
        (1.5, 1.5),
        (3, 3.0),
        ("3", 3.0),
        (0, 0.0),
    ],
)
def test_duration_parses(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert settings_of(f"shutdown_grace: {value!r}").shutdown_grace == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "invalid duration 'soon' (use 250ms, 10s, 2m or seconds)"),
        ("1d", "invalid duration '1d' (use 250ms, 10s, 2m or seconds)"),
        ("-1s", "invalid duration '-1s' (use 250ms, 10s, 2m or seconds)"),
        ("", "invalid duration '' (use 250ms, 10s, 2m or seconds)"),
        (-2, "invalid duration -2 (must not be negative)"),
        (None, "invalid duration None (use 250ms, 10s, 2m or seconds)"),
        (False, "invalid duration False (use 250ms, 10s, 2m or seconds)"),
    ],
)
def test_duration_refuses(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(value)
