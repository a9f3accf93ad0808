"""The interface through which completions the call path learns itself (by polling) leave it.

Completions read from a stream reach webhooks through their own consumer group; those only a
poller sees are handed to the app's `CompletionPublisher` (`app[PUBLISHER]`). The webhooks
engine provides one; without it nothing is published.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from ..config import Route
from ..tracking import TrackedCall
from .completion import Completion


class CompletionPublisher(Protocol):
    """Something that takes a poll-detected completion further (e.g. to webhooks)."""

    async def publish(
        self, route: Route, completion: Completion, tracked: TrackedCall | None
    ) -> None:
        """Take one completion; never raises to the caller."""
        ...


class NoPublisher:
    """Publishes nothing (webhooks do not run)."""

    async def publish(
        self, route: Route, completion: Completion, tracked: TrackedCall | None
    ) -> None:
        """Drop the completion."""


PUBLISHER = web.AppKey("publisher", CompletionPublisher)
