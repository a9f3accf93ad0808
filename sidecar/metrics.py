"""Prometheus metrics. One `Metrics` per app, on its own registry (a fresh one per app in tests).

Labels are bounded: route names (from config), outcomes, reasons, status classes; never ids or URLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from .config import Route

# Buckets in seconds: sub-millisecond proxying up to the longest sensible budget.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

OUTCOMES = (
    "sync_success",
    "sync_failure",
    "fallback_async",
    "passthrough",
    "upstream_error",
    "client_gone",
    "rejected",
    "redis_fault",
    "internal_error",
)


FALLBACK_REASONS = (
    "budget",
    "prefer",
    "shed",
    "redis",
    "source",
    "no_id",
    "location",
    "bad_location",
    "ambiguous_id",
)
STREAM_RESULTS = ("matched", "unmatched", "ignored", "malformed")


def status_class(status: int) -> str:
    """`2xx`, `4xx`, … a bounded label for a status code."""
    return f"{status // 100}xx"


M = TypeVar("M", bound=MetricWrapperBase)


@dataclass(frozen=True, slots=True)
class CallSeries:
    """The series one finished call updates (looked up once per route, outcome and class)."""

    requests: Any
    duration: Any


class Metrics:
    """Every metric the sidecar exports, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None, *, redis: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._call_series: dict[tuple[str, str, int], CallSeries] = {}
        self._series: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        # A gauge, not an Info: it is the same sample, and works across worker processes.
        self.build_info = Gauge(
            "sidecar_build_info",
            "Sidecar version.",
            ["version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.requests = Counter(
            "sidecar_requests",
            "Proxied requests by route and outcome.",
            ["route", "outcome", "status_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            "sidecar_request_duration_seconds",
            "Time from request to answer headers, by route and outcome.",
            ["route", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.internal_errors = Counter(
            "sidecar_internal_errors",
            "Requests that met a bug of ours (answered 500 problem+json), by listener.",
            ["listener"],
            registry=r,
        )
        self.redis_faults = Counter(
            "sidecar_redis_faults",
            "Redis faults met (Redis away, slow, read-only or failing over), by where: call, "
            "tracking, tracking_backlog, completion_reader, webhook_loop, background, loop.",
            ["where"],
            registry=r,
        )
        self.tracking_backlog = Counter(
            "sidecar_tracking_backlog",
            "Tracking records whose write failed on a Redis fault, by outcome: kept (to write "
            "again), written (late, once Redis answered), dropped.",
            ["outcome"],
            registry=r,
        )
        self.tracking_backlog_dropped = Counter(
            "sidecar_tracking_backlog_dropped",
            "Kept tracking records given up, by reason: full, expired, foreign (the id is "
            "another call's by then), error, shutdown.",
            ["reason"],
            registry=r,
        )
        self.tracking_backlog_size = Gauge(
            "sidecar_tracking_backlog_size",
            "Tracking records kept now, waiting for Redis.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.stale_consumers_removed = Counter(
            "sidecar_stale_consumers_removed",
            "Consumers of replicas that are gone removed from the consumer groups, by group: "
            "dispatch (completion streams), delivery (subscriptions' queues).",
            ["group"],
            registry=r,
        )
        self.readiness = Gauge(
            "sidecar_readiness",
            "1 for the state /readyz answered last: ready, degraded (200, naming what is "
            "missing), not_ready (503); 0 for the others.",
            ["state"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.client_connections = Gauge(
            "sidecar_client_connections",
            "Client connections open now, by listener (proxy, admin).",
            ["listener"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.client_refused = Counter(
            "sidecar_client_connections_refused",
            "Client connections closed at once because clients.max_connections were open, "
            "by listener.",
            ["listener"],
            registry=r,
        )
        self.client_address_refused = Counter(
            "sidecar_client_connections_refused_per_address",
            "Client connections closed at once because their address already held "
            "clients.max_connections_per_address, by listener.",
            ["listener"],
            registry=r,
        )
        self.client_timeouts = Counter(
            "sidecar_client_timeouts",
            "Clients too slow to send their request, by listener and phase (idle: nothing "
            "sent; headers; body: a pause too long; body_rate: under clients.min_body_rate), "
            "answered 408 (idle: closed) and disconnected.",
            ["listener", "phase"],
            registry=r,
        )
        self.body_bytes = Gauge(
            "sidecar_body_buffer_bytes",
            "Bytes of request bodies held in memory now (bounded by clients.buffer_budget).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.body_budget_refused = Counter(
            "sidecar_body_budget_refused",
            "Calls answered 503 because their body did not fit in clients.buffer_budget, by route.",
            ["route"],
            registry=r,
        )
        self.malformed_requests = Counter(
            "sidecar_malformed_requests",
            "Requests that could not be parsed (answered 400 problem+json), by listener.",
            ["listener"],
            registry=r,
        )
        self.in_flight = Gauge(
            "sidecar_requests_in_flight",
            "Requests being handled now.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.upstream_errors = Counter(
            "sidecar_upstream_errors",
            "Upstream calls that failed, by route and kind (connect, timeout, protocol).",
            ["route", "kind"],
            registry=r,
        )
        self.fallbacks = Counter(
            "sidecar_fallbacks",
            "Synchronised calls answered 202, by route and reason (budget, prefer, shed, redis, "
            "source: the route's broker source was not read).",
            ["route", "reason"],
            registry=r,
        )
        self.wait_duration = Histogram(
            "sidecar_wait_duration_seconds",
            "Time a synchronised call waited for its completion, by route and outcome.",
            ["route", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.misconfigured = Counter(
            "sidecar_route_misconfiguration_suspected",
            "Calls that ran out of budget while their stream carried completion events for ids "
            "no call waited on (usually a wrong correlation.source or wait.stream.id_field), "
            "by route.",
            ["route"],
            registry=r,
        )
        self.credential_checks = Counter(
            "sidecar_credential_checks",
            "Client credentials the upstream was asked about (tenancy.verify), by result: "
            "admitted, refused, error (no usable answer).",
            ["result"],
            registry=r,
        )
        self.ambiguous_ids = Counter(
            "sidecar_ambiguous_operation_ids",
            "Calls whose operation id (from the 202's Location or body) another live call "
            "already waits on: the upstream, or correlation.pattern, does not tell them apart; "
            "such a call takes no completion by that id, only what its own poll learns. By "
            "route.",
            ["route"],
            registry=r,
        )
        self.correlation_replaced = Counter(
            "sidecar_correlation_ids_replaced",
            "Client correlation ids a synchronised call could not use (a new one was minted), "
            "by route and reason (in_use, redis, no_redis).",
            ["route", "reason"],
            registry=r,
        )
        self.waiting = Gauge(
            "sidecar_waiting_requests",
            "Requests held waiting now, by route.",
            ["route"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.stream_events = Counter(
            "sidecar_stream_events",
            "Completion events read, by stream and result (matched, unmatched, ignored, "
            "malformed).",
            ["stream", "result"],
            registry=r,
        )
        self.max_waiting = Gauge(
            "sidecar_route_max_waiting",
            "The route's max_waiting: held calls past this are answered 202 at once, by route.",
            ["route"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.stream_lag = Gauge(
            "sidecar_stream_lag_seconds",
            "Age of the newest completion event the reader has handled when it read it (0 when "
            "caught up), by stream.",
            ["stream"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.recent_bytes = Gauge(
            "sidecar_stream_cache_bytes",
            "Bytes held by the recent-completion cache (bounded by stream_reader.recent_bytes).",
            multiprocess_mode="livesum",
            registry=r,
        )
        # Only with a Redis to watch (absent, not a false 0, without redis_url).
        self.redis_up: Gauge | None = None
        if redis:
            self.redis_up = Gauge(
                "sidecar_redis_up",
                "1 when Redis answers a PING (probed every second), else 0. Absent without "
                "redis_url.",
                multiprocess_mode="livemin",
                registry=r,
            )
        self.config_reloads = Counter(
            "sidecar_config_reloads",
            "Config reloads by result (ok, failed).",
            ["result"],
            registry=r,
        )
        self.polls = Counter(
            "sidecar_polls",
            "Location polls by route and result (pending, done, failed, error).",
            ["route", "result"],
            registry=r,
        )
        self.poll_completions = Counter(
            "sidecar_poll_completions",
            "Completions detected by polling, by route and status (succeeded, failed).",
            ["route", "status"],
            registry=r,
        )
        self.poll_detect_duration = Histogram(
            "sidecar_poll_detect_seconds",
            "Time from the 202 to a poll detecting the completion, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def call_series(self, route: str, outcome: str, status: int) -> CallSeries:
        """The request counter and duration histogram of (route, outcome, status class),
        looked up in prometheus_client once and kept (labels are bounded)."""
        key = (route, outcome, status // 100)
        series = self._call_series.get(key)
        if series is None:
            series = CallSeries(
                self.requests.labels(route, outcome, status_class(status)),
                self.request_duration.labels(route, outcome),
            )
            self._call_series[key] = series
        return series

    def series(self, metric: M, *labels: str) -> M:
        """`metric.labels(*labels)`, looked up in prometheus_client once and kept: for the hot
        path, where labels come from the config and fixed sets (so they are bounded)."""
        key = (id(metric), labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*labels)
        return child

    def initialise(self, routes: list[Route]) -> None:
        """Create the series every sync route will have at 0, so that `rate()` and
        `increase()` see their first event and dashboards show 0, not "no data"."""
        for route in routes:
            if not route.is_sync or route.wait is None:
                continue
            for reason in FALLBACK_REASONS:
                self.fallbacks.labels(route.name, reason)
            for outcome in ("sync_success", "sync_failure", "fallback_async"):
                self.requests.labels(
                    route.name, outcome, "2xx" if outcome != "sync_failure" else "5xx"
                )
            self.waiting.labels(route.name)
            self.misconfigured.labels(route.name)
            self.ambiguous_ids.labels(route.name)
            if route.wait.stream is not None:
                for result in STREAM_RESULTS:
                    self.stream_events.labels(route.wait.stream.stream_id, result)


METRICS = web.AppKey("metrics", Metrics)
