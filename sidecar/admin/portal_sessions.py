"""Portal sessions: signing in, portal links the operator mints, and who the caller is.

POST   /sign-in                a credential (or the admin token) → a session
POST   /portal-sessions        operator: a portal link for a client
DELETE /portal-sessions/{id}   revoke (a session may revoke itself)
GET    /me                     who the caller is, and its session
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..errors import Forbidden, NotFound, TooManyRequests
from ..tenancy import OPERATOR
from ..timestamps import iso
from .bodies import PortalSessionCreate, SignIn, invalid, read_body
from .callers import (
    caller_of,
    client_address,
    current_session,
    is_operator,
    owner_scope,
    sessions_of,
)
from .endpoints import ID_RE, answer, endpoint
from .services import services
from .sessions import TOKEN_PREFIX, PortalSession
from .views import Me, SessionCreated, SessionInfo

logger = logging.getLogger(__name__)


def portal_url(request: web.Request, token: str) -> str:
    """The portal with the session token in its fragment (never sent to a server)."""
    configured = services(request).settings.portal.public_url
    base = configured or f"{request.scheme}://{request.host}"
    return f"{base}/admin/#session={token}"


def created(request: web.Request, session: PortalSession, token: str) -> web.Response:
    """201 with a new session."""
    return answer(
        SessionCreated(
            id=session.id,
            token=token,
            url=portal_url(request, token),
            expires_at=iso(session.expires_at),
            read_only=session.read_only,
        ),
        status=201,
    )


@endpoint(
    "post",
    "/sign-in",
    "signIn",
    "Exchange a credential for a portal session",
    "sessions",
    access="public",
    body=SignIn,
    status=201,
    answer=SessionCreated,
    errors=frozenset({429}),
)
async def sign_in(request: web.Request) -> web.Response:
    """Exchange a credential for a session of its owner: the admin token (bare or as `Bearer`)
    is the operator; any other value a client, hashed as the proxy hashes it."""
    sessions = sessions_of(request)
    found = services(request)
    settings = found.settings
    wait_s = await sessions.sign_in_wait(
        client_address(request), settings.portal.sign_ins_per_minute
    )
    if wait_s:
        raise TooManyRequests(
            f"at most {settings.portal.sign_ins_per_minute} sign-ins a minute from one address; "
            f"try again in {wait_s} s",
            headers={"Retry-After": str(wait_s)},
        )
    body = await read_body(request, SignIn)
    credential = body.credential
    if credential.strip().removeprefix("Bearer ").strip().startswith(TOKEN_PREFIX):
        raise invalid(["credential: this is a portal session token; open the portal link instead"])
    if is_operator(credential, settings) or is_operator(f"Bearer {credential}", settings):
        owner = OPERATOR
    else:
        await found.verifier.check(credential)  # with tenancy.verify: only what the API accepts
        tenant = await found.hasher.tenant(credential)
        assert tenant is not None  # a non-empty credential always has one
        owner = tenant
    session, token = await sessions.mint(owner, body.ttl, read_only=False)
    logger.info("portal sign-in", extra={"session": session.id, "owner": owner})
    return created(request, session, token)


@endpoint(
    "post",
    "/portal-sessions",
    "createPortalSession",
    "Mint a portal link for a client (operator only)",
    "sessions",
    access="operator",
    body=PortalSessionCreate,
    status=201,
    answer=SessionCreated,
)
async def create_portal_session(request: web.Request) -> web.Response:
    """Operator only (the admin token itself): a portal link for a client or the operator."""
    found = services(request)
    if not is_operator(request.headers.get("Authorization"), found.settings):
        await caller_of(request)  # 401 without a credential, or a session's own 401/403
        raise Forbidden(
            "only the operator (Authorization: Bearer <admin_token>) mints portal links"
        )
    body = await read_body(request, PortalSessionCreate)
    sessions = sessions_of(request)
    if body.credential is not None:
        tenant = await found.hasher.tenant(body.credential)
        assert tenant is not None
        owner = tenant
    else:
        assert body.tenant is not None
        owner = body.tenant
    session, token = await sessions.mint(owner, body.ttl, read_only=body.read_only)
    logger.info(
        "portal link minted",
        extra={"session": session.id, "owner": owner, "read_only": body.read_only},
    )
    return created(request, session, token)


@endpoint(
    "delete",
    "/portal-sessions/{id}",
    "revokePortalSession",
    "Revoke a portal session (a session may revoke itself)",
    "sessions",
    status=204,
)
async def delete_portal_session(request: web.Request) -> web.Response:
    """Revoke a session; 204. The operator revokes any; a session itself (signing out, even
    read-only); a client its own tenant's. Another's answers 404."""
    session_id = request.match_info["id"]
    sessions = sessions_of(request)
    owner: str | None
    if is_operator(request.headers.get("Authorization"), services(request).settings):
        owner = None
    else:
        current = await current_session(request)
        if current is not None and current.id == session_id:
            owner = current.owner
        else:
            owner = owner_scope(await caller_of(request))
    if not ID_RE.match(session_id) or not await sessions.revoke(session_id, owner):
        raise NotFound(f"no portal session {session_id!r}")
    logger.info("portal session revoked", extra={"session": session_id})
    return web.Response(status=204)


@endpoint("get", "/me", "getMe", "Who the caller is", "sessions", answer=Me)
async def me(request: web.Request) -> web.Response:
    """Who the caller is: operator or client, its tenant, and the session it uses."""
    caller = await caller_of(request)
    session = await current_session(request)
    info = None
    if session is not None:
        info = SessionInfo(
            id=session.id, expires_at=iso(session.expires_at), read_only=session.read_only
        )
    return answer(
        Me(
            kind="operator" if caller == OPERATOR else "client",
            tenant=caller,
            read_only=bool(session and session.read_only),
            session=info,
        )
    )
