"""Cross-site writes with a credential the browser sends on its own.

With `tenancy.credential_header: Cookie` (or a `Basic` credential in `Authorization`, which a
browser caches and repeats), any site a client's browser visits can make that browser send a
`POST` to the admin API carrying the client's credential: a `text/plain` form needs no
permission (no CORS preflight). So a write authenticated that way must show it comes from the
admin listener's own pages:

    Origin           when present (every browser sends it on a cross-origin POST), its host
                     must be the admin listener's own (the request's Host, `portal.public_url`,
                     or a trusted `X-Forwarded-Host`)
    Sec-Fetch-Site   when present, `same-origin` or `none` (typed by the user)
    Content-Type     not one a page of another site may send without asking first
                     (`text/plain`, a form's), nor missing on a body: JSON needs a CORS preflight,
                     which the admin API never grants

Anything else is 403. Bearer tokens (the admin token, portal sessions, API keys in a header of
their own) are never sent by a browser on its own, so their writes are not checked.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from ..config import Settings
from ..errors import Forbidden

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_SITE_FETCH = frozenset({"same-origin", "none"})
# The types a page may send to another origin without a CORS preflight (the Fetch standard's
# CORS-safelisted request-header rule for Content-Type).
SIMPLE_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})


def ambient(header: str, value: str) -> bool:
    """Whether a browser would send this credential by itself: a cookie, or Basic auth."""
    return header.lower() == "cookie" or value.lstrip().lower().startswith("basic ")


def own_hosts(request: web.Request, settings: Settings) -> set[str]:
    """The hosts (host[:port], lower case) this admin listener is reached at."""
    hosts = {request.host.lower()}
    if settings.portal.public_url:
        hosts.add(urlsplit(str(settings.portal.public_url)).netloc.lower())
    forwarded = request.headers.get("X-Forwarded-Host")
    if forwarded and settings.proxy.trust_forwarded_headers:
        hosts.add(forwarded.split(",")[0].strip().lower())
    return hosts


def refuse_cross_site(request: web.Request, settings: Settings, header: str, value: str) -> None:
    """403 for a write authenticated by an ambient credential that may come from another site."""
    if request.method in SAFE_METHODS or not ambient(header, value):
        return
    why = ""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() not in own_hosts(request, settings):
        why = f"it comes from another origin ({origin[:100]})"
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if not why and fetch_site is not None and fetch_site.lower() not in SAME_SITE_FETCH:
        why = f"the browser says it is {fetch_site[:20]}"
    content_type = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    if not why and (content_type in SIMPLE_TYPES or (not content_type and request.body_exists)):
        why = "its body is not JSON (send Content-Type: application/json)"
    if why:
        raise Forbidden(
            f"a write authenticated by the {header} header, which a browser sends by itself, "
            f"is refused: {why}"
        )
