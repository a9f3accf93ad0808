"""The `Prefer` request header (RFC 7240): `respond-async` and `wait=N`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preferences:
    """What the client asked for; unknown preferences are ignored, as the RFC requires."""

    respond_async: bool = False
    wait_s: float | None = None


def parse_prefer(values: Iterable[str]) -> Preferences:
    """Parse every `Prefer` header; the first occurrence of a preference wins."""
    respond_async = False
    wait_s: float | None = None
    seen: set[str] = set()
    for value in values:
        for item in value.split(","):
            token = item.split(";", 1)[0].strip()
            if not token:
                continue
            name, _, raw = token.partition("=")
            name = name.strip().lower()
            if name in seen:
                continue
            seen.add(name)
            raw = raw.strip().strip('"')
            if name == "respond-async":
                respond_async = True
            elif name == "wait":
                try:
                    parsed = float(raw)
                except ValueError:
                    continue
                if parsed >= 0:
                    wait_s = parsed
    return Preferences(respond_async, wait_s)
