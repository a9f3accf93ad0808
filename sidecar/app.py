"""The wiring diagram: `create_app(settings)` builds the proxy app and its resources, in order.

Startup runs the cleanup contexts top to bottom; shutdown undoes them in reverse:
HTTP client → Redis → call tracking → completion hub → pollers → webhooks → admin server.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from . import __version__
from .admin import create_admin_app
from .config import Settings
from .handler import proxy_handler
from .hub import CompletionHub
from .metrics import Metrics
from .proxy import call_middleware
from .state import (
    ADMIN_URL,
    HASHER,
    HTTP,
    HUB,
    METRICS,
    POLLERS,
    REDIS,
    RUNTIME,
    TRACKER,
    WAITING,
    Runtime,
)
from .tasks import TaskSet
from .tenancy import TenantHasher
from .tracking import CallTracker
from .upstream import create_session
from .webhooks import webhooks_ctx

logger = logging.getLogger(__name__)


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port` → (host, port); IPv6 hosts may be bracketed."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    """The pooled upstream session."""
    app[HTTP] = create_session(app[RUNTIME].settings.proxy)
    yield
    await app[HTTP].close()


REDIS_POOL_SIZE = 64  # connections shared by every request; a burst waits for one (bounded)
REDIS_POOL_WAIT_S = 1.0  # longest a command waits for a free pooled connection


def connect_redis(url: str, **kwargs: Any) -> Redis:
    """A Redis client on a bounded, blocking pool for `url`; connects lazily.

    Bounded so that a burst of 10,000 calls never opens 10,000 Redis connections.
    """
    kwargs.setdefault("socket_connect_timeout", 2.0)
    kwargs.setdefault("health_check_interval", 10)
    kwargs.setdefault("max_connections", REDIS_POOL_SIZE)
    kwargs.setdefault("timeout", REDIS_POOL_WAIT_S)
    pool = aioredis.BlockingConnectionPool.from_url(url, **kwargs)
    client: Redis = Redis.from_pool(pool)
    return client


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """A Redis client (pool) when `redis_url` is set; no I/O at startup, so Redis may be down."""
    url = app[RUNTIME].settings.redis_url
    app[REDIS] = connect_redis(url) if url else None
    yield
    client = app[REDIS]
    if client is not None:
        await client.aclose()


async def tracking_ctx(app: web.Application) -> AsyncIterator[None]:
    """Call tracking and the tenant hasher (both need Redis; absent without it)."""
    settings, client = app[RUNTIME].settings, app[REDIS]
    app[TRACKER] = (
        CallTracker(client, settings.key_prefix, settings.tracking_ttl) if client else None
    )
    app[HASHER] = TenantHasher(settings, client)
    yield


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """The completion hub's reader loop, when Redis is configured."""
    runtime = app[RUNTIME]
    url = runtime.settings.redis_url
    if url is None:
        app[HUB] = None
        yield
        return
    hub = CompletionHub(url, runtime.settings, app[METRICS])
    app[HUB] = hub
    runtime.on_reload.append(hub.update)
    tasks = TaskSet("completion-hub")
    tasks.spawn(hub.run())
    yield
    runtime.on_reload.remove(hub.update)
    await tasks.close()


async def pollers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Owner of the calls' background work (Location pollers, tracking writes), which may
    outlive the calls that started them."""
    app[POLLERS] = TaskSet("pollers")
    yield
    await app[POLLERS].close()


async def admin_ctx(app: web.Application) -> AsyncIterator[None]:
    """Serve the admin app on its own listener."""
    host, port = split_host_port(app[RUNTIME].settings.admin_listen)
    runner = web.AppRunner(create_admin_app(app), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    app[ADMIN_URL] = f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}"
    logger.info("admin listening", extra={"url": app[ADMIN_URL]})
    yield
    await runner.cleanup()


def export_limits(metrics: Metrics, settings: Settings) -> None:
    """Publish each sync route's `max_waiting`, so a dashboard can set held calls against it."""
    metrics.max_waiting.clear()
    for route in settings.routes:
        if route.is_sync:
            metrics.max_waiting.labels(route.name).set(route.max_waiting)


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> web.Application:
    """The proxy application with every resource it owns registered as a cleanup context."""
    # A client that disconnects cancels its handler, so a held call stops waiting at once.
    app = web.Application(
        middlewares=[call_middleware], handler_args={"handler_cancellation": True}
    )
    app[RUNTIME] = Runtime(settings)
    app[METRICS] = Metrics(registry)
    app[METRICS].build_info.info({"version": __version__})
    app.router.add_route("*", "/{tail:.*}", proxy_handler)
    app[WAITING] = {}
    export_limits(app[METRICS], settings)
    app[RUNTIME].on_reload.append(lambda new: export_limits(app[METRICS], new))
    app.cleanup_ctx.append(http_ctx)
    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(tracking_ctx)
    app.cleanup_ctx.append(hub_ctx)
    app.cleanup_ctx.append(pollers_ctx)
    app.cleanup_ctx.append(webhooks_ctx)
    app.cleanup_ctx.append(admin_ctx)
    return app
