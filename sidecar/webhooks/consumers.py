"""Removing the consumers that replicas killed without a shutdown left in the consumer groups
(the dispatcher's on every completion stream, `delivery` on every subscription's queue), so
the groups' consumer lists do not grow with every crash and redeploy.

Every replica says it is alive (`{prefix}:wh:alive:{consumer}`, refreshed every sweep interval,
expiring after three). Once per interval, one replica (whichever takes the turn, SET NX) looks
at every group's consumers (XINFO CONSUMERS) and deletes (XGROUP DELCONSUMER) each one that
  - belongs to no live replica,
  - has been silent longer than `webhooks.claim_after` (so a replica that has only just started
    is never taken for dead), and
  - has nothing pending: deleting a consumer drops its pending entries, so one that holds some
    stays until the live replicas have claimed them (the dispatcher after its claim time, the
    delivery workers after `claim_after`), and goes at a later sweep.
Counted in `sidecar_stale_consumers_removed_total{group}`; one log line per sweep that removed
any.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from ..config import Settings
from ..connections import Client
from ..metrics import Metrics
from ..tasks import checkpoint
from .keys import DELIVERY_GROUP, all_subscriptions_key, dispatch_group, queue_key, wh

logger = logging.getLogger(__name__)

SWEEP_EVERY_MAX_S = 60.0
SWEEP_EVERY_MIN_S = 1.0
CHUNK = 500  # groups asked about per pipeline


def sweep_every_s(settings: Settings) -> float:
    """How often a sweep may run: three times `claim_after`, within 1 s to 1 min."""
    claim_s = settings.webhooks.claim_after_s
    return min(max(claim_s * 3, SWEEP_EVERY_MIN_S), SWEEP_EVERY_MAX_S)


def alive_key(prefix: str, consumer: str) -> str:
    """Present while the replica whose consumer name this is runs."""
    return f"{wh(prefix)}:alive:{consumer}"


class ConsumerSweeper:
    """Says this replica is alive and, in turn with the others, removes dead replicas'
    consumers (see the module docstring)."""

    def __init__(self, redis: Client, settings: Settings, consumer: str, metrics: Metrics) -> None:
        self.redis, self.settings, self.consumer = redis, settings, consumer
        self.prefix = settings.key_prefix
        self.metrics = metrics
        self.every_s = sweep_every_s(settings)

    async def run(self) -> None:
        """Say alive and sweep when it is this replica's turn, every interval, until
        cancelled. Redis faults are raised (the caller retries)."""
        while True:
            checkpoint()
            await self.alive()
            if await self._my_turn():
                await self.sweep()
            await asyncio.sleep(self.every_s)

    async def alive(self) -> None:
        """Refresh this replica's alive key."""
        ttl_ms = int(self.every_s * 3 * 1000)
        await self.redis.set(alive_key(self.prefix, self.consumer), b"1", px=ttl_ms)

    async def leave(self) -> None:
        """This replica stops: its alive key goes."""
        await self.redis.delete(alive_key(self.prefix, self.consumer))

    async def _my_turn(self) -> bool:
        turn = f"{wh(self.prefix)}:consumers-swept"
        # Held a little less than the interval, so the holder's next turn is never missed.
        taken = await self.redis.set(turn, self.consumer, nx=True, px=int(self.every_s * 900))
        return bool(taken)

    async def sweep(self) -> int:
        """Remove every stale consumer now; how many were removed."""
        groups = [(s, dispatch_group(self.prefix)) for s in self.settings.stream_keys]
        groups += [(q, DELIVERY_GROUP) for q in await self._queues()]
        removed: dict[str, list[str]] = {}
        for n in range(0, len(groups), CHUNK):
            for (stream, group), name in await self._stale(groups[n : n + CHUNK]):
                removed.setdefault(group, []).append(name)
                await self.redis.xgroup_delconsumer(stream, group, name)
        total = 0
        for group, names in removed.items():
            kind = "delivery" if group == DELIVERY_GROUP else "dispatch"
            self.metrics.stale_consumers_removed.labels(kind).inc(len(names))
            total += len(names)
        if total:
            logger.info(
                "removed consumers of replicas that are gone",
                extra={
                    "removed": total,
                    "consumers": sorted({n for names in removed.values() for n in names})[:10],
                },
            )
        return total

    async def _queues(self) -> list[str]:
        owners = await self.redis.hgetall(all_subscriptions_key(self.prefix))  # type: ignore[misc]
        return [queue_key(self.prefix, o.decode(), s.decode()) for s, o in owners.items()]

    async def _stale(self, groups: list[tuple[str, str]]) -> list[tuple[tuple[str, str], str]]:
        """The (group, consumer name) pairs of `groups` that may go."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, group in groups:
                pipe.xinfo_consumers(stream, group)
            replies = await pipe.execute(raise_on_error=False)
        silent_ms = self.settings.webhooks.claim_after_s * 1000
        candidates: list[tuple[tuple[str, str], str]] = []
        for where, consumers in zip(groups, replies, strict=True):
            if not isinstance(consumers, list):
                continue  # no such stream or group (yet)
            for c in consumers:
                name = c["name"].decode()
                quiet = c.get("inactive", c["idle"])  # Redis 7.2: since its last success
                if name != self.consumer and not c["pending"] and _at_least(quiet, silent_ms):
                    candidates.append((where, name))
        names = sorted({name for _, name in candidates})
        alive = dict(zip(names, await self._alive(names), strict=True))
        return [(where, name) for where, name in candidates if not alive[name]]

    async def _alive(self, names: Iterable[str]) -> list[bool]:
        names = list(names)
        if not names:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(alive_key(self.prefix, name))
            return [bool(n) for n in await pipe.execute()]


def _at_least(quiet_ms: int, bound_ms: float) -> bool:
    """`inactive` is -1 for a consumer that never read successfully: count it as silent."""
    return quiet_ms < 0 or quiet_ms >= bound_ms
