"""Fair scheduling of delivery attempts: how many may start, and from which queues.

Each subscription has its own queue; the delivery workers read only as many attempts from a
queue as may start at once, under three caps per process:

    global    `concurrency` attempts in flight
    owner     `per_tenant` of them for one owner (a tenant, or the operator), so one tenant
              cannot take every slot
    endpoint  `per_subscription` for one subscription while its circuit breaker is closed,
              1 while half-open, none while open (`breaker`), so a failing endpoint's backlog
              waits in its own queue, holding no slot, instead of in line before everyone
              else's

An attempt still in flight after `breaker.linger_after` counts as a failure of its endpoint
and gives its global and endpoint slots back (it stays counted against its owner's share), up
to `LINGERING_PER_SLOT` x `concurrency` such attempts: a receiver that hangs now and then keeps its
throughput, and hanging receivers cannot hold every slot for the whole timeout (one that hangs
every time opens its breaker after `breaker.failures` hangs).

A read is planned round-robin across owners (a fresh starting owner each time), so a backlog of
one tenant never delays another's first message. Endpoints known to deliver (their last attempt
here was delivered) are kept apart from the others (new, or failing): those take at most 3/4 of
the global slots (`PROVEN_SHARE`; all of them below 8), and every other read puts the owners of
proven endpoints first, so a crowd of endpoints nobody has seen answer (invented tenants'
tarpits) can neither take every slot nor push a working endpoint to the back of a long line.
`Slots` is pure bookkeeping: no I/O.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..config import Webhooks
from ..config.webhooks import LINGERING_PER_SLOT
from .breaker import Breakers

PROVEN_SHARE = 4  # 1/4 of the slots is kept for endpoints known to deliver


@dataclass(frozen=True, slots=True)
class PlannedRead:
    """One queue to read: its ready-set member and score, its owner and subscription, and how
    many entries to take from it."""

    member: str
    owner: str
    sub: str
    score: float
    count: int


def _less(counts: dict[str, int], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


def per_tenant_slots(config: Webhooks) -> int:
    """The owner cap: `per_tenant`, else half the slots, but room for two endpoints' worth
    (one slow endpoint of an owner must not starve the owner's others)."""
    return config.per_tenant or max(
        1, min(config.concurrency, max(config.concurrency // 2, 2 * config.per_subscription))
    )


class Slots:
    """The attempts in flight in this process, per owner and per subscription, against the
    caps."""

    def __init__(self, config: Webhooks, breakers: Breakers | None = None) -> None:
        self.concurrency = config.concurrency
        self.per_subscription = config.per_subscription
        self.per_tenant = per_tenant_slots(config)
        self.breakers = breakers or Breakers(config)
        self.in_flight = 0  # holding a global slot
        self.lingering = 0  # in flight past linger_after, global slot given back
        self.linger_cap = LINGERING_PER_SLOT * config.concurrency
        # Attempts of endpoints not known to deliver (new, failing) hold at most this many
        # (all of them below 8 slots: too few to set some apart).
        reserved = config.concurrency // PROVEN_SHARE if config.concurrency >= 8 else 0
        self.unproven_cap = config.concurrency - reserved
        self.unproven = 0
        self._by_sub: dict[str, int] = {}
        self._by_owner: dict[str, int] = {}
        self._unproven_by_sub: dict[str, int] = {}
        self._turn = itertools.count()

    def free(self) -> int:
        """Attempts that may still start in this process."""
        return self.concurrency - self.in_flight

    def sub_cap(self, sub_id: str) -> int:
        """The subscription's cap now (its breaker's: 1 half-open, 0 open)."""
        return self.breakers.cap(sub_id)

    def sub_free(self, sub_id: str) -> int:
        """Attempts of the subscription that may still start."""
        return self.sub_cap(sub_id) - self._by_sub.get(sub_id, 0)

    def owner_free(self, owner: str) -> int:
        """Attempts of the owner that may still start."""
        return self.per_tenant - self._by_owner.get(owner, 0)

    def can_start(self, owner: str, sub_id: str) -> bool:
        """True when one more attempt of this owner's subscription fits every cap."""
        return (
            self.free() > 0
            and self.sub_free(sub_id) > 0
            and self.owner_free(owner) > 0
            and (self.unproven < self.unproven_cap or self.breakers.proven(sub_id))
        )

    def take(self, owner: str, sub_id: str) -> None:
        """An attempt starts."""
        self.in_flight += 1
        self._by_sub[sub_id] = self._by_sub.get(sub_id, 0) + 1
        self._by_owner[owner] = self._by_owner.get(owner, 0) + 1
        if not self.breakers.proven(sub_id):
            self.unproven += 1
            self._unproven_by_sub[sub_id] = self._unproven_by_sub.get(sub_id, 0) + 1

    def _leave_global(self, sub_id: str) -> None:
        self.in_flight -= 1
        _less(self._by_sub, sub_id)
        if sub_id in self._unproven_by_sub:
            self.unproven -= 1
            _less(self._unproven_by_sub, sub_id)

    def linger(self, owner: str, sub_id: str) -> bool:
        """An attempt is still in flight past `linger_after`: it counts as a failure of its
        endpoint, and gives its global and endpoint slots back (not its owner's) if there is
        room among the lingering; True when it did (`give_back(..., lingered=True)` at its
        end)."""
        self.breakers.hung(sub_id, owner)
        if self.lingering >= self.linger_cap:
            return False
        self._leave_global(sub_id)
        self.lingering += 1
        return True

    def give_back(self, owner: str, sub_id: str, *, lingered: bool = False) -> None:
        """An attempt ended."""
        if lingered:
            self.lingering -= 1
        else:
            self._leave_global(sub_id)
        _less(self._by_owner, owner)

    def mark(self, sub_id: str, *, delivered: bool, slow: bool, owner: str = "") -> None:
        """Note how an attempt went, for the endpoint's breaker: `slow` is a failure
        (`retry.is_slow`)."""
        self.breakers.record(sub_id, owner, delivered=delivered, failed=slow)

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
        turn = next(self._turn)
        if owners:
            start = turn % len(owners)
            owners = owners[start:] + owners[:start]
            if turn % 2:  # proven endpoints first; their owners' proven ones first too
                proven = self.breakers.proven
                for candidates in by_owner.values():
                    candidates.sort(key=lambda c: not proven(c[1]))
                owners.sort(key=lambda o: not proven(by_owner[o][0][1]))
        planned: list[PlannedRead] = []
        taken: dict[str, int] = {}
        unproven_free = self.unproven_cap - self.unproven
        while free > 0 and owners:
            for owner in list(owners):
                candidates = by_owner[owner]
                owner_free = self.owner_free(owner) - taken.get(owner, 0)
                if owner_free <= 0 or not candidates:
                    owners.remove(owner)
                    continue
                member, sub, score = candidates.pop(0)
                count = min(self.sub_free(sub), owner_free, free)
                if not self.breakers.proven(sub):
                    count = min(count, unproven_free)
                    if count <= 0:
                        continue
                    unproven_free -= count
                planned.append(PlannedRead(member, owner, sub, score, count))
                taken[owner] = taken.get(owner, 0) + count
                free -= count
                if free <= 0:
                    break
        return planned
