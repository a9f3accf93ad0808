"""Typed application state: the `web.AppKey`s every module reaches its resources through."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from aiohttp import web

from .config import Settings
from .connections import RedisConnections, RedisHealth
from .hub import CompletionHub
from .metrics import Metrics
from .pool import UpstreamPool
from .routing import RouteTable
from .sync.publish import CompletionPublisher
from .sync.wait import HeldCalls
from .tasks import TaskSet
from .tenancy import TenantHasher
from .tracking import CallTracker


class Runtime:
    """The live config generation. `reload()` swaps it whole; in-flight calls keep theirs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.table = RouteTable(settings)
        self.on_reload: list[Callable[[Settings], None]] = []

    def reload(self, settings: Settings) -> None:
        """Replace routes (and route-level settings) with a newly validated generation."""
        self.settings = settings
        self.table = RouteTable(settings)
        for listener in self.on_reload:
            listener(settings)


RUNTIME = web.AppKey("runtime", Runtime)
METRICS = web.AppKey("metrics", Metrics)
HTTP = web.AppKey("http", aiohttp.ClientSession)
POOL = web.AppKey("pool", UpstreamPool)
REDIS: web.AppKey[RedisConnections | None] = web.AppKey("redis")
HEALTH: web.AppKey[RedisHealth | None] = web.AppKey("redis_health")
ADMIN_URL = web.AppKey("admin_url", str)
HUB: web.AppKey[CompletionHub | None] = web.AppKey("hub")
TRACKER: web.AppKey[CallTracker | None] = web.AppKey("tracker")
HASHER = web.AppKey("hasher", TenantHasher)
POLLERS = web.AppKey("pollers", TaskSet)
HELD = web.AppKey("held", HeldCalls)
PUBLISHER = web.AppKey("publisher", CompletionPublisher)
# On the admin app (and its sub-apps): the proxy app whose state the admin handlers read.
PROXY_APP = web.AppKey("proxy_app", web.Application)
