"""Portal sessions: short-lived, revocable bearer tokens standing for one owner (a tenant or the
operator), optionally read-only.

A session is minted by the operator for a client (`POST /admin/api/portal-sessions`: a portal
link) or by a caller for itself (`POST /admin/api/sign-in`, the portal's sign-in form). Its token
(`psess_<random>`) is shown once and travels in `Authorization: Bearer psess_...`; Redis keeps
only its SHA-256, the owner and the scope, never the credential it was made from.

    {prefix}:portal:session:{sha256(token)}  hash, TTL expiry + 1 day: id, owner, read_only,
                                             created_at, expires_at, state (live | revoked)
    {prefix}:portal:id:{id}                  string, same TTL: the token's hash (for revoking)
    {prefix}:portal:owner:{owner}            sorted set, score = expiry: an owner's sessions
    {prefix}:portal:sign-ins:{address}:{min} counter, TTL 61 s: sign-ins from one address

A session is kept a day past its expiry so that a late request learns it *expired* (or was
*revoked*) rather than that it is unknown. An owner holds at most `MAX_SESSIONS_PER_OWNER` live
sessions; minting one more revokes the one that would expire first.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from ..connections import Client

TOKEN_PREFIX = "psess_"
ID_PREFIX = "ps_"
DEFAULT_TTL_S = 3600.0
MAX_TTL_S = 24 * 3600.0
MIN_TTL_S = 1.0
KEEP_AFTER_EXPIRY_S = 24 * 3600.0
MAX_SESSIONS_PER_OWNER = 100
MAX_TOKEN_CHARS = 128

Invalid = Literal["expired", "revoked", "unknown"]


def session_key(prefix: str, token_hash: str) -> str:
    """Hash of one session, by its token's SHA-256."""
    return f"{prefix}:portal:session:{token_hash}"


def session_id_key(prefix: str, session_id: str) -> str:
    """The token hash of a session id."""
    return f"{prefix}:portal:id:{session_id}"


def owner_sessions_key(prefix: str, owner: str) -> str:
    """Sorted set of an owner's session ids (score: expiry in ms)."""
    return f"{prefix}:portal:owner:{owner}"


def token_hash(token: str) -> str:
    """The SHA-256 (hex) a token is stored under."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def bearer_session_token(authorization: str | None) -> str | None:
    """The `psess_...` token of an `Authorization: Bearer psess_...` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
        return None
    return token


@dataclass(frozen=True, slots=True)
class PortalSession:
    """One session as stored."""

    id: str
    owner: str
    read_only: bool
    created_at: float
    expires_at: float
    state: str = "live"

    def invalid(self, now: float | None = None) -> Invalid | None:
        """Why this session can no longer be used, or None while it can."""
        if self.state == "revoked":
            return "revoked"
        if (time.time() if now is None else now) >= self.expires_at:
            return "expired"
        return None


def sign_ins_key(prefix: str, address: str, minute: int) -> str:
    """Counter of one client address's sign-ins in one minute."""
    return f"{prefix}:portal:sign-ins:{address}:{minute}"


class PortalSessions:
    """Mints, resolves and revokes portal sessions in Redis."""

    def __init__(self, redis: Client, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    async def mint(self, owner: str, ttl_s: float, read_only: bool) -> tuple[PortalSession, str]:
        """A new session for `owner` and its token (shown to the caller once)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_hash(token)
        now = time.time()
        session = PortalSession(
            id=ID_PREFIX + secrets.token_hex(12),
            owner=owner,
            read_only=read_only,
            created_at=now,
            expires_at=now + ttl_s,
        )
        keep_s = int(ttl_s + KEEP_AFTER_EXPIRY_S) + 1
        owner_key = owner_sessions_key(self.prefix, owner)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(
                session_key(self.prefix, digest),
                mapping={
                    "id": session.id,
                    "owner": owner,
                    "read_only": "1" if read_only else "0",
                    "created_at": repr(session.created_at),
                    "expires_at": repr(session.expires_at),
                    "state": "live",
                },
            )
            pipe.expire(session_key(self.prefix, digest), keep_s)
            pipe.set(session_id_key(self.prefix, session.id), digest, ex=keep_s)
            pipe.zremrangebyscore(owner_key, "-inf", int(now * 1000))
            pipe.zadd(owner_key, {session.id: int(session.expires_at * 1000)})
            pipe.expire(owner_key, int(MAX_TTL_S + KEEP_AFTER_EXPIRY_S) + 1)
            pipe.zcard(owner_key)
            replies = await pipe.execute()
        excess = int(replies[-1]) - MAX_SESSIONS_PER_OWNER
        if excess > 0:
            oldest = await self.redis.zrange(owner_key, 0, excess - 1)
            for old in oldest:
                await self.revoke(old.decode(), owner)
        return session, token

    async def sign_in_wait(self, address: str, per_minute: int) -> int:
        """Count a sign-in from `address`; 0 while within `per_minute`, else the seconds until
        the next minute (a fixed window)."""
        now = time.time()
        key = sign_ins_key(self.prefix, address[:64], int(now // 60))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 61)
            count, _ = await pipe.execute()
        if int(count) <= per_minute:
            return 0
        return max(1, 60 - int(now % 60))

    async def resolve(self, token: str) -> PortalSession | None:
        """The session a token names (live, expired or revoked), or None when unknown."""
        if len(token) > MAX_TOKEN_CHARS:
            return None
        raw = await self.redis.hgetall(session_key(self.prefix, token_hash(token)))  # type: ignore[misc]
        return self._decode(raw)

    async def revoke(self, session_id: str, owner: str | None) -> bool:
        """Revoke a session of `owner` (None: of anyone); False when it is unknown or another
        owner's."""
        digest = await self.redis.get(session_id_key(self.prefix, session_id))
        if digest is None:
            return False
        key = session_key(self.prefix, digest.decode())
        stored = await self.redis.hget(key, "owner")  # type: ignore[misc]
        if stored is None or (owner is not None and stored.decode() != owner):
            return False
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, "state", "revoked")
            pipe.zrem(owner_sessions_key(self.prefix, stored.decode()), session_id)
            await pipe.execute()
        return True

    @staticmethod
    def _decode(raw: dict[bytes, bytes]) -> PortalSession | None:
        if not raw:
            return None
        f = {k.decode(): v.decode() for k, v in raw.items()}
        try:
            return PortalSession(
                id=f["id"],
                owner=f["owner"],
                read_only=f.get("read_only") == "1",
                created_at=float(f.get("created_at") or 0),
                expires_at=float(f["expires_at"]),
                state=f.get("state", "live"),
            )
        except (KeyError, ValueError):
            return None
