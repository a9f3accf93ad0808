"""Operations: what the sidecar keeps of each synchronised call beyond its tracking record, so
that a retry runs nothing twice, a 202 can point at the sidecar itself, and one timeline shows
every step of a call.

    records   what is kept, decoded: an operation, its outcome, the hold of an Idempotency-Key
    writer    events, outcomes and key holds, group-committed (no round trip of a call's own)
    store     reads, taking over a key a dead call left, expunging an operation

The Redis keys are in `sidecar.keys` (`{prefix}:op:`, `:optoken:`, `:idem:`); the events of a
timeline and the writes that ride a call's tracking record in `sidecar.timeline`. The HTTP
sides live above: `sync.idempotency` and `sync.status` on the proxy listener, the timeline and
the operator's expunge in `admin.operations`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from ..config import Route, Settings
from ..connections import Client
from .store import OperationStore
from .writer import OperationWriter

IDEMPOTENCY_RESULTS = (
    "new",  # the first call with the key: forwarded
    "attach",  # a retry while the first was held: answered like it
    "replay",  # a retry after the outcome: the outcome again
    "mismatch",  # the key with another request: 422
    "in_progress",  # still forwarding when the retry's budget ended: 409
    "released",  # the first call ended in a 5xx: the key was let go
    "invalid",  # an empty, overlong or repeated key: 400
    "unavailable",  # Redis did not answer: forwarded without a claim
)
STATUS_RESULTS = ("pending", "succeeded", "failed", "not_found")


class OperationMetrics:
    """`sidecar_idempotent_requests_total` and `sidecar_operation_status_reads_total`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._series: dict[tuple[str, str], Any] = {}
        self.idempotent = Counter(
            "sidecar_idempotent_requests",
            "Calls that carried an Idempotency-Key, by route and result (new, attach, replay, "
            "mismatch, in_progress, released, invalid, unavailable).",
            ["route", "result"],
            registry=registry,
        )
        self.status_reads = Counter(
            "sidecar_operation_status_reads",
            "GETs of the sidecar's status monitor, by result (pending, succeeded, failed, "
            "not_found).",
            ["result"],
            registry=registry,
        )

    def count(self, route: str, result: str) -> None:
        """One more call with an Idempotency-Key (the labelled child looked up once: routes
        and results are bounded)."""
        child = self._series.get((route, result))
        if child is None:
            child = self._series[(route, result)] = self.idempotent.labels(route, result)
        child.inc()

    def follow(self, settings: Settings) -> None:
        """A config reload: the new routes' series at 0 too."""
        self.initialise(settings.routes)

    def initialise(self, routes: list[Route]) -> None:
        """Every series at 0 from the start (dashboards show 0, not "no data")."""
        for route in routes:
            if route.idempotency is not None:
                for result in IDEMPOTENCY_RESULTS:
                    self.idempotent.labels(route.name, result)
        for result in STATUS_RESULTS:
            self.status_reads.labels(result)


@dataclass(frozen=True, slots=True)
class Operations:
    """The operations services of one app (present only with Redis)."""

    store: OperationStore
    writer: OperationWriter
    metrics: OperationMetrics

    @classmethod
    def create(cls, redis: Client, settings: Settings, registry: CollectorRegistry) -> Operations:
        """The services over `redis`, their metrics on `registry`."""
        metrics = OperationMetrics(registry)
        metrics.initialise(settings.routes)
        prefix = settings.key_prefix
        return cls(OperationStore(redis, prefix), OperationWriter(redis, prefix), metrics)


OPERATIONS: web.AppKey[Operations | None] = web.AppKey("operations")

__all__ = ["OPERATIONS", "OperationMetrics", "OperationStore", "OperationWriter", "Operations"]
