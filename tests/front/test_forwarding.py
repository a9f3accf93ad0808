"""What the API is sent, and what clients get back, on the front's own pass-through: the
sidecar's forwarding rules (docs/operating.md#forwarding-rules), by real nginx. As the edge the
front replaces clients' X-Forwarded-* (and drops Forwarded); told to trust them (behind a load
balancer) it keeps them and names their origin in rewritten Locations, as the sidecar does with
`proxy.trust_forwarded_headers`."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from ..conftest import Upstream, make_settings
from .support import StartFront

SENT = {
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "api.example.com",
    "Forwarded": "for=203.0.113.9",
    "My_Header": "kept",  # an underscore: nginx drops such headers unless told otherwise
}


def api() -> web.Application:
    """An API that says what it was sent and answers with a Location of its own."""

    async def handle(request: web.Request) -> web.Response:
        own = f"http://{request.host}/jobs/1"
        return web.json_response(
            {"headers": dict(request.headers), "body": (await request.read()).decode()},
            status=202,
            headers={"Location": own, "X-Upstream": "1"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def through(front: str) -> tuple[dict[str, Any], aiohttp.ClientResponse]:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{front}/jobs", data=b"chunk" * 20_000, headers=SENT)
        seen: dict[str, Any] = await resp.json()
    return seen, resp


async def test_as_the_edge_the_front_replaces_forwarded_headers(
    start_front: StartFront, start_upstream: Upstream
) -> None:
    server: TestServer = await start_upstream(api())
    upstream = str(server.make_url("")).rstrip("/")
    front = await start_front(make_settings(upstream), sidecar="127.0.0.1:9")
    seen, resp = await through(front)
    headers = seen["headers"]
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == front.removeprefix("http://")
    assert "Forwarded" not in headers
    assert headers["Host"] == upstream.removeprefix("http://")
    assert headers["My_Header"] == "kept"
    assert seen["body"] == "chunk" * 20_000
    assert resp.status == 202
    assert resp.headers["Location"] == f"{front}/jobs/1"
    assert resp.headers["X-Upstream"] == "1"


async def test_behind_a_trusted_balancer_the_front_keeps_them(
    start_front: StartFront, start_upstream: Upstream
) -> None:
    server: TestServer = await start_upstream(api())
    upstream = str(server.make_url("")).rstrip("/")
    front = await start_front(make_settings(upstream), sidecar="127.0.0.1:9", trust_forwarded=True)
    seen, resp = await through(front)
    headers = seen["headers"]
    assert headers["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-Host"] == "api.example.com"
    assert headers["Forwarded"] == "for=203.0.113.9"
    assert resp.headers["Location"] == "https://api.example.com/jobs/1"


async def test_a_public_url_names_the_origin_of_rewritten_locations(
    start_front: StartFront, start_upstream: Upstream
) -> None:
    server: TestServer = await start_upstream(api())
    upstream = str(server.make_url("")).rstrip("/")
    settings = make_settings(upstream, proxy={"public_url": "https://edge.example.com/v2/"})
    front = await start_front(settings, sidecar="127.0.0.1:9")
    _, resp = await through(front)
    assert resp.headers["Location"] == "https://edge.example.com/v2/jobs/1"
