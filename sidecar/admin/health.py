"""The admin listener's own endpoints: liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ..workers import METRICS_ENV
from .endpoints import answer, endpoint
from .services import services
from .views import Health, Readiness

HEALTH = "health"
STATES = ("ready", "degraded", "not_ready")  # of `sidecar_readiness{state}`


@endpoint(
    "get",
    "/healthz",
    "healthz",
    "The process is up",
    HEALTH,
    access="public",
    answer=Health,
    prefix="",
)
async def healthz(request: web.Request) -> web.Response:
    """The process is up."""
    return answer(Health(status="ok"))


@endpoint(
    "get",
    "/readyz",
    "readyz",
    "Ready to serve (503: not ready, the reasons say why)",
    HEALTH,
    access="public",
    answer=Readiness,
    also=frozenset({503}),
    prefix="",
)
async def readyz(request: web.Request) -> web.Response:
    """Ready when the config is loaded and, if configured, Redis answers, the completion
    reader is connected and every broker source is read. What is missing is named; it makes
    the answer 503 only when `readiness` requires it (else "ready (degraded)": the replica
    still serves, calls fall back to 202)."""
    found = services(request)
    reasons: dict[str, str] = {}
    sources: dict[str, str] = {}
    if found.sources is not None:
        sources = {f"source {name}": why for name, why in found.sources.down().items()}
    if found.redis is not None:
        for node, why in (await found.redis.nodes_down()).items():
            reasons[f"redis {node}"] = f"Redis does not answer: {why}"
        hub = found.hub
        if hub is not None and hub.streams and not hub.connected.is_set():
            reasons["stream_reader"] = "the completion reader is not connected to Redis"
    readiness = found.settings.readiness
    # What is named without taking the sidecar out of service: calls degrade to the 202.
    tolerated = {
        **({} if readiness.require_redis else reasons),
        **({} if readiness.require_sources else sources),
    }
    reasons.update(sources)
    state = "ready"
    if reasons:
        state = "degraded" if len(tolerated) == len(reasons) else "not_ready"
    gauge = found.metrics.readiness
    for each in STATES:
        gauge.labels(each).set(1 if each == state else 0)
    if state == "ready":
        return answer(Readiness(status="ready", reasons=reasons))
    if state == "degraded":
        return answer(Readiness(status="ready (degraded)", reasons=reasons))
    return answer(Readiness(status="not ready", reasons=reasons), 503)


@endpoint(
    "get",
    "/metrics",
    "metrics",
    "Prometheus metrics (text exposition format)",
    HEALTH,
    access="public",
    media="text/plain",
    prefix="",
)
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition: this app's own registry, or, with workers, every worker's
    samples summed (whichever worker answers)."""
    registry = services(request).metrics.registry
    if METRICS_ENV in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
