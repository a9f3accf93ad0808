"""Who a portal session is: `Authorization: Bearer psess_...` resolved to its owner and scope.

`session_caller` is the one place the admin API consults for a session token: it answers the
owner (a tenant, or the operator), 401 for a token that expired, was revoked or is unknown, and
403 for a write made with a read-only session. Without a session token it answers None and the
caller is resolved as before (admin token, client credential).
"""

from __future__ import annotations

from aiohttp import web

from ..errors import Forbidden, Unauthorized, Unavailable
from ..state import PROXY_APP
from ..timestamps import iso
from .runtime import WEBHOOKS
from .sessions import PortalSession, PortalSessions, bearer_session_token

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION = web.RequestKey("portal_session", PortalSession)
SESSION_REALM = 'Bearer realm="sidecar-portal"'

_WHY = {
    "expired": "the portal session expired",
    "revoked": "the portal session was revoked",
    "unknown": "the portal session is not valid (unknown token)",
}


def sessions_of(request: web.Request) -> PortalSessions:
    """The session store; 503 when webhooks (and so Redis) do not run."""
    runtime = request.app[PROXY_APP].get(WEBHOOKS)
    if runtime is None:
        raise Unavailable("portal sessions need redis_url")
    return PortalSessions(runtime.redis, runtime.prefix)


async def current_session(request: web.Request) -> PortalSession | None:
    """The live session the request's bearer token names; None without a session token;
    401 (with `reason`: expired, revoked, unknown) when it cannot be used."""
    if SESSION in request:
        return request[SESSION]
    token = bearer_session_token(request.headers.get("Authorization"))
    if token is None:
        return None
    session = await sessions_of(request).resolve(token)
    why = "unknown" if session is None else session.invalid()
    if session is None or why is not None:
        detail = _WHY[why or "unknown"]
        if session is not None and why == "expired":
            detail += f" at {iso(session.expires_at)}"
        raise Unauthorized(
            detail + "; sign in again",
            headers={"WWW-Authenticate": SESSION_REALM + ', error="invalid_token"'},
            reason=why,
        )
    request[SESSION] = session
    return session


async def session_caller(request: web.Request) -> str | None:
    """The owner a session token stands for (None without one); 403 for a read-only session's
    write."""
    session = await current_session(request)
    if session is None:
        return None
    if session.read_only and request.method not in SAFE_METHODS:
        raise Forbidden("this portal session is read-only")
    return session.owner
