"""Typed application state: the `web.AppKey`s every module reaches its resources through."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from .config import Settings
from .metrics import Metrics
from .routing import RouteTable

if TYPE_CHECKING:
    from redis.asyncio import Redis


class Runtime:
    """The live config generation. `reload()` swaps it whole; in-flight calls keep theirs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.table = RouteTable(settings)
        self.ready_reasons: dict[str, str] = {}

    def reload(self, settings: Settings) -> None:
        """Replace routes (and route-level settings) with a newly validated generation."""
        self.settings = settings
        self.table = RouteTable(settings)


RUNTIME = web.AppKey("runtime", Runtime)
METRICS = web.AppKey("metrics", Metrics)
HTTP = web.AppKey("http", aiohttp.ClientSession)
REDIS: web.AppKey[Redis | None] = web.AppKey("redis")
ADMIN_URL = web.AppKey("admin_url", str)
