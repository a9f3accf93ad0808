"""Who a caller is: the credential header's value, kept only as a keyed hash (HMAC-SHA256).

The key is `tenancy.hash_key` when set, else derived from `admin_token`, else a random key created
once in Redis (`{prefix}:tenancy:key`), so every replica hashes alike and no clear credential is
ever stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from .config import Settings
from .connections import Client
from .keys import tenancy_key

OPERATOR = "operator"  # owner of operator-created and YAML-declared subscriptions


def tenant_of(credential: str | None, key: bytes) -> str | None:
    """`t_<hex>` for a credential, or None when the caller sent none."""
    if not credential:
        return None
    digest = hmac.new(key, credential.encode("utf-8", "surrogateescape"), hashlib.sha256)
    return "t_" + digest.hexdigest()[:40]


def configured_hash_key(settings: Settings) -> bytes | None:
    """The key from config (hash_key, else derived from admin_token), or None."""
    if settings.tenancy.hash_key is not None:
        return settings.tenancy.hash_key.get_secret_value().encode()
    if settings.admin_token is not None and settings.admin_token.get_secret_value():
        token = settings.admin_token.get_secret_value().encode()
        return hmac.new(token, b"sidecar tenancy hash key", hashlib.sha256).digest()
    return None


async def load_hash_key(settings: Settings, redis: Client | None) -> bytes:
    """The hash key: configured, else shared through Redis (created once), else per-process."""
    configured = configured_hash_key(settings)
    if configured is not None:
        return configured
    if redis is None:
        return secrets.token_bytes(32)
    key = tenancy_key(settings.key_prefix)
    await redis.set(key, secrets.token_hex(32), nx=True)
    value = await redis.get(key)
    return bytes(value) if value else secrets.token_bytes(32)


class TenantHasher:
    """Hashes credentials with the installation's key, loading it lazily (Redis may be down at
    startup; the first call after it is back gets the shared key)."""

    def __init__(self, settings: Settings, redis: Client | None) -> None:
        self.settings = settings
        self.redis = redis
        self._key = configured_hash_key(settings)

    async def key(self) -> bytes:
        """The hash key (may raise a Redis error while it cannot be loaded)."""
        if self._key is None:
            self._key = await load_hash_key(self.settings, self.redis)
        return self._key

    def known(self, credential: str | None) -> bool:
        """True when `tenant_now` can answer for this credential (none, or the key loaded)."""
        return not credential or self._key is not None

    def tenant_now(self, credential: str | None) -> str | None:
        """`tenant`, without waiting (see `known`)."""
        if not credential:
            return None
        assert self._key is not None
        return tenant_of(credential, self._key)

    async def tenant(self, credential: str | None) -> str | None:
        """The tenant of a credential, or None when there is none."""
        if not credential:
            return None
        return tenant_of(credential, await self.key())
