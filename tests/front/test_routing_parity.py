"""The exported front decides as the sidecar does: for each request of a table of awkward ones
(encoded and unicode paths, templates full of regex characters, first match across methods,
`Prefer` spelt every way, the status monitor), real nginx running the front sends it to the
sidecar exactly when the sidecar itself would synchronise it, hold it or answer it (its own
`RouteTable`, `parse_prefer` and monitor rule are the oracle), and otherwise to the upstream the
route table names. Dot segments are the one allowed difference: nginx resolves them, the
sidecar matches the path as sent, so the front hands those to the sidecar, which decides."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.config import Settings
from sidecar.http.prefer import parse_prefer
from sidecar.routing import RouteTable

from ..conftest import Upstream, make_settings
from ..http.nginx_diff import parse
from .support import StartFront

POLL: dict[str, Any] = {"poll": {}}
ROUTES: list[dict[str, Any]] = [
    {"name": "dots", "method": "POST", "path": "/v1.0/(x)/{id}", "wait": POLL},
    {"name": "special", "method": "GET", "path": "/items/special"},  # before the one below
    {"name": "items", "method": "*", "path": "/items/{id}", "wait": POLL},
    {"name": "cafe", "method": "PUT", "path": "/café/{id}/a b+c$", "wait": POLL},
    {"name": "other", "method": "GET", "path": "/other/{x}", "upstream": "OTHER"},
    {"name": "last", "method": "GET", "path": "/last/{x}"},  # the default takes it anyway
]

# (method, request target as sent, Prefer or None)
REQUESTS: list[tuple[str, str, str | None]] = [
    ("POST", "/v1.0/(x)/1", None),
    ("POST", "/v1x0/(x)/1", None),
    ("POST", "/v1.0/%28x%29/1", None),
    ("POST", "/v1.0/(x)/1/", None),
    ("GET", "/v1.0/(x)/1", None),
    ("GET", "/items/special", None),
    ("POST", "/items/special", None),
    ("DELETE", "/items/9?q=/items/special", None),
    ("PATCH", "/items/a%2Fb", None),
    ("GET", "/items//9", None),
    ("GET", "/items/9/", None),
    ("PUT", "/caf%C3%A9/1/a%20b+c$", None),
    ("PUT", "/caf%c3%a9/1/a%20b%2Bc%24", None),
    ("PUT", "/cafe/1/a%20b+c$", None),
    ("GET", "/other/1", None),
    ("GET", "/last/1", None),
    ("GET", "/anything", "wait=5"),
    ("GET", "/anything", "respond-async, WAIT = 2"),
    ("GET", "/anything", "respond-async"),
    ("GET", "/anything", "handling=lenient; wait=3"),
    ("HEAD", "/anything", "wait=5"),
    ("GET", "/other/1", "wait=1"),
    ("GET", "/.sidecar/operations/abc", None),
    ("POST", "/.sidecar/operations/abc?x=1", None),
    ("GET", "/.sidecar/operationsX", None),
    ("GET", "/items/..", None),
    ("GET", "/items/%2e%2e", None),
    ("GET", "/items/x/../9", None),
    ("GET", "/items/./9", None),
]
DOT_SEGMENT = re.compile(r"^[^?]*/(?:\.|%2[eE]){1,2}(?:[/?]|$)")


def echo(name: str) -> web.Application:
    """A server that says who it is and what it was asked."""

    async def handle(request: web.Request) -> web.Response:
        said = {"who": name, "raw": request.raw_path, "path": request.path}
        return web.json_response(said, headers={"X-Said": json.dumps(said)})  # ASCII

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def sidecar_decides(
    settings: Settings, method: str, raw: str, path: str, prefer: str | None
) -> str:
    """Where the sidecar itself takes a request: "sidecar" when it answers, holds or
    synchronises it (`proxy.proxy_handler`'s order), else the upstream it passes it to."""
    if settings.redis_url and raw.startswith(settings.operations.path + "/"):
        return "sidecar"
    table = RouteTable(settings)
    compiled = table.match(method, path)
    if compiled is not None and compiled.route.is_sync:
        return "sidecar"
    if method == "GET" and prefer is not None and parse_prefer([prefer]).wait_s is not None:
        return "sidecar"
    upstream = compiled.upstream if compiled else table.default_upstream
    return "other" if str(upstream) != settings.upstream else "api"


async def ask(front: str, method: str, target: str, prefer: str | None) -> dict[str, Any]:
    """One request as written, on a connection of its own; the echo's answer."""
    host, _, port = front.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    extra = f"Prefer: {prefer}\r\n" if prefer else ""
    writer.write(
        f"{method} {target} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n".encode()
    )
    try:
        async with asyncio.timeout(10):
            raw = await reader.read(-1)
    finally:
        writer.close()
    answer = parse(raw)
    assert answer.status == 200, raw[:300]
    said: dict[str, Any] = json.loads(answer.headers["x-said"])  # HEAD answers have no body
    return said


@pytest.fixture
async def servers(start_upstream: Upstream) -> dict[str, TestServer]:
    return {name: await start_upstream(echo(name)) for name in ("sidecar", "api", "other")}


async def test_the_front_sends_the_sidecar_what_it_would_take_itself(
    start_front: StartFront, servers: dict[str, TestServer]
) -> None:
    def base(name: str) -> str:
        return str(servers[name].make_url("")).rstrip("/")

    routes = [{**r, "upstream": base("other")} if "upstream" in r else r for r in ROUTES]
    settings = make_settings(base("api"), routes=routes, redis_url="redis://127.0.0.1:9/0")
    front = await start_front(settings, sidecar=base("sidecar").removeprefix("http://"))
    wrong, told = [], set()
    for method, target, prefer in REQUESTS:
        seen = await ask(front, method, target, prefer)
        assert seen["raw"] == target, "the request target is passed on byte for byte"
        decides = sidecar_decides(settings, method, seen["raw"], seen["path"], prefer)
        dotted = DOT_SEGMENT.match(target) is not None
        expected = "sidecar" if dotted else decides
        told.add(seen["who"])
        if seen["who"] != expected:
            wrong.append((method, target, prefer, seen["who"], expected))
    assert wrong == []
    assert told == {"sidecar", "api", "other"}
