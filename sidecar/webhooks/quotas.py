"""Quotas of the admin API that need Redis, shared by every replica: test sends per minute per
client (a sliding window), and, for all clients together, test sends per minute and bytes of test
data per hour. The totals hold however many clients there are: without `tenancy.verify` any
string is a client of its own, and a limit per client alone is one an attacker multiplies by
inventing clients. Subscription counts are checked where subscriptions are created."""

from __future__ import annotations

import math
import secrets

from ..config import Webhooks
from ..connections import Client, register
from .keys import all_test_sends_key, test_bytes_key, test_sends_key

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


# KEYS: every client's test sends (sorted set), test bytes per minute (hash minute → bytes).
# ARGV: now (s), window (s), send limit (0: none), member, size, byte limit per hour (0: none).
# {"", "0"} when the send is allowed (and counted), else {what, seconds until it would be}.
_ALL_TEST_SENDS = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, size, bytes_limit = tonumber(ARGV[3]), tonumber(ARGV[5]), tonumber(ARGV[6])
local minute = math.floor(now / 60)
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  if redis.call('ZCARD', KEYS[1]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'sends', tostring(tonumber(oldest[2]) + window - now)}
  end
end
if bytes_limit > 0 then
  local held, first = 0, minute
  local fields = redis.call('HGETALL', KEYS[2])
  for i = 1, #fields, 2 do
    local m = tonumber(fields[i])
    if m <= minute - 60 then
      redis.call('HDEL', KEYS[2], fields[i])
    else
      held = held + tonumber(fields[i + 1])
      if m < first then first = m end
    end
  end
  if held + size > bytes_limit then
    return {'bytes', tostring((first + 60) * 60 - now)}
  end
  redis.call('HINCRBY', KEYS[2], tostring(minute), size)
  redis.call('EXPIRE', KEYS[2], 3700)
end
if limit > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
end
return {'', '0'}
"""


class Quotas:
    """Counts what tenants do against their limits."""

    def __init__(self, redis: Client, prefix: str, config: Webhooks) -> None:
        self.redis = redis
        self.prefix = prefix
        self.test_sends_per_minute = config.test_sends_per_minute
        self.all_per_minute = config.test_sends_per_minute_total
        self.all_bytes_per_hour = config.test_data_per_hour
        self._test_send = register(redis, _TEST_SEND)
        self._all_test_sends = register(redis, _ALL_TEST_SENDS)

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

    async def all_test_sends(self, now: float, size: int) -> tuple[str, int] | None:
        """Count one test send of `size` bytes against every client's together; None when
        allowed, else what is exhausted (`sends` or `bytes`) and the whole seconds to wait."""
        if self.all_per_minute <= 0 and self.all_bytes_per_hour <= 0:
            return None
        what, wait = await self._all_test_sends(
            keys=[all_test_sends_key(self.prefix), test_bytes_key(self.prefix)],
            args=[
                repr(now),
                WINDOW_S,
                self.all_per_minute,
                secrets.token_hex(6),
                size,
                self.all_bytes_per_hour,
            ],
        )
        seconds = float(wait)
        return None if seconds <= 0 else (what.decode(), max(1, math.ceil(seconds)))
