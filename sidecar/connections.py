"""Every Redis client of the process, made here under one timeout policy.

    shared     one bounded, blocking pool for commands (tracking, claims, tenancy, webhooks).
               A burst waits up to POOL_WAIT_S for a free connection instead of opening one
               connection per call.
    reader()   a dedicated connection for one blocking read loop (`XREAD BLOCK`), whose socket
               timeout exceeds the block time, so a quiet stream is never mistaken for a dead
               Redis (redis/redis-py #2663, #3138).

Nothing connects until the first command: the sidecar starts while Redis is down.
"""

from __future__ import annotations

import asyncio
import logging
import random

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from .metrics import Metrics
from .tasks import cancelling, checkpoint

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0  # TCP connect to Redis
COMMAND_TIMEOUT_S = 5.0  # longest a (non-blocking) command may take before it counts as a fault
BLOCKING_MARGIN_S = 5.0  # a blocking read's socket timeout is its block time plus this
POOL_SIZE = 64  # connections shared by every request and background loop of the process
POOL_WAIT_S = 2.0  # longest a command waits for a free pooled connection
HEALTH_CHECK_S = 10  # an idle pooled connection is PINGed before reuse after this long
PROBE_EVERY_S = 1.0  # how often the health probe PINGs Redis
PROBE_TIMEOUT_S = 1.0


class Backoff:
    """Exponential delays with ±20 % jitter, up to a cap: reconnect attempts of many
    processes spread out instead of hammering a Redis that is coming back."""

    def __init__(self, initial_s: float, cap_s: float) -> None:
        self.initial_s, self.cap_s = initial_s, cap_s
        self._next = initial_s

    def next(self) -> float:
        """The delay before the next attempt (and grow the one after)."""
        delay = self._next * random.uniform(0.8, 1.2)
        self._next = min(self._next * 2, self.cap_s)
        return delay

    def reset(self) -> None:
        """Back to the first delay (after a success)."""
        self._next = self.initial_s


class RedisConnections:
    """The Redis clients of one app: `shared` and a factory of dedicated `reader()`s."""

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=POOL_WAIT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=COMMAND_TIMEOUT_S + BLOCKING_MARGIN_S,
            health_check_interval=HEALTH_CHECK_S,
        )
        self.shared: Redis = Redis.from_pool(pool)

    def reader(self, block_s: float, name: str) -> Redis:
        """A single dedicated connection for a loop that blocks up to `block_s` per read,
        named `name` in Redis's CLIENT LIST."""
        client: Redis = Redis.from_url(
            self.url,
            single_connection_client=True,
            client_name=name,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=block_s + BLOCKING_MARGIN_S,
            retry_on_timeout=False,
        )
        return client

    async def aclose(self) -> None:
        """Close the shared pool (readers are closed by their loops)."""
        await self.shared.aclose()


class RedisHealth:
    """Whether Redis answers, from a real round trip every second: `sidecar_redis_up`, and
    one log line per change (never one per attempt)."""

    def __init__(self, connections: RedisConnections, metrics: Metrics) -> None:
        self.connections = connections
        self.metrics = metrics
        self.up: bool | None = None  # unknown until the first probe
        self.checked = asyncio.Event()

    async def probe(self) -> bool:
        """PING once; record and log the state when it changed."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self.connections.shared.ping()
            up, error = True, ""
        except (RedisError, OSError, TimeoutError) as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            up, error = False, f"{exc.__class__.__name__}: {exc}"
        if up != self.up:
            if up:
                logger.info("Redis answers", extra={"url": redacted(self.connections.url)})
            else:
                logger.warning(
                    "Redis does not answer",
                    extra={"url": redacted(self.connections.url), "error": error},
                )
        self.up = up
        self.metrics.redis_up.set(1 if up else 0)
        self.checked.set()
        return up

    async def run(self) -> None:
        """Probe forever. Cancel to stop."""
        while True:
            checkpoint()
            await self.probe()
            await asyncio.sleep(PROBE_EVERY_S)


def redacted(url: str) -> str:
    """A Redis URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user + ':***' if user else '***'}@{host}"
