"""Subscriptions in Redis, scoped by owner (a tenant hash, or `OPERATOR`)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from redis.asyncio import Redis

from ..config import DeclaredSubscription
from ..tenancy import OPERATOR
from ..timestamps import iso
from .keys import (
    all_subscriptions_key,
    attempts_key,
    owner_key,
    subscription_key,
    version_key,
)
from .signing import new_secret

ROTATION_GRACE_S = 24 * 3600.0  # the old secret keeps signing this long after a rotation

# KEYS: the subscription hash, the version. ARGV: new version, field, value, ... Set only while
# it exists.
_PATCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""


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
        return {
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "description": self.description,
            "enabled": self.enabled,
            "created_at": iso(self.created_at),
        }

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
        )


class SubscriptionStore:
    """Creates, reads, updates and deletes subscriptions; never crosses owners."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._patch = redis.register_script(_PATCH)
        self._snapshot: tuple[bytes | None, list[Subscription]] | None = None
        self._by_id: dict[str, Subscription] = {}

    async def save(self, sub: Subscription) -> Subscription:
        """Write a subscription and index it by owner."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(subscription_key(self.prefix, sub.id), mapping=sub.fields())
            pipe.sadd(all_subscriptions_key(self.prefix), sub.id)
            pipe.sadd(owner_key(self.prefix, sub.owner), sub.id)
            pipe.set(version_key(self.prefix), new_version())
            await pipe.execute()
        return sub

    async def create(
        self, owner: str, url: str, events: list[str], description: str = ""
    ) -> Subscription:
        """A new enabled subscription with a fresh secret."""
        sub = Subscription(
            id="sub_" + secrets.token_hex(12),
            owner=owner,
            url=url,
            events=events,
            description=description,
            secret=new_secret(),
        )
        return await self.save(sub)

    async def get(self, sub_id: str) -> Subscription | None:
        """The subscription, or None."""
        raw = await self.redis.hgetall(subscription_key(self.prefix, sub_id))  # type: ignore[misc]
        return Subscription.from_fields(raw) if raw else None

    async def get_for(self, sub_id: str, caller: str) -> Subscription | None:
        """The subscription if `caller` may see it (the operator sees all), else None."""
        sub = await self.get(sub_id)
        if sub is None or (caller != OPERATOR and sub.owner != caller):
            return None
        return sub

    async def list_for(self, owners: list[str] | None) -> list[Subscription]:
        """Subscriptions of these owners (None: everyone's), oldest first."""
        if owners is None:
            ids = await self.redis.smembers(all_subscriptions_key(self.prefix))  # type: ignore[misc]
        else:
            ids = await self.redis.sunion([owner_key(self.prefix, o) for o in owners])  # type: ignore[misc]
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub_id in ids:
                pipe.hgetall(subscription_key(self.prefix, sub_id.decode()))
            rows = await pipe.execute()
        subs = [Subscription.from_fields(row) for row in rows if row]
        return sorted(subs, key=lambda s: (s.created_at, s.id))

    async def snapshot(self) -> list[Subscription]:
        """Every subscription, from a cache reloaded only when the version moved (one GET per
        call): fan-out of a batch of completions reads Redis once, not per completion."""
        version: bytes | None = await self.redis.get(version_key(self.prefix))
        if self._snapshot is None or self._snapshot[0] != version:
            # Read after the version: a change made meanwhile moves it again, so the next call
            # reloads; a stale view lasts at most until then.
            subs = await self.list_for(None)
            self._snapshot = (version, subs)
            self._by_id = {s.id: s for s in subs}
        return self._snapshot[1]

    def cached(self, sub_id: str, version: bytes | None) -> Subscription | None:
        """The subscription from the last snapshot if it is still at `version`, else None."""
        if self._snapshot is None or self._snapshot[0] != version:
            return None
        return self._by_id.get(sub_id)

    async def update(self, sub: Subscription, **changes: Any) -> Subscription | None:
        """Write only the changed fields (url, events, description, enabled, secrets), and only
        while the subscription exists: a change racing a delete cannot bring it back, nor undo
        another field changed meanwhile (a 410 disabling it). None when it is gone."""
        changed = replace(sub, **changes)
        fields = {k: v for k, v in changed.fields().items() if k in changes}
        args: list[str] = [new_version()] + [item for pair in fields.items() for item in pair]
        keys = [subscription_key(self.prefix, sub.id), version_key(self.prefix)]
        if not await self._patch(keys=keys, args=args):
            return None
        return await self.get(sub.id)

    async def rotate(self, sub: Subscription) -> Subscription | None:
        """A new secret; the old one keeps signing beside it for `ROTATION_GRACE_S`."""
        return await self.update(
            sub,
            secret=new_secret(),
            previous_secret=sub.secret,
            previous_until=time.time() + ROTATION_GRACE_S,
        )

    async def delete(self, sub: Subscription) -> None:
        """Remove a subscription and its attempts log."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(subscription_key(self.prefix, sub.id), attempts_key(self.prefix, sub.id))
            pipe.srem(all_subscriptions_key(self.prefix), sub.id)
            pipe.srem(owner_key(self.prefix, sub.owner), sub.id)
            pipe.set(version_key(self.prefix), new_version())
            await pipe.execute()

    async def declare(self, declared: list[DeclaredSubscription]) -> None:
        """Make the YAML-declared operator subscriptions exactly the file's: upsert each (the
        file wins; creation time is kept) and delete those declared before but gone from it."""
        wanted = {d.id for d in declared}
        for old in await self.list_for([OPERATOR]):
            if old.declared and old.id not in wanted:
                await self.delete(old)
        for d in declared:
            existing = await self.get(d.id)
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
