"""The fake upstream of the suite: an asynchronous REST API as a real aiohttp server, configured
per test (`fake_api` in tests/conftest.py starts one).

    accept    one route ("POST /jobs") answers 202 Accepted with a Location (`location`,
              formatted with `cid`: the request's X-Correlation-ID, else a new uuid; `n`: how
              many it accepted; and the route's placeholders), `accepted` as its JSON body
              ({"id": cid, "status": "pending"} unless set) and `headers`
    status    the Location's path template ("/jobs/{cid}/status"): a GET of it is a poll,
              answered `replies` in turn (the last one repeats), or `replies(cid)`
    routes    more handlers, "METHOD /path" → handler
    else      any other request is answered synchronously: 200 {"ok": true}

What the accepting route does can change mid-test: `before_accept(cid, request)` runs before
the 202 (a backend faster than its own API publishes there), `refuse` answers that status
instead, and `respond(request)` answers instead altogether. Every request is recorded in `seen`
(method, path and query, headers, body), every poll in `polls` too (`polled` is set on each).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

Reply = tuple[int, dict[str, str], bytes]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reply(status: int, body: Any = b"", **headers: str) -> Reply:
    """An answer of the status route: bytes as they are, anything else as JSON."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    if not isinstance(body, bytes):
        headers.setdefault("Content-Type", "application/json")
    return status, headers, raw


@dataclass
class Seen:
    """One request the fake API received."""

    method: str
    path: str  # path and query, as sent
    headers: CIMultiDict[str]
    body: bytes
    match: dict[str, str] = field(default_factory=dict)  # the route's placeholders


@dataclass
class FakeApi:
    """An asynchronous API (see the module's docstring); `server` once started."""

    accept: str | None = "POST /jobs"
    location: str = "/jobs/{cid}"
    accepted: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    status: str | None = None
    replies: list[Reply] | Callable[[str], Reply] = field(
        default_factory=lambda: [reply(200, {"done": True})]
    )
    routes: dict[str, Handler] = field(default_factory=dict)
    before_accept: Callable[[str, web.Request], Awaitable[None]] | None = None
    refuse: int | None = None
    respond: Handler | None = None
    seen: list[Seen] = field(default_factory=list)
    polls: list[Seen] = field(default_factory=list)
    polled: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0  # requests the accepting route answered 202
    server: TestServer | None = None

    @property
    def url(self) -> str:
        """The origin the sidecar forwards to (no trailing slash)."""
        return str(self.make_url("")).rstrip("/")

    def make_url(self, path: str) -> URL:
        assert self.server is not None, "not started"
        return self.server.make_url(path)

    def app(self) -> web.Application:
        app = web.Application()
        if self.accept is not None:
            method, _, path = self.accept.partition(" ")
            app.router.add_route(method, path, self._accept)
        if self.status is not None:
            app.router.add_get(self.status, self._status)
        for key, handler in self.routes.items():
            method, _, path = key.partition(" ")
            app.router.add_route(method, path, self._recorded(handler))
        app.router.add_route("*", "/{tail:.*}", self._recorded(self._ok))
        return app

    async def _record(self, request: web.Request) -> Seen:
        seen = Seen(
            request.method,
            request.path_qs,
            request.headers.copy(),
            await request.read(),
            dict(request.match_info),
        )
        self.seen.append(seen)
        return seen

    def _recorded(self, handler: Handler) -> Handler:
        async def recorded(request: web.Request) -> web.StreamResponse:
            await self._record(request)
            return await handler(request)

        return recorded

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if self.respond is not None:
            return await self.respond(request)
        cid = request.headers.get("X-Correlation-ID") or str(uuid.uuid4())
        if self.before_accept is not None:
            await self.before_accept(cid, request)
        if self.refuse is not None:
            return web.Response(status=self.refuse, text="upstream says no")
        self.count += 1
        location = self.location.format(cid=cid, n=self.count, **request.match_info)
        body = {"id": cid, "status": "pending"} if self.accepted is None else self.accepted
        return web.json_response(body, status=202, headers={"Location": location, **self.headers})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        self.polls.append(await self._record(request))
        self.polled.set()
        if callable(self.replies):
            status, headers, body = self.replies(request.match_info.get("cid", ""))
        else:
            status, headers, body = self.replies[min(len(self.polls), len(self.replies)) - 1]
        return web.Response(status=status, headers=headers, body=body)

    @staticmethod
    async def _ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})
