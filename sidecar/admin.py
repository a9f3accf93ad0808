"""The admin listener: health, readiness, metrics and the webhook admin API (`/admin/api/`)."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .state import METRICS, PROXY_APP, REDIS, RUNTIME
from .webhooks.api import setup_admin_routes


async def healthz(request: web.Request) -> web.Response:
    """The process is up."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the config is loaded and, if configured, Redis answers; else 503 with why."""
    app = request.app[PROXY_APP]
    reasons = dict(app[RUNTIME].ready_reasons)
    redis = app.get(REDIS)
    if app[RUNTIME].settings.redis_url and redis is not None:
        try:
            async with asyncio.timeout(1.0):
                await redis.ping()
        except Exception as exc:  # any failure means "not ready", whatever its class
            reasons["redis"] = f"Redis does not answer: {exc.__class__.__name__}: {exc}"
    status = 503 if reasons else 200
    body = {"status": "not ready" if reasons else "ready", "reasons": reasons}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this app's own registry."""
    registry = request.app[PROXY_APP][METRICS].registry
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def create_admin_app(proxy_app: web.Application) -> web.Application:
    """The admin application; handlers reach shared state through the proxy app."""
    admin = web.Application()
    admin[PROXY_APP] = proxy_app
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", metrics)
    setup_admin_routes(admin)
    return admin
