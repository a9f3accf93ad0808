"""Subscriptions in Redis, scoped by owner (a tenant hash, or `OPERATOR`).

A subscription's hash lives under its owner's hash tag; a global index maps every id to its
owner (the operator's listing, and lookups by id). A tenant reaches only keys under its own
tag, so another tenant's id is simply not there.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from ..config import DeclaredSubscription
from ..connections import Client, register
from ..tenancy import OPERATOR
from ..timestamps import iso
from .keys import (
    all_subscriptions_key,
    attempts_key,
    owner_key,
    queue_key,
    subscription_key,
    subscriptions_by_age_key,
    version_key,
)
from .signing import new_secret

ROTATION_GRACE_S = 24 * 3600.0  # the old secret keeps signing this long after a rotation
MAX_CACHED_OWNERS = 10_000  # owners whose subscriptions a process keeps for fan-out
MAX_CACHED_SUBSCRIPTIONS = 10_000  # subscriptions a process keeps for its deliveries

# KEYS: the subscription hash. ARGV: field, value, ... Set only while it exists.
_PATCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: the subscription hash, the owner's set. ARGV: id, max per owner (0: no limit), field,
# value, ... Creates it unless the owner already has the maximum; 1 created, 0 over quota.
_CREATE = """
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('SCARD', KEYS[2]) >= limit then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""


class QuotaExceeded(Exception):
    """The owner has as many subscriptions as it may."""


def new_version() -> str:
    """A fresh version token. Random, not a counter: after Redis loses its data a counter would
    start again and could repeat the version a cache holds."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Subscription:
    """One webhook endpoint and who owns it."""

    id: str
    owner: str
    url: str
    events: list[str]
    description: str = ""
    enabled: bool = True
    secret: str = ""
    previous_secret: str = ""
    previous_until: float = 0.0
    created_at: float = field(default_factory=time.time)
    declared: bool = False  # from the YAML file: reset from it at startup
    failing_since: float = 0.0  # first failed attempt since the last success (0: not failing)
    disabled_reason: str = ""  # why it was disabled by the sidecar (gone, failing), if it was

    def wants(self, event_type: str) -> bool:
        """True when this subscription receives `event_type`."""
        return self.enabled and ("*" in self.events or event_type in self.events)

    def active_secrets(self, now: float | None = None) -> list[str]:
        """Secrets that sign a message now: the current one, plus the previous during grace."""
        now = time.time() if now is None else now
        if self.previous_secret and now < self.previous_until:
            return [self.secret, self.previous_secret]
        return [self.secret]

    def public(self) -> dict[str, Any]:
        """The JSON view (no secret)."""
        out: dict[str, Any] = {
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "description": self.description,
            "enabled": self.enabled,
            "created_at": iso(self.created_at),
        }
        if self.failing_since:
            out["failing_since"] = iso(self.failing_since)
        if self.disabled_reason and not self.enabled:
            out["disabled_reason"] = self.disabled_reason
        return out

    def fields(self) -> dict[str, str]:
        """The Redis hash fields."""
        return {
            "id": self.id,
            "owner": self.owner,
            "url": self.url,
            "events": orjson.dumps(self.events).decode(),
            "description": self.description,
            "enabled": "1" if self.enabled else "0",
            "secret": self.secret,
            "previous_secret": self.previous_secret,
            "previous_until": repr(self.previous_until),
            "created_at": repr(self.created_at),
            "declared": "1" if self.declared else "0",
            "disabled_reason": self.disabled_reason,
            "failing_since": repr(self.failing_since),
        }

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> Subscription:
        """Decode a Redis hash."""
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=f["id"],
            owner=f["owner"],
            url=f["url"],
            events=list(orjson.loads(f.get("events") or "[]")),
            description=f.get("description", ""),
            enabled=f.get("enabled") == "1",
            secret=f.get("secret", ""),
            previous_secret=f.get("previous_secret", ""),
            previous_until=float(f.get("previous_until") or 0),
            created_at=float(f.get("created_at") or 0),
            declared=f.get("declared") == "1",
            failing_since=float(f.get("failing_since") or 0),
            disabled_reason=f.get("disabled_reason", ""),
        )


def _flat(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


class SubscriptionStore:
    """Creates, reads, updates and deletes subscriptions; never crosses owners."""

    def __init__(self, redis: Client, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._patch = register(redis, _PATCH)
        self._create = register(redis, _CREATE)
        self._snapshot: tuple[bytes | None, list[Subscription]] | None = None
        # Subscriptions as read while the set was at `_read_at[0]` (None: not known yet), the
        # most recently read last: what a delivery uses without reading it again.
        self._read: OrderedDict[str, Subscription] = OrderedDict()
        self._read_at: tuple[bytes | None] | None = None
        self._owners: OrderedDict[str, list[Subscription]] = OrderedDict()
        self._owners_version: bytes | None = None
        self._anyone: tuple[bytes | None, bool] | None = None

    def key(self, sub: Subscription) -> str:
        """The subscription's hash."""
        return subscription_key(self.prefix, sub.owner, sub.id)

    async def _indexed(self, sub: Subscription) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(all_subscriptions_key(self.prefix), sub.id, sub.owner)
            pipe.zadd(subscriptions_by_age_key(self.prefix), {sub.id: sub.created_at})
            pipe.set(version_key(self.prefix), new_version())
            await pipe.execute()

    async def ensure_indexed(self) -> int:
        """Put every subscription in the by-age index if some are missing from it (made before
        the index existed, or lost between two writes); how many were added."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hlen(all_subscriptions_key(self.prefix))
            pipe.zcard(subscriptions_by_age_key(self.prefix))
            everyone, indexed = await pipe.execute()
        if int(everyone) == int(indexed):
            return 0
        subs = await self.list_for(None)
        if subs:
            await self.redis.zadd(
                subscriptions_by_age_key(self.prefix), {s.id: s.created_at for s in subs}
            )
        return len(subs) - int(indexed)

    async def save(self, sub: Subscription) -> Subscription:
        """Write a subscription whole (an upsert) and index it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(sub), mapping=sub.fields())
            pipe.sadd(owner_key(self.prefix, sub.owner), sub.id)
            await pipe.execute()
        await self._indexed(sub)
        return sub

    async def create(
        self, owner: str, url: str, events: list[str], description: str = "", limit: int = 0
    ) -> Subscription:
        """A new enabled subscription with a fresh secret; `QuotaExceeded` when the owner has
        `limit` already (0: no limit). Checked and created atomically."""
        sub = Subscription(
            id="sub_" + secrets.token_hex(12),
            owner=owner,
            url=url,
            events=events,
            description=description,
            secret=new_secret(),
        )
        keys = [self.key(sub), owner_key(self.prefix, owner)]
        if not await self._create(keys=keys, args=[sub.id, limit, *_flat(sub.fields())]):
            raise QuotaExceeded(owner)
        await self._indexed(sub)
        return sub

    async def clients_count(self) -> int:
        """How many subscriptions clients hold together (the operator's left out); read in two
        commands, so a burst of creates on several replicas may pass the total by a few."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hlen(all_subscriptions_key(self.prefix))
            pipe.scard(owner_key(self.prefix, OPERATOR))
            everyone, operator = await pipe.execute()
        return int(everyone) - int(operator)

    async def count(self, owner: str) -> int:
        """How many subscriptions `owner` has."""
        return int(await self.redis.scard(owner_key(self.prefix, owner)))  # type: ignore[misc]

    async def owner_of(self, sub_id: str) -> str | None:
        """The owner of a subscription id, from the index."""
        owner = await self.redis.hget(all_subscriptions_key(self.prefix), sub_id)  # type: ignore[misc]
        return owner.decode() if owner else None

    async def get_owned(self, owner: str, sub_id: str) -> Subscription | None:
        """The subscription `owner` has under this id, or None."""
        at = self._read_at
        raw = await self.redis.hgetall(subscription_key(self.prefix, owner, sub_id))  # type: ignore[misc]
        if not raw:
            return None
        sub = Subscription.from_fields(raw)
        if at is not None and at == self._read_at:
            # Read after the version `at` was read (see `cached`), so at least as new.
            self._remember(sub)
        return sub

    def _remember(self, sub: Subscription) -> None:
        self._read[sub.id] = sub
        self._read.move_to_end(sub.id)
        while len(self._read) > MAX_CACHED_SUBSCRIPTIONS:
            self._read.popitem(last=False)

    async def get(self, sub_id: str) -> Subscription | None:
        """The subscription, whoever owns it, or None."""
        owner = await self.owner_of(sub_id)
        return await self.get_owned(owner, sub_id) if owner else None

    async def get_for(self, sub_id: str, caller: str) -> Subscription | None:
        """The subscription if `caller` may see it (the operator sees all), else None."""
        if caller == OPERATOR:
            return await self.get(sub_id)
        return await self.get_owned(caller, sub_id)

    async def list_for(self, owners: list[str] | None) -> list[Subscription]:
        """Subscriptions of these owners (None: everyone's), oldest first."""
        if owners is None:
            index = await self.redis.hgetall(all_subscriptions_key(self.prefix))  # type: ignore[misc]
            pairs = [(o.decode(), s.decode()) for s, o in index.items()]
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for owner in owners:
                    pipe.smembers(owner_key(self.prefix, owner))
                sets = await pipe.execute()
            pairs = [(o, s.decode()) for o, ids in zip(owners, sets, strict=True) for s in ids]
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner, sub_id in pairs:
                pipe.hgetall(subscription_key(self.prefix, owner, sub_id))
            rows = await pipe.execute()
        subs = [Subscription.from_fields(row) for row in rows if row]
        return sorted(subs, key=lambda s: (s.created_at, s.id))

    async def page(self, cursor: str | None, limit: int) -> tuple[list[Subscription], str | None]:
        """Everyone's subscriptions, oldest first, `limit` at a time from `cursor` (the
        `created_at:id` of the last one seen); and the next page's cursor (None: no more)."""
        key = subscriptions_by_age_key(self.prefix)
        after_score, after_id = -1.0, ""
        if cursor:
            score, _, after_id = cursor.partition(":")
            after_score = float(score)
        rows = await self.redis.zrangebyscore(
            key, after_score, "+inf", start=0, num=limit + 50, withscores=True
        )
        ids = [
            (raw.decode(), score)
            for raw, score in rows
            if score > after_score or raw.decode() > after_id
        ][: limit + 1]
        if not ids:
            return [], None
        owners = await self.redis.hmget(all_subscriptions_key(self.prefix), [i for i, _ in ids])  # type: ignore[misc]
        async with self.redis.pipeline(transaction=False) as pipe:
            for (sub_id, _score), owner in zip(ids, owners, strict=True):
                if owner is not None:
                    pipe.hgetall(subscription_key(self.prefix, owner.decode(), sub_id))
            found = [Subscription.from_fields(row) for row in await pipe.execute() if row]
        more = len(found) > limit
        found = found[:limit]
        last = found[-1] if found else None
        return found, f"{last.created_at!r}:{last.id}" if more and last else None

    async def anyone(self) -> bool:
        """True when any subscription exists (kept until a subscription changes)."""
        version: bytes | None = await self.redis.get(version_key(self.prefix))
        if self._anyone is None or self._anyone[0] != version:
            count = await self.redis.hlen(all_subscriptions_key(self.prefix))  # type: ignore[misc]
            self._anyone = (version, int(count) > 0)
        return self._anyone[1]

    async def of_owners(self, owners: set[str]) -> dict[str, list[Subscription]]:
        """The subscriptions of each of these owners, from a cache kept per owner until any
        subscription changes (one GET per call): fan-out reads only the owners a batch of
        completions concerns, however many subscriptions there are."""
        version: bytes | None = await self.redis.get(version_key(self.prefix))
        if version != self._owners_version:
            self._owners.clear()
            self._owners_version = version
        missing = [o for o in owners if o not in self._owners]
        if missing:
            async with self.redis.pipeline(transaction=False) as pipe:
                for owner in missing:
                    pipe.smembers(owner_key(self.prefix, owner))
                sets = await pipe.execute()
            pairs = [(o, s.decode()) for o, ids in zip(missing, sets, strict=True) for s in ids]
            async with self.redis.pipeline(transaction=False) as pipe:
                for owner, sub_id in pairs:
                    pipe.hgetall(subscription_key(self.prefix, owner, sub_id))
                rows = await pipe.execute()
            loaded: dict[str, list[Subscription]] = {o: [] for o in missing}
            for row in rows:
                if row:
                    sub = Subscription.from_fields(row)
                    loaded[sub.owner].append(sub)
            for owner, subs in loaded.items():
                self._owners[owner] = subs
                self._owners.move_to_end(owner)
            while len(self._owners) > MAX_CACHED_OWNERS:
                self._owners.popitem(last=False)
        return {o: self._owners.get(o, []) for o in owners}

    async def snapshot(self) -> list[Subscription]:
        """Every subscription, from a cache reloaded only when the version moved (one GET per
        call): fan-out of a batch of completions reads Redis once, not per completion."""
        version: bytes | None = await self.redis.get(version_key(self.prefix))
        if self._snapshot is None or self._snapshot[0] != version:
            # Read after the version: a change made meanwhile moves it again, so the next call
            # reloads; a stale view lasts at most until then.
            subs = await self.list_for(None)
            self._snapshot = (version, subs)
            self._read_at, self._read = (version,), OrderedDict()
            for sub in subs[-MAX_CACHED_SUBSCRIPTIONS:]:
                self._read[sub.id] = sub
        return self._snapshot[1]

    def cached(self, sub_id: str, version: bytes | None) -> Subscription | None:
        """The subscription as last read (by `get_owned` or a snapshot) if nothing changed
        since, i.e. the set is still at `version` (read before calling), else None. A version
        that moved empties what was read; reads made from then on are kept under it."""
        if self._read_at != (version,):
            self._read_at, self._read = (version,), OrderedDict()
            return None
        return self._read.get(sub_id)

    async def update(self, sub: Subscription, **changes: Any) -> Subscription | None:
        """Write only the changed fields (url, events, description, enabled, secrets), and only
        while the subscription exists: a change racing a delete cannot bring it back, nor undo
        another field changed meanwhile (a 410 disabling it). None when it is gone."""
        changed = replace(sub, **changes)
        fields = {k: v for k, v in changed.fields().items() if k in changes}
        if not await self._patch(keys=[self.key(sub)], args=_flat(fields)):
            return None
        await self.redis.set(version_key(self.prefix), new_version())
        return await self.get_owned(sub.owner, sub.id)

    async def rotate(self, sub: Subscription) -> Subscription | None:
        """A new secret; the old one keeps signing beside it for `ROTATION_GRACE_S`."""
        return await self.update(
            sub,
            secret=new_secret(),
            previous_secret=sub.secret,
            previous_until=time.time() + ROTATION_GRACE_S,
        )

    async def delete(self, sub: Subscription) -> None:
        """Remove a subscription, its queue and its attempts log (unindexed first, so fan-out
        stops choosing it)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(all_subscriptions_key(self.prefix), sub.id)
            pipe.zrem(subscriptions_by_age_key(self.prefix), sub.id)
            await pipe.execute()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(
                self.key(sub),
                attempts_key(self.prefix, sub.owner, sub.id),
                queue_key(self.prefix, sub.owner, sub.id),
            )
            pipe.srem(owner_key(self.prefix, sub.owner), sub.id)
            await pipe.execute()
        await self.redis.set(version_key(self.prefix), new_version())

    async def declare(self, declared: list[DeclaredSubscription]) -> None:
        """Make the YAML-declared operator subscriptions exactly the file's: upsert each (the
        file wins; creation time is kept) and delete those declared before but gone from it."""
        wanted = {d.id for d in declared}
        for old in await self.list_for([OPERATOR]):
            if old.declared and old.id not in wanted:
                await self.delete(old)
        for d in declared:
            existing = await self.get_owned(OPERATOR, d.id)
            await self.save(
                Subscription(
                    id=d.id,
                    owner=OPERATOR,
                    url=d.url,
                    events=list(d.events),
                    description=d.description,
                    enabled=d.enabled,
                    secret=d.secret.get_secret_value(),
                    created_at=existing.created_at if existing else time.time(),
                    declared=True,
                )
            )


def matching_in(
    subs: list[Subscription], tenant: str | None, event_type: str
) -> list[Subscription]:
    """Of `subs`, those `tenant` (or the operator) owns that want `event_type`."""
    owners = {OPERATOR, tenant} if tenant else {OPERATOR}
    return [s for s in subs if s.owner in owners and s.wants(event_type)]
