"""The webhook services of one app, built once (`app[WEBHOOKS]`): the store, the outbox, the
target policy, the delivery session, the metrics; and the publisher of poll-detected
completions (the app's `CompletionPublisher`)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from ..completions.completion import Completion
from ..config import Route, Settings
from ..connections import REDIS_FAULTS, Client, RedisConnections
from ..tenancy import OPERATOR
from ..tracking import CallTracker, TrackedCall
from .breaker import Breakers
from .fanout import candidates, messages_for
from .messages import MessageLog
from .metrics import WebhookMetrics
from .outbox import Outbox
from .quotas import Quotas
from .store import SubscriptionStore
from .targets import TargetPolicy

logger = logging.getLogger(__name__)


def consumer_name() -> str:
    """A consumer name unique to this process (host, pid, random)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class WebhookRuntime:
    """Everything the webhook machinery shares: one of each service per app."""

    def __init__(
        self,
        settings: Settings,
        connections: RedisConnections,
        tracker: CallTracker,
        session: aiohttp.ClientSession,
        policy: TargetPolicy,
        metrics: WebhookMetrics,
    ) -> None:
        self.settings = settings
        self.prefix = settings.key_prefix
        self.connections = connections
        self.redis: Client = connections.shared
        self.tracker = tracker
        self.session = session
        self.policy = policy
        self.metrics = metrics
        self.store = SubscriptionStore(self.redis, self.prefix)
        self.outbox = Outbox(self.redis, self.prefix, int(settings.webhooks.retention.messages))
        self.breakers = Breakers(settings.webhooks, metrics)
        self.messages = MessageLog(self.redis, self.prefix, self.store)
        self.resolver: AbstractResolver = DefaultResolver()  # unfiltered: to judge a new URL
        self.quotas = Quotas(self.redis, self.prefix, settings.webhooks)
        self.consumer = consumer_name()

    async def publish(
        self, route: Route, completion: Completion, tracked: TrackedCall | None
    ) -> None:
        """Fan out a poll-detected completion once across replicas; never raises."""
        cid = completion.correlation_id
        try:
            # Message ids derive from the call, so the stream's dispatcher, a replica's poller
            # and this one all enqueue the same messages: the first wins, the others are no-ops.
            owners = {OPERATOR, tracked.tenant} if tracked and tracked.tenant else {OPERATOR}
            messages = messages_for(
                candidates(await self.store.of_owners(owners), tracked),
                route,
                completion.status,
                completion.data,
                cid,
                tracked,
                time.time(),
                f"poll/{cid}",
            )
            await self.outbox.enqueue_many(messages)
        except REDIS_FAULTS as exc:
            logger.warning(
                "poll completion not published (Redis fault)",
                extra={"route": route.name, "correlation_id": cid, "error": str(exc)},
            )


WEBHOOKS = web.AppKey("webhooks", WebhookRuntime)
