"""Who calls the admin API, and what it may reach.

    Authorization: Bearer <admin_token>      the operator: everything
    Authorization: Bearer psess_...          a portal session: its owner (a tenant, or the
                                             operator); read-only sessions change nothing
    <credential header>: <value>             a client: its own data only (the value hashed as
                                             the proxy hashes it); with a credential a browser
                                             sends by itself (a Cookie, Basic), writes only
                                             from the listener's own origin (`csrf`)

`caller_of` resolves a request to `OPERATOR` or a tenant (401 without a credential; a session
that expired, was revoked or is unknown answers 401 with its `reason`; a read-only session's
write 403). Another's subscription, message or session answers 404, like a missing one.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from ..config import Settings
from ..errors import Forbidden, NotFound, Unauthorized, Unavailable
from ..tenancy import OPERATOR
from ..timestamps import iso
from ..webhooks.runtime import WebhookRuntime
from ..webhooks.store import Subscription
from .csrf import refuse_cross_site
from .endpoints import ID_RE
from .services import services
from .sessions import PortalSession, PortalSessions, bearer_session_token

REALM = 'Bearer realm="sidecar-admin"'
SESSION_REALM = 'Bearer realm="sidecar-portal"'
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION = web.RequestKey("portal_session", PortalSession)

_WHY = {
    "expired": "the portal session expired",
    "revoked": "the portal session was revoked",
    "unknown": "the portal session is not valid (unknown token)",
}


def is_operator(authorization: str | None, settings: Settings) -> bool:
    """True when `Authorization` is `Bearer <admin_token>` (compared in constant time)."""
    if settings.admin_token is None or not authorization:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    expected = settings.admin_token.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)


def sessions_of(request: web.Request) -> PortalSessions:
    """The session store; 503 when webhooks (and so Redis) do not run."""
    runtime = services(request).webhooks
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


async def caller_of(request: web.Request) -> str:
    """`OPERATOR`, or the caller's tenant; 401 without a credential."""
    found = services(request)
    settings = found.settings
    if is_operator(request.headers.get("Authorization"), settings):
        return OPERATOR
    session_owner = await session_caller(request)
    if session_owner is not None:
        return session_owner
    header = settings.tenancy.credential_header
    credential = request.headers.get(header) or None
    tenant = await found.hasher.tenant(credential)
    if tenant is None or credential is None:
        raise Unauthorized(
            f"send your client credential in the {header} header",
            headers={"WWW-Authenticate": REALM},
        )
    refuse_cross_site(request, settings, header, credential)
    await found.verifier.check(credential)  # with tenancy.verify: only what the API accepts
    return tenant


def owner_scope(caller: str) -> str | None:
    """The owner whose data a caller reads: None (everyone's) for the operator."""
    return None if caller == OPERATOR else caller


async def subscription_of(
    request: web.Request, runtime: WebhookRuntime, caller: str
) -> Subscription:
    """The `{id}` subscription if the caller may see it; 404 (missing or another's) otherwise."""
    sub_id = request.match_info["id"]
    sub = await runtime.store.get_for(sub_id, caller) if ID_RE.match(sub_id) else None
    if sub is None:
        raise NotFound(f"no subscription {sub_id!r}")
    return sub


def client_address(request: web.Request) -> str:
    """The caller's address, for limits per address: the peer's; when forwarded headers are
    trusted (`proxy.trust_forwarded_headers`: one proxy of the operator's in front), the
    right-most `X-Forwarded-For` entry, the one that proxy added: the address it saw. Entries
    to its left are whatever the client sent, so a limit keyed on them is no limit."""
    settings = services(request).settings
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
    if settings.proxy.trust_forwarded_headers and forwarded.strip():
        return forwarded.rsplit(",", 1)[-1].strip()[:64] or "unknown"
    return request.remote or "unknown"
