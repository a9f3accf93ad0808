"""The `operations:` block: the sidecar's own status monitor, where a fallback 202 can point
(`respond.location: sidecar`), and how long what it answers is kept."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from .types import ByteSize, Duration, Model

# Unreserved characters and slashes only: the path is compared as sent, never decoded.
_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
MAX_RESULT = 64 * 1024 * 1024  # bytes kept per operation at most: Redis holds them all


class Operations(Model):
    """The status monitor on the proxy listener: `GET {path}/{token}`."""

    path: str = Field(
        "/.sidecar/operations",
        description="Path prefix of the status monitor on the proxy listener (its paths "
        "never reach the upstream). Segments of letters, digits and . _ ~ -. "
        "Default /.sidecar/operations.",
    )
    retention: Duration = Field(
        86400.0,
        gt=0,
        description="How long a status URL answers (and its result is kept) after the 202. "
        "Duration. Default 24h.",
    )
    max_result: ByteSize = Field(
        1024 * 1024,
        ge=0,
        description="Largest result (event data, or a resource body) kept per operation for "
        "the status monitor and idempotent replays; a larger one is not kept, and reading it "
        "later answers 410 (or 303 to the API's own Location). At most 64MiB. Default 1MiB.",
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not _PATH.match(value):
            raise ValueError(
                f"invalid path {value!r} (like /.sidecar/operations: segments of letters, "
                "digits and . _ ~ -, no trailing slash)"
            )
        return value

    @field_validator("max_result")
    @classmethod
    def _max_result(cls, value: int) -> int:
        if value > MAX_RESULT:
            raise ValueError(f"at most 64MiB ({MAX_RESULT} bytes), not {value} bytes")
        return value
