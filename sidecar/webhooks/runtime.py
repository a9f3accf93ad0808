"""What the webhook machinery shares with the rest of the app (`app[WEBHOOKS]`)."""

from __future__ import annotations

import os
import secrets
import socket

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from ..config import Settings
from .metrics import WebhookMetrics
from .outbox import Outbox
from .store import SubscriptionStore


def consumer_name() -> str:
    """A consumer name unique to this process (host, pid, random)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class WebhookRuntime:
    """The webhook Redis client, store, outbox, session and metrics of one app."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        session: aiohttp.ClientSession,
        metrics: WebhookMetrics,
    ) -> None:
        self.settings = settings
        self.prefix = settings.key_prefix
        self.redis = redis
        self.session = session
        self.metrics = metrics
        self.store = SubscriptionStore(redis, self.prefix)
        self.outbox = Outbox(redis, self.prefix, settings.webhooks.outbox_maxlen)
        self.consumer = consumer_name()


WEBHOOKS = web.AppKey("webhooks", WebhookRuntime)
