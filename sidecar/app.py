"""The wiring diagram: `create_app(settings)` builds the proxy app and its resources, in order.

Startup runs the cleanup contexts top to bottom; shutdown undoes them in reverse:
HTTP client → Redis → call tracking → its backlog of late writes → operations → completion hub
and readers (Redis Streams, brokers) → pollers → webhooks → admin server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from . import __version__
from .admin.app import create_admin_app
from .admin.services import AdminServices
from .admin.verify import CredentialVerifier
from .completions.hub import CompletionHub
from .completions.publish import PUBLISHER, NoPublisher
from .config import Settings
from .connections import RedisConnections, RedisHealth
from .http.body import expect_continue
from .http.boundary import problem_middleware
from .http.budget import BUDGET, ByteBudget
from .http.listener import ClientGuard, GuardedAppRunner
from .http.pool import POOL
from .http.upstream import create_pool
from .logs import LoopFaults
from .metrics import METRICS, Metrics
from .operations import OPERATIONS, Operations
from .process import client_connections
from .proxy import ProxyListener, proxy_handler
from .routing import RUNTIME, Runtime
from .sources.base import quiet_libraries
from .sources.health import SOURCE_HEALTH, SourceHealth
from .sources.loop import SourceLoop, feed_waiters
from .sources.redis_streams import RedisStreamReader
from .state import ADMIN_URL, HASHER, HEALTH, HUB, POLLERS, REDIS, TRACKER
from .sync.backlog import tracking_backlog_ctx
from .sync.wait import HELD, HeldCalls
from .tasks import TaskSet
from .tenancy import TenantHasher
from .tracking import CallTracker
from .webhooks import WEBHOOKS, webhooks_ctx
from .workers import in_worker

logger = logging.getLogger(__name__)


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port` → (host, port); IPv6 hosts may be bracketed."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    """The upstream client (the keep-alive pool): calls, polls and GETs of a Location."""
    app[POOL] = create_pool(app[RUNTIME].settings.proxy)
    yield
    await app[POOL].close()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Redis clients and their health probe when `redis_url` is set (no metric without
    it). Startup does not wait for Redis: the sidecar starts while it is down."""
    url = app[RUNTIME].settings.redis_url
    if url is None:
        app[REDIS] = app[HEALTH] = None
        yield
        return
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(LoopFaults(app[METRICS].redis_faults.labels("loop").inc, previous))
    connections = app[REDIS] = RedisConnections(app[RUNTIME].settings)
    await connections.open()
    health = app[HEALTH] = RedisHealth(connections, app[METRICS])
    tasks = TaskSet("redis-health")
    tasks.spawn(health.run())
    yield
    await tasks.close()
    await connections.aclose()
    loop.set_exception_handler(previous)


async def tracking_ctx(app: web.Application) -> AsyncIterator[None]:
    """Call tracking and the tenant hasher (tracking needs Redis; absent without it)."""
    settings, connections = app[RUNTIME].settings, app[REDIS]
    redis = connections.shared if connections else None
    app[TRACKER] = CallTracker(redis, settings.key_prefix, settings.tracking_ttl) if redis else None
    app[HASHER] = TenantHasher(settings, redis)
    yield


async def operations_ctx(app: web.Application) -> AsyncIterator[None]:
    """Operations (idempotency, the status monitor, timelines): with Redis only."""
    connections, runtime = app[REDIS], app[RUNTIME]
    if connections is None:
        app[OPERATIONS] = None
        yield
        return
    ops = Operations.create(connections.shared, runtime.settings, app[METRICS].registry)
    app[OPERATIONS] = ops
    runtime.on_reload.append(ops.metrics.follow)
    yield
    runtime.on_reload.remove(ops.metrics.follow)
    await ops.writer.close()


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """The completion hub and the readers that feed it: the Redis Streams reader when Redis is
    configured, and one waiters' loop per broker source (`sources:`)."""
    runtime, connections = app[RUNTIME], app[REDIS]
    settings = runtime.settings
    if connections is None and not settings.sources:
        app[HUB] = None
        yield
        return
    hub = CompletionHub(settings, app[METRICS])
    app[HUB] = hub
    runtime.on_reload.append(hub.update)
    tasks = TaskSet("completion-readers")
    if connections is not None:
        reader = settings.stream_reader
        tasks.spawn(RedisStreamReader(connections, hub, reader.block, reader.count).run())
    if settings.sources:
        quiet_libraries(settings.log.level)
    for name in settings.sources:
        feed = feed_waiters(hub, app[METRICS])
        loop = SourceLoop(
            name, "waiters", runtime, app[SOURCE_HEALTH], feed, block_s=settings.stream_reader.block
        )
        tasks.spawn(loop.run())
    yield
    runtime.on_reload.remove(hub.update)
    await tasks.close()


async def pollers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Owner of the calls' background work (Location pollers, tracking writes), which may
    outlive the calls that started them."""
    app[POLLERS] = TaskSet("pollers", app[METRICS].redis_faults.labels("background").inc)
    yield
    await app[POLLERS].close()


def client_guard(app: web.Application, listener: str) -> ClientGuard:
    """The client limits of one of the app's listeners (`proxy`, `admin`)."""
    settings = app[RUNTIME].settings
    return ClientGuard(
        listener,
        settings.clients,
        lambda: app[RUNTIME].settings.correlation_header,
        app[METRICS],
        client_connections(settings),
    )


async def admin_ctx(app: web.Application) -> AsyncIterator[None]:
    """Serve the admin app on its own listener."""
    settings = app[RUNTIME].settings
    host, port = split_host_port(settings.admin_listen)
    services = AdminServices(
        runtime=app[RUNTIME],
        metrics=app[METRICS],
        hasher=app[HASHER],
        redis=app[REDIS],
        hub=app[HUB],
        webhooks=app.get(WEBHOOKS),
        verifier=CredentialVerifier(app[POOL], app[RUNTIME], app[METRICS]),
        sources=app[SOURCE_HEALTH] if settings.sources else None,
        operations=app[OPERATIONS],
    )
    admin = create_admin_app(services)
    runner = GuardedAppRunner(admin, guard=client_guard(app, "admin"), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=in_worker() or None)
    await site.start()
    bound = runner.addresses[0]
    app[ADMIN_URL] = f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}"
    logger.info("admin listening", extra={"url": app[ADMIN_URL]})
    yield
    await runner.cleanup()


def export_limits(metrics: Metrics, settings: Settings) -> None:
    """Publish each sync route's `max_waiting`, so a dashboard can set held calls against it.
    (A worker cannot clear a multiprocess gauge: prometheus_client only warns, on stderr, in the
    middle of the log; a route a reload removed keeps its last value there.)"""
    if not in_worker():
        metrics.max_waiting.clear()
    metrics.initialise(settings.routes)
    for route in settings.routes:
        if route.is_sync:
            metrics.max_waiting.labels(route.name).set(route.max_waiting)


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> web.Application:
    """The proxy application with every resource it owns registered as a cleanup context."""
    # A client that disconnects cancels its handler, so a held call stops waiting at once.
    app = web.Application(handler_args={"handler_cancellation": True})
    app.middlewares.append(problem_middleware(ProxyListener(app)))
    app[RUNTIME] = Runtime(settings)
    app[METRICS] = Metrics(registry, redis=settings.redis_url is not None)
    app[METRICS].build_info.labels(__version__).set(1)
    export_limits(app[METRICS], settings)
    app[RUNTIME].on_reload.append(lambda new: export_limits(app[METRICS], new))
    app[HELD] = HeldCalls()
    app[SOURCE_HEALTH] = SourceHealth(app[METRICS].registry)
    app[BUDGET] = ByteBudget(settings.clients.buffer_budget, app[METRICS].body_bytes)
    app[PUBLISHER] = NoPublisher()  # the webhooks capability replaces it when it runs
    # Every path, control characters included (`.` would not match a decoded %0a): they belong
    # to the upstream, not to a 404 of ours.
    app.router.add_route("*", r"/{tail:[\s\S]*}", proxy_handler, expect_handler=expect_continue)
    app.cleanup_ctx.append(http_ctx)
    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(tracking_ctx)
    app.cleanup_ctx.append(tracking_backlog_ctx)
    app.cleanup_ctx.append(operations_ctx)
    app.cleanup_ctx.append(hub_ctx)
    app.cleanup_ctx.append(pollers_ctx)
    app.cleanup_ctx.append(webhooks_ctx)
    app.cleanup_ctx.append(admin_ctx)
    return app
