"""Per-tenant quotas of the admin API that need Redis: test sends per minute (a sliding window,
shared by every replica). The subscription count is checked where subscriptions are created."""

from __future__ import annotations

import math
import secrets

from redis.asyncio import Redis

from .keys import test_sends_key

WINDOW_S = 60.0

# KEYS: the owner's test-sends set. ARGV: now (s), window (s), limit, member. 0 when the send is
# allowed (and counted), else the seconds until the oldest counted send leaves the window.
_TEST_SEND = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tostring(tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
return '0'
"""


class Quotas:
    """Counts what tenants do against their limits."""

    def __init__(self, redis: Redis, prefix: str, test_sends_per_minute: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.test_sends_per_minute = test_sends_per_minute
        self._test_send = redis.register_script(_TEST_SEND)

    async def test_send(self, owner: str, now: float) -> int | None:
        """Count one test send of `owner`; None when allowed, else the whole seconds to wait."""
        if self.test_sends_per_minute <= 0:
            return None
        wait = float(
            await self._test_send(
                keys=[test_sends_key(self.prefix, owner)],
                args=[repr(now), WINDOW_S, self.test_sends_per_minute, secrets.token_hex(6)],
            )
        )
        return None if wait <= 0 else max(1, math.ceil(wait))
