"""Who a caller is (sidecar/tenancy.py): a credential kept only as a keyed hash, with the key from
the config, derived from the admin token, or created once in Redis and shared by every replica."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from sidecar.config import Settings, parse_settings
from sidecar.keys import tenancy_key
from sidecar.tenancy import TenantHasher, configured_hash_key, load_hash_key, tenant_of


def settings(**raw: Any) -> Settings:
    return parse_settings(raw, "<test>", env={})


def test_a_tenant_is_a_keyed_hash_of_the_credential() -> None:
    tenant = tenant_of("Bearer key-a", b"k1")
    assert tenant is not None and tenant.startswith("t_") and len(tenant) == 2 + 40
    assert "key-a" not in tenant
    assert tenant == tenant_of("Bearer key-a", b"k1")  # stable
    assert tenant != tenant_of("Bearer key-b", b"k1")
    assert tenant != tenant_of("Bearer key-a", b"k2")  # another installation's key
    assert tenant_of(None, b"k1") is None and tenant_of("", b"k1") is None


def test_the_configured_key_is_hash_key_else_one_derived_from_the_admin_token() -> None:
    both = settings(tenancy={"hash_key": "h" * 32}, admin_token="op-token-0123456789")
    assert configured_hash_key(both) == b"h" * 32
    derived = configured_hash_key(settings(admin_token="op-token-0123456789"))
    assert derived is not None and b"op-token" not in derived
    assert derived == configured_hash_key(settings(admin_token="op-token-0123456789"))
    assert configured_hash_key(settings()) is None


async def test_without_a_configured_key_replicas_share_one_made_in_redis(
    redis: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    config = settings(redis_url=redis_url, key_prefix=key_prefix)
    one, two = TenantHasher(config, redis), TenantHasher(config, redis)
    assert not one.known("Bearer key-a") and one.known(None)  # nothing loaded yet
    tenant = await one.tenant("Bearer key-a")
    assert one.known("Bearer key-a") and one.tenant_now("Bearer key-a") == tenant
    assert await two.tenant("Bearer key-a") == tenant  # another replica hashes alike
    stored = await redis.get(tenancy_key(key_prefix))
    assert stored is not None and await load_hash_key(config, redis) == stored  # made once
    assert await one.tenant(None) is None


async def test_a_configured_key_needs_no_redis() -> None:
    config = settings(tenancy={"hash_key": "h" * 32})
    hasher = TenantHasher(config, None)
    assert hasher.known("Bearer key-a")
    assert hasher.tenant_now("Bearer key-a") == tenant_of("Bearer key-a", b"h" * 32)
    # Without Redis nor a configured key, each process has a key of its own.
    assert await load_hash_key(settings(), None) != await load_hash_key(settings(), None)
