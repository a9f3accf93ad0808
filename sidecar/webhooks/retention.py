"""Time-based trimming of the attempt logs (`webhooks.retention.attempts`).

The logs are bounded by count when written (`outcome`); this loop bounds them by age too, so
what Redis holds is (calls/s x retention), whatever the traffic:

    the owner's and the operator's message logs, the dead letters, the dead completions
                 XTRIM MINID (exact) at the oldest entry id to keep; an owner's log also gets
                 an EXPIRE of the retention, renewed every pass, so the log of an owner whose
                 subscriptions are all gone goes once nothing renews it
    a subscription's attempts list (newest first)
                 a script pops entries older than the retention off its tail

Messages and their own logs carry a TTL of `retention.messages` from their last attempt
(`outbox`, `outcome`): Redis expires them. Every replica runs the loop (trimming is idempotent);
a pass every tenth of the retention, at most a minute apart. A pass walks the subscriptions with
a cursor, BATCH a step, a step a second (a minute a pass for 30,000 subscriptions), so no step
costs more with more subscriptions.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..config import Webhooks
from ..connections import Client, register, run_scripts
from ..tasks import checkpoint
from ..tenancy import OPERATOR
from ..timestamps import iso
from .keys import (
    all_log_key,
    all_subscriptions_key,
    attempts_key,
    dead_completions_key,
    dead_key,
    owner_log_key,
)
from .metrics import WebhookMetrics

logger = logging.getLogger(__name__)

BATCH = 500  # subscriptions per step
STEP_S = 1.0  # between two steps of a pass
POPS_PER_PASS = 1000  # entries a pass takes off one attempts list (the list keeps 1000)

# KEYS: a subscription's attempts list (newest first). ARGV: the oldest time to keep (ISO 8601,
# which sorts as text), pops at most. Pops older entries off its tail; how many.
_TRIM_LIST = """
local n = 0
local most = tonumber(ARGV[2])
while n < most do
  local last = redis.call('LINDEX', KEYS[1], -1)
  if not last then break end
  local t = string.match(last, '"time":"([^"]+)"')
  if t and t >= ARGV[1] then break end
  redis.call('RPOP', KEYS[1])
  n = n + 1
end
return n
"""


def pass_interval_s(retention_s: float) -> float:
    """Seconds between two passes: a tenth of the retention, 50 ms to a minute."""
    return min(max(retention_s / 10, 0.05), 60.0)


class LogTrimmer:
    """Trims the attempt logs by age."""

    def __init__(
        self,
        redis: Client,
        prefix: str,
        config: Webhooks,
        metrics: WebhookMetrics,
    ) -> None:
        self.redis, self.prefix, self.metrics = redis, prefix, metrics
        self.retention_s = config.retention.attempts
        self._trim_list = register(redis, _TRIM_LIST)
        self._cursor = 0  # where the pass under way is in the subscriptions

    async def run(self) -> None:
        """Trim until cancelled: a step of at most BATCH subscriptions every STEP_S while a pass
        is under way, a pass every interval."""
        while True:
            checkpoint()
            _trimmed, done = await self.trim_step()
            await asyncio.sleep(pass_interval_s(self.retention_s) if done else STEP_S)

    async def trim_once(self, now: float | None = None) -> int:
        """One whole pass; the number of entries trimmed."""
        self._cursor = 0
        trimmed, done = await self.trim_step(now)
        while not done:
            step, done = await self.trim_step(now)
            trimmed += step
        return trimmed

    async def trim_step(self, now: float | None = None) -> tuple[int, bool]:
        """The next part of a pass: the shared logs when a pass starts, then the next BATCH
        subscriptions (their attempts lists and their owners' logs), read with a cursor so no
        step holds or walks every subscription; (entries trimmed, whether the pass ended)."""
        now = time.time() if now is None else now
        cutoff = now - self.retention_s
        min_id = f"{int(cutoff * 1000)}-0"
        trimmed = 0
        starting = self._cursor == 0
        if starting:
            trimmed += await self._trim_shared(min_id)
        cursor, fields = await self.redis.hscan(
            all_subscriptions_key(self.prefix), self._cursor, count=BATCH
        )
        self._cursor = int(cursor)
        subs = [(owner.decode(), sub.decode()) for sub, owner in fields.items()]
        owners = sorted({owner for owner, _sub in subs} | ({OPERATOR} if starting else set()))
        keep_s = max(1, int(self.retention_s))
        if owners:
            async with self.redis.pipeline(transaction=False) as pipe:
                for owner in owners:
                    key = owner_log_key(self.prefix, owner)
                    pipe.xtrim(key, minid=min_id, approximate=False)
                    pipe.expire(key, keep_s)
                replies = await pipe.execute(raise_on_error=False)
            owned = sum(r for r in replies[::2] if isinstance(r, int))
            trimmed += owned
            self.metrics.trimmed.labels("owner").inc(owned)
        oldest = iso(cutoff)
        if subs:
            calls = [
                ([attempts_key(self.prefix, owner, sub)], [oldest, POPS_PER_PASS])
                for owner, sub in subs
            ]
            popped = sum(int(n) for n in await run_scripts(self.redis, self._trim_list, calls))
            trimmed += popped
            self.metrics.trimmed.labels("subscription").inc(popped)
        if trimmed:
            logger.debug("attempt logs trimmed", extra={"entries": trimmed, "before": oldest})
        return trimmed, self._cursor == 0

    async def _trim_shared(self, min_id: str) -> int:
        shared = {
            "all": all_log_key(self.prefix),
            "dead": dead_key(self.prefix),
            "dead_completions": dead_completions_key(self.prefix),
        }
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in shared.values():
                pipe.xtrim(key, minid=min_id, approximate=False)
            replies = await pipe.execute(raise_on_error=False)
        trimmed = 0
        for log, reply in zip(shared, replies, strict=True):
            if isinstance(reply, int) and reply:
                trimmed += reply
                if log != "dead_completions":
                    self.metrics.trimmed.labels(log).inc(reply)
        return trimmed
