"""Webhook metrics, registered on the proxy app's registry (`app[METRICS].registry`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..metrics import LATENCY_BUCKETS

QUOTAS = (
    "subscriptions",
    "test_sends",
    "subscriptions_total",
    "test_sends_total",
    "test_bytes_total",
)


class WebhookMetrics:
    """`sidecar_webhook_*`: attempts, latency, queue depth, dead letters, disabled subscriptions."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.attempts = Counter(
            "sidecar_webhook_attempts",
            "Delivery attempts by event type and result (delivered, retry, dead, disabled, "
            "failed).",
            ["event_type", "result"],
            registry=r,
        )
        self.latency = Histogram(
            "sidecar_webhook_delivery_latency_seconds",
            "Time from the completion to its first 2xx delivery.",
            buckets=(*LATENCY_BUCKETS, 300, 1800, 7200, 36000),
            registry=r,
        )
        self.queue_depth = Gauge(
            "sidecar_webhook_queue_depth",
            "Attempts waiting, by queue (outbox, scheduled).",
            ["queue"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.dead_completions = Counter(
            "sidecar_webhook_completions_dead_lettered",
            "Completions that could not be turned into webhook messages, set aside one by one "
            "(recorded in the dead-completions stream, acknowledged, never retried), by reason: "
            "malformed (they cannot be decoded, or their data is past the limits) or unsendable "
            "(their payload could not be made).",
            ["reason"],
            registry=r,
        )
        self.held = Gauge(
            "sidecar_webhook_completions_held",
            "Completions read and not yet handed to the outbox (unacknowledged: their call's "
            "record is awaited, or Redis is down), by source (redis, or a sources: name).",
            ["source"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.dead_letters = Counter(
            "sidecar_webhook_dead_letters", "Messages that failed their last attempt.", registry=r
        )
        self.dead_lettered = Counter(
            "sidecar_webhook_messages_dead_lettered",
            "Messages dead-lettered, by reason: retries_exhausted (failed its last attempt), "
            "record_lost (its record vanished from Redis during its attempt), "
            "record_incomplete (found without its body before an attempt).",
            ["reason"],
            registry=r,
        )
        self.stale_outcomes = Counter(
            "sidecar_webhook_stale_outcomes",
            "Attempt outcomes dropped because the attempt outlived its claim (another consumer "
            "took the entry over meanwhile); nothing of them was recorded.",
            registry=r,
        )
        self.disabled = Counter(
            "sidecar_webhook_subscriptions_disabled",
            "Subscriptions the sidecar disabled, by reason (gone: the receiver answered 410; "
            "failing: every attempt failed for webhooks.disable_after).",
            ["reason"],
            registry=r,
        )
        self.quota_refusals = Counter(
            "sidecar_webhook_quota_refusals",
            "Admin API requests refused by a quota, by quota: a client's own (subscriptions, "
            "test_sends) or all clients' together (subscriptions_total, test_sends_total, "
            "test_bytes_total).",
            ["quota"],
            registry=r,
        )

        self.breakers_open = Gauge(
            "sidecar_webhook_breakers_open",
            "Endpoints whose circuit breaker is open or half-open in this process (their "
            "messages wait without taking a slot).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.breaker_transitions = Counter(
            "sidecar_webhook_breaker_transitions",
            "Circuit breaker changes of state, by the state entered (open, half_open, closed).",
            ["to"],
            registry=r,
        )
        self.trimmed = Counter(
            "sidecar_webhook_log_entries_trimmed",
            "Log entries older than webhooks.retention.attempts trimmed, by log (owner, all, "
            "subscription, dead).",
            ["log"],
            registry=r,
        )

    def initialise(self, event_types: list[str]) -> None:
        """Create the series of known event types at 0 (see `Metrics.initialise`)."""
        for event_type in event_types:
            for result in ("delivered", "retry", "dead", "disabled", "failed"):
                self.attempts.labels(event_type, result)
        for reason in ("gone", "failing"):
            self.disabled.labels(reason)
        for reason in ("retries_exhausted", "record_lost", "record_incomplete"):
            self.dead_lettered.labels(reason)
        for quota in QUOTAS:
            self.quota_refusals.labels(quota)
        for reason in ("malformed", "unsendable"):
            self.dead_completions.labels(reason)
        for queue in ("outbox", "scheduled"):
            self.queue_depth.labels(queue)
        for state in ("open", "half_open", "closed"):
            self.breaker_transitions.labels(state)
        for log in ("owner", "all", "subscription", "dead"):
            self.trimmed.labels(log)
