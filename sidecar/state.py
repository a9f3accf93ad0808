"""Typed application state: the `web.AppKey`s every module reaches its resources through."""

from __future__ import annotations

from aiohttp import web

from .completions.hub import CompletionHub
from .connections import RedisConnections, RedisHealth
from .tasks import TaskSet
from .tenancy import TenantHasher
from .tracking import CallTracker

REDIS: web.AppKey[RedisConnections | None] = web.AppKey("redis")
HEALTH: web.AppKey[RedisHealth | None] = web.AppKey("redis_health")
ADMIN_URL = web.AppKey("admin_url", str)
HUB: web.AppKey[CompletionHub | None] = web.AppKey("hub")
TRACKER: web.AppKey[CallTracker | None] = web.AppKey("tracker")
HASHER = web.AppKey("hasher", TenantHasher)
POLLERS = web.AppKey("pollers", TaskSet)
