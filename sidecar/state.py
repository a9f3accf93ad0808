"""Typed application state: the `web.AppKey`s every module reaches its resources through."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from .config import Settings
from .hub import CompletionHub
from .metrics import Metrics
from .routing import RouteTable
from .tasks import TaskSet
from .tenancy import TenantHasher
from .tracking import CallTracker

if TYPE_CHECKING:
    from redis.asyncio import Redis


class Runtime:
    """The live config generation. `reload()` swaps it whole; in-flight calls keep theirs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.table = RouteTable(settings)
        self.ready_reasons: dict[str, str] = {}
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
REDIS: web.AppKey[Redis | None] = web.AppKey("redis")
ADMIN_URL = web.AppKey("admin_url", str)
HUB: web.AppKey[CompletionHub | None] = web.AppKey("hub")
TRACKER: web.AppKey[CallTracker | None] = web.AppKey("tracker")
HASHER = web.AppKey("hasher", TenantHasher)
POLLERS = web.AppKey("pollers", TaskSet)
WAITING = web.AppKey("waiting", dict[str, int])
# On the admin app (and its sub-apps): the proxy app whose state the admin handlers read.
PROXY_APP = web.AppKey("proxy_app", web.Application)
