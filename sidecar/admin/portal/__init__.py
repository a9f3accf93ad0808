"""The client portal: the static page served by the admin listener at `/admin/`.

The files under `static/` are the files the browser runs (plain HTML, CSS and JavaScript
modules; no build step, nothing from another origin). They are read once when the admin app is
built and served from memory with an ETag. Every admin answer carries `nosniff` and
`Referrer-Policy: no-referrer`; the page's carry a strict Content-Security-Policy (no inline
script or style, no eval, requests only to this origin) whose `frame-ancestors` comes from
`portal.frame_ancestors`; the API's are never cached.
"""

from __future__ import annotations

import hashlib
import html
import mimetypes
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from ...config import Settings
from ...errors import NotFound
from ..services import SERVICES

STATIC_PACKAGE = "sidecar.admin.portal"
MAX_FILES = 200
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One file of the page, in memory."""

    body: bytes
    content_type: str
    etag: str


def load_static() -> dict[str, StaticFile]:
    """Every file under `static/`, by its path relative to it (`index.html`, `js/api.js`)."""
    root = resources.files(STATIC_PACKAGE).joinpath("static")
    files: dict[str, StaticFile] = {}
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                pending.append((entry, name + "/"))
                continue
            suffix = "." + entry.name.rpartition(".")[2]
            content_type = TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0]
            if content_type is None or len(files) >= MAX_FILES:
                continue
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            files[name] = StaticFile(body, content_type, etag)
    return files


CREDENTIAL_META = b'<meta name="sidecar-credential-header" content="Authorization">'


def configured(files: dict[str, StaticFile], settings: Settings) -> dict[str, StaticFile]:
    """The files as this sidecar serves them: the page names the configured credential header
    (`tenancy.credential_header`), so sign-in says which header's value to paste."""
    page = files.get("index.html")
    if page is None or CREDENTIAL_META not in page.body:
        return files
    header = html.escape(settings.tenancy.credential_header, quote=True).encode()
    body = page.body.replace(CREDENTIAL_META, CREDENTIAL_META.replace(b"Authorization", header))
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return {**files, "index.html": StaticFile(body, page.content_type, etag)}


def content_security_policy(settings: Settings) -> str:
    """The page's CSP: only this origin's scripts, styles, images and API; framing as configured."""
    ancestors = " ".join(settings.portal.frame_ancestors) or "'none'"
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            f"frame-ancestors {ancestors}",
        ]
    )


PORTAL_FILES = web.AppKey("portal_files", dict[str, StaticFile])


def _serve(request: web.Request, name: str) -> web.Response:
    found = request.app[PORTAL_FILES].get(name)
    if found is None:
        raise NotFound(f"no file {request.path}")
    headers = {"ETag": found.etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == found.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, headers={**headers, "Content-Type": found.content_type})


async def index(request: web.Request) -> web.Response:
    """The page."""
    return _serve(request, "index.html")


async def static_file(request: web.Request) -> web.Response:
    """One file of the page (only files that exist under `static/`; no path is resolved)."""
    return _serve(request, request.match_info["path"])


async def to_index(request: web.Request) -> web.Response:
    """`/admin` → `/admin/`."""
    raise web.HTTPFound("/admin/")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every admin answer carries; the page's CSP; no caching of API answers."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    path = request.path
    if path.startswith("/admin/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    elif path == "/admin" or path.startswith("/admin/"):
        settings = request.config_dict[SERVICES].settings
        response.headers["Content-Security-Policy"] = content_security_policy(settings)
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
        response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if not settings.portal.frame_ancestors:
            response.headers["X-Frame-Options"] = "DENY"


def setup_portal(admin: web.Application) -> None:
    """Serve the page at `/admin/` and its files at `/admin/static/`."""
    admin[PORTAL_FILES] = configured(load_static(), admin[SERVICES].settings)
    admin.router.add_get("/admin", to_index)
    admin.router.add_get("/admin/", index)
    admin.router.add_get("/admin/static/{path:.+}", static_file)
    admin.on_response_prepare.append(security_headers)
