"""Fair scheduling of delivery attempts: how many may start, and from which queues.

Each subscription has its own queue; the delivery workers read only as many attempts from a
queue as may start at once, under three caps per process:

    global    `concurrency` attempts in flight
    owner     `per_tenant` of them for one owner (a tenant, or the operator), so one tenant
              cannot take every slot
    endpoint  `per_subscription` for one subscription; 1 while it is slow (its last attempt
              timed out, could not connect, or got a 5xx/429: `retry.is_slow`), so a dead
              endpoint holds one slot, not many, and its backlog waits in its own queue
              instead of in line before everyone else's

A read is planned round-robin across owners (a fresh starting owner each time), so a backlog of
one tenant never delays another's first message. `Slots` is pure bookkeeping: no I/O.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..config import Webhooks


@dataclass(frozen=True, slots=True)
class PlannedRead:
    """One queue to read: its ready-set member and score, its owner and subscription, and how
    many entries to take from it."""

    member: str
    owner: str
    sub: str
    score: float
    count: int


def per_tenant_slots(config: Webhooks) -> int:
    """The owner cap: `per_tenant`, else half the slots, but room for two endpoints' worth
    (one slow endpoint of an owner must not starve the owner's others)."""
    return config.per_tenant or max(
        1, min(config.concurrency, max(config.concurrency // 2, 2 * config.per_subscription))
    )


class Slots:
    """The attempts in flight in this process, per owner and per subscription, against the
    caps; and which endpoints are slow."""

    def __init__(self, config: Webhooks) -> None:
        self.concurrency = config.concurrency
        self.per_subscription = config.per_subscription
        self.per_tenant = per_tenant_slots(config)
        self.in_flight = 0
        self._by_sub: dict[str, int] = {}
        self._by_owner: dict[str, int] = {}
        self._slow: set[str] = set()
        self._turn = itertools.count()

    def free(self) -> int:
        """Attempts that may still start in this process."""
        return self.concurrency - self.in_flight

    def sub_cap(self, sub_id: str) -> int:
        """The subscription's cap now (1 while it is slow)."""
        return 1 if sub_id in self._slow else self.per_subscription

    def sub_free(self, sub_id: str) -> int:
        """Attempts of the subscription that may still start."""
        return self.sub_cap(sub_id) - self._by_sub.get(sub_id, 0)

    def owner_free(self, owner: str) -> int:
        """Attempts of the owner that may still start."""
        return self.per_tenant - self._by_owner.get(owner, 0)

    def can_start(self, owner: str, sub_id: str) -> bool:
        """True when one more attempt of this owner's subscription fits every cap."""
        return self.free() > 0 and self.sub_free(sub_id) > 0 and self.owner_free(owner) > 0

    def take(self, owner: str, sub_id: str) -> None:
        """An attempt starts."""
        self.in_flight += 1
        self._by_sub[sub_id] = self._by_sub.get(sub_id, 0) + 1
        self._by_owner[owner] = self._by_owner.get(owner, 0) + 1

    def give_back(self, owner: str, sub_id: str) -> None:
        """An attempt ended."""
        self.in_flight -= 1
        for counts, key in ((self._by_sub, sub_id), (self._by_owner, owner)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]

    def mark(self, sub_id: str, *, delivered: bool, slow: bool) -> None:
        """Note how an attempt went: a delivery makes the endpoint fast again, a slow failure
        makes it slow."""
        if delivered:
            self._slow.discard(sub_id)
        elif slow:
            self._slow.add(sub_id)

    def plan(self, rows: list[tuple[bytes, float]]) -> list[PlannedRead]:
        """Which of the ready queues (`owner|sub` members with their scores) to read, and how
        many entries from each: round-robin across owners, within every cap."""
        free = self.free()
        by_owner: dict[str, list[tuple[str, str, float]]] = {}
        for raw, score in rows:
            member = raw.decode()
            owner, _, sub = member.partition("|")
            if sub and self.sub_free(sub) > 0:
                by_owner.setdefault(owner, []).append((member, sub, score))
        owners = list(by_owner)
        if owners:
            start = next(self._turn) % len(owners)
            owners = owners[start:] + owners[:start]
        planned: list[PlannedRead] = []
        taken: dict[str, int] = {}
        while free > 0 and owners:
            for owner in list(owners):
                candidates = by_owner[owner]
                owner_free = self.owner_free(owner) - taken.get(owner, 0)
                if owner_free <= 0 or not candidates:
                    owners.remove(owner)
                    continue
                member, sub, score = candidates.pop(0)
                count = min(self.sub_free(sub), owner_free, free)
                planned.append(PlannedRead(member, owner, sub, score, count))
                taken[owner] = taken.get(owner, 0) + count
                free -= count
                if free <= 0:
                    break
        return planned
