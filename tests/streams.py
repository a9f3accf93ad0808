"""A route synchronised over Redis Streams, end to end, for the tests of the call path, the
completion hub and the stream reader alike: a fake asynchronous users API (POST /api/users →
202 + Location /users/{id}, the id being the correlation header), the sidecar in front of it
with one route waiting on a stream, and that stream. `stream_env` (tests/conftest.py) makes one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from sidecar.completions.hub import CompletionHub
from sidecar.state import HUB

from .fakes import FakeApi

OK, NOT_OK, PROGRESS = "CreateUser::UserCreated", "CreateUser::UserNotCreated", "CreateUser::Busy"


@dataclass
class StreamEnv:
    """A fake async upstream, the sidecar in front of it, and the stream they share."""

    client: TestClient
    api: FakeApi
    redis: aioredis.Redis
    stream: str

    async def publish(self, cid: str, type_: str = OK, payload: Any = None, **extra: str) -> None:
        """XADD a completion event the way a backend would."""
        fields: dict[str, str] = {"correlation_id": cid, "type": type_, **extra}
        if payload is not None:
            fields["payload"] = (
                payload if isinstance(payload, str) else orjson.dumps(payload).decode()
            )
        await self.redis.xadd(self.stream, fields)  # type: ignore[arg-type]

    @property
    def hub(self) -> CompletionHub:
        hub = self.client.app[HUB]
        assert hub is not None
        return hub

    @property
    def hub_waiting(self) -> int:
        return self.hub.waiting


def users_route(stream: str, **overrides: Any) -> dict[str, Any]:
    """The route `create-user`: POST /api/users, waiting on `stream` for OK or NOT_OK."""
    base: dict[str, Any] = {
        "name": "create-user",
        "method": "POST",
        "path": "/api/users",
        "budget": "5s",
        "wait": {"stream": {"key": stream, "success": [OK], "failure": [NOT_OK]}},
        "respond": {"retry_after": "3s"},
    }
    base.update(overrides)
    return base


StreamEnvFactory = Callable[..., Awaitable[StreamEnv]]


async def post_user(env: StreamEnv, cid: str, **kwargs: Any) -> Any:
    """A client's call of the route, with `cid` as its correlation id."""
    headers = {"X-Correlation-ID": cid, **kwargs.pop("headers", {})}
    return await env.client.post(
        "/api/users", json={"username": "felipe"}, headers=headers, **kwargs
    )
