"""Whether each broker source is read: behind `sidecar_source_up{source}`, `/readyz`, and the
reason a held call gives when it falls back to its 202.

A source is up while every read of it this process runs (the waiters', and the webhooks' when
webhooks run) is connected. A source no route waits on is not watched.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from .base import Role


class SourceHealth:
    """The state of every read of every source of one process."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.up_gauge = Gauge(
            "sidecar_source_up",
            "1 while every read of a broker source (the waiters', the webhooks') is connected, "
            "else 0, by source. Absent without sources.",
            ["source"],
            multiprocess_mode="livemin",
            registry=registry,
        )
        self._reads: dict[tuple[str, Role], str | None] = {}  # None: up; else why it is down
        self.changed = asyncio.Event()  # set at every change (tests and probes await it)

    def watch(self, source: str, role: Role) -> None:
        """Start watching one read (down until it says it is connected)."""
        self._reads.setdefault((source, role), "not connected yet")
        self._publish(source)

    def forget(self, source: str, role: Role) -> None:
        """Stop watching one read (its loop ended, or its source has no stream any more)."""
        self._reads.pop((source, role), None)
        self._publish(source)

    def mark(self, source: str, role: Role, why_down: str | None) -> None:
        """Say one read is connected (`why_down` None) or is not, and why."""
        if self._reads.get((source, role), "") != why_down:
            self._reads[(source, role)] = why_down
            self._publish(source)

    def is_up(self, source: str) -> bool:
        """True while every watched read of `source` is connected (or none is watched)."""
        return all(why is None for (name, _), why in self._reads.items() if name == source)

    def down(self) -> dict[str, str]:
        """Every source not up, with the reasons of its reads."""
        out: dict[str, str] = {}
        for (name, role), why in sorted(self._reads.items()):
            if why is not None:
                said = f"{role}' read: {why}"
                out[name] = f"{out[name]}; {said}" if name in out else f"the {said}"
        return out

    def _publish(self, source: str) -> None:
        watched = any(name == source for name, _ in self._reads)
        if watched:
            self.up_gauge.labels(source).set(1 if self.is_up(source) else 0)
        else:
            with contextlib.suppress(KeyError):
                self.up_gauge.remove(source)
        self.changed.set()
        self.changed = asyncio.Event()


SOURCE_HEALTH = web.AppKey("source_health", SourceHealth)
