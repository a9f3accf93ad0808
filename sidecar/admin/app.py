"""The admin listener: health, readiness, metrics, the admin API (`/admin/api/`) and the portal
page (`/admin/`).

It shares the proxy's error boundary: every error is problem+json with the correlation header
(the client's `X-Correlation-ID` when well formed, else a new one).
"""

from __future__ import annotations

import os

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ..http.boundary import problem_middleware
from ..http.context import RequestContext
from ..http.headers import correlation_id
from ..metrics import METRICS
from ..routing import RUNTIME
from ..state import HUB, PROXY_APP, REDIS
from ..webhooks.api import setup_admin_routes
from ..workers import METRICS_ENV
from .portal import setup_portal


class AdminListener:
    """How the admin listener begins and ends its requests."""

    def __init__(self, proxy_app: web.Application) -> None:
        self.proxy_app = proxy_app

    @property
    def correlation_header(self) -> str:
        """The correlation header of the live config."""
        return self.proxy_app[RUNTIME].settings.correlation_header

    def begin(self, request: web.Request) -> RequestContext:
        """A request's context: the client's correlation id if well formed, else a new one."""
        return RequestContext(correlation_id(request.headers.get(self.correlation_header)))

    def end(self, request: web.Request, context: RequestContext) -> None:
        """Count bugs of ours (the boundary logged them)."""
        if context.outcome == "internal_error":
            self.proxy_app[METRICS].internal_errors.labels("admin").inc()


async def healthz(request: web.Request) -> web.Response:
    """The process is up."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the config is loaded and, if configured, Redis answers and the completion
    reader is connected; else 503 with the reasons."""
    app = request.app[PROXY_APP]
    reasons: dict[str, str] = {}
    connections = app.get(REDIS)
    if connections is not None:
        for node, why in (await connections.nodes_down()).items():
            reasons[f"redis {node}"] = f"Redis does not answer: {why}"
        hub = app.get(HUB)
        if hub is not None and hub.streams and not hub.connected.is_set():
            reasons["stream_reader"] = "the completion reader is not connected to Redis"
    if not app[RUNTIME].settings.readiness.require_redis:
        # Redis is named, but it does not take the sidecar out of service: calls degrade.
        status = 200
        body = {"status": "ready (degraded)" if reasons else "ready", "reasons": reasons}
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
    status = 503 if reasons else 200
    body = {"status": "not ready" if reasons else "ready", "reasons": reasons}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition: this app's own registry, or, with workers, every worker's
    samples summed (whichever worker answers)."""
    registry = request.app[PROXY_APP][METRICS].registry
    if METRICS_ENV in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def create_admin_app(proxy_app: web.Application) -> web.Application:
    """The admin application; handlers reach shared state through the proxy app."""
    admin = web.Application(middlewares=[problem_middleware(AdminListener(proxy_app))])
    admin[PROXY_APP] = proxy_app
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", metrics)
    setup_admin_routes(admin)
    setup_portal(admin)  # the page at /admin/
    return admin
