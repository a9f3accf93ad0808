"""The one timestamp format of payloads, logs and the admin API: ISO 8601, UTC, milliseconds."""

from __future__ import annotations

import time


def iso(ts: float) -> str:
    """`2026-01-31T12:00:00.123Z` for a Unix time in seconds."""
    whole = int(ts)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((ts - whole) * 1000):03d}Z"
    )
