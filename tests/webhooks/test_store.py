"""The subscription store on a real Redis: ownership, matching, rotation, declared ones."""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from standardwebhooks.webhooks import Webhook

from sidecar.config import DeclaredSubscription
from sidecar.tenancy import OPERATOR
from sidecar.webhooks.keys import version_key
from sidecar.webhooks.signing import signature_headers
from sidecar.webhooks.store import SubscriptionStore, matching_in


async def test_ownership_and_matching(redis: aioredis.Redis, key_prefix: str) -> None:
    store = SubscriptionStore(redis, key_prefix)
    a = await store.create("t_a", "http://127.0.0.1:1/a", ["user.created"])
    b = await store.create("t_b", "http://127.0.0.1:1/b", ["*"])
    op = await store.create(OPERATOR, "http://127.0.0.1:1/op", ["*"])
    assert a.secret.startswith("whsec_")
    assert await store.get_for(a.id, "t_b") is None
    assert await store.get_for(a.id, OPERATOR) == a
    assert [s.id for s in await store.list_for(["t_a"])] == [a.id]
    assert {s.id for s in await store.list_for(None)} == {a.id, b.id, op.id}
    assert {s.id for s in matching_in(await store.list_for(None), "t_a", "user.created")} == {
        a.id,
        op.id,
    }
    assert {s.id for s in matching_in(await store.list_for(None), "t_a", "other")} == {op.id}
    assert {s.id for s in matching_in(await store.list_for(None), None, "user.created")} == {op.id}
    await store.update(op, enabled=False)
    assert {s.id for s in matching_in(await store.list_for(None), "t_b", "x")} == {b.id}
    await store.delete(b)
    assert await store.get(b.id) is None
    assert {s.id for s in await store.list_for(["t_b"])} == set()


async def test_rotation_keeps_old_secret_during_grace(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    store = SubscriptionStore(redis, key_prefix)
    sub = await store.create("t_a", "http://127.0.0.1:1/a", ["*"])
    rotated = await store.rotate(sub)
    assert rotated is not None
    assert rotated.secret != sub.secret
    active = rotated.active_secrets()
    assert active == [rotated.secret, sub.secret]
    headers = signature_headers(active, "msg_x", b"{}")
    Webhook(sub.secret).verify(b"{}", headers)
    Webhook(rotated.secret).verify(b"{}", headers)
    assert rotated.active_secrets(time.time() + 25 * 3600) == [rotated.secret]


async def test_a_change_writes_only_its_fields_and_never_revives_a_deleted_one(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    store = SubscriptionStore(redis, key_prefix)
    sub = await store.create("t_a", "http://127.0.0.1:1/a", ["*"])
    await store.update(sub, enabled=False)  # e.g. a 410 disabled it after `sub` was read
    changed = await store.update(sub, description="renamed")
    assert changed is not None
    assert (changed.description, changed.enabled) == ("renamed", False)
    await store.delete(sub)
    assert await store.update(sub, url="http://127.0.0.1:1/b") is None
    assert await store.rotate(sub) is None
    assert await store.get(sub.id) is None


async def test_declared_subscriptions_are_operator_owned(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    store = SubscriptionStore(redis, key_prefix)
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    audit = DeclaredSubscription(id="ops-audit", url="http://127.0.0.1:1/audit/", secret=secret)
    old = DeclaredSubscription(id="ops-old", url="http://127.0.0.1:1/old", secret=secret)
    created = await store.create(OPERATOR, "http://127.0.0.1:1/api-made", ["*"])
    await store.declare([audit, old])
    sub = await store.get("ops-audit")
    assert sub is not None and sub.owner == OPERATOR and sub.events == ["*"]
    assert sub.url == "http://127.0.0.1:1/audit/"  # exactly as written
    assert sub.declared and not created.declared
    # The next start's file no longer has ops-old: it stops receiving; API-made ones stay.
    await store.declare([audit])
    assert await store.get("ops-old") is None
    matching = matching_in(await store.list_for(None), "t_any", "anything")
    assert sorted(s.id for s in matching) == sorted(["ops-audit", created.id])


async def test_the_cached_snapshot_is_used_only_while_nothing_changed(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    store = SubscriptionStore(redis, key_prefix)
    sub = await store.create("t_a", "http://127.0.0.1:1/a", ["*"])
    assert [s.id for s in await store.snapshot()] == [sub.id]
    version = await redis.get(version_key(key_prefix))
    assert store.cached(sub.id, version) == sub
    await SubscriptionStore(redis, key_prefix).update(sub, enabled=False)  # another replica
    changed = await redis.get(version_key(key_prefix))
    assert changed != version and store.cached(sub.id, changed) is None
    assert [s.enabled for s in await store.snapshot()] == [False]


async def test_a_subscription_read_once_is_reused_until_anything_changes(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    store = SubscriptionStore(redis, key_prefix)
    sub = await SubscriptionStore(redis, key_prefix).create("t_a", "http://127.0.0.1:1/a", ["*"])
    version = await redis.get(version_key(key_prefix))
    assert store.cached(sub.id, version) is None  # never read here
    assert await store.get_owned(sub.owner, sub.id) == sub
    assert store.cached(sub.id, version) == sub  # no whole snapshot needed
    await SubscriptionStore(redis, key_prefix).update(sub, enabled=False)  # another replica
    changed = await redis.get(version_key(key_prefix))
    assert store.cached(sub.id, changed) is None
    fresh = await store.get_owned(sub.owner, sub.id)
    assert fresh is not None and not fresh.enabled
    assert store.cached(sub.id, changed) == fresh
