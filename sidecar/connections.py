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

from redis.asyncio import BlockingConnectionPool, Redis

CONNECT_TIMEOUT_S = 2.0  # TCP connect to Redis
COMMAND_TIMEOUT_S = 5.0  # longest a (non-blocking) command may take before it counts as a fault
BLOCKING_MARGIN_S = 5.0  # a blocking read's socket timeout is its block time plus this
POOL_SIZE = 64  # connections shared by every request and background loop of the process
POOL_WAIT_S = 2.0  # longest a command waits for a free pooled connection
HEALTH_CHECK_S = 10  # an idle pooled connection is PINGed before reuse after this long


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
