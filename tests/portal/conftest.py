"""Fixtures of the portal tests: a real sidecar (with a fake async API and a webhook receiver)
served from a background event loop, and headless Chromium driven by Playwright.

The browser tests are synchronous (Playwright's sync API), so the servers they talk to run on an
event loop of their own in a thread (`ServerLoop`); each test gets its own sidecar with its own
Redis key prefix, stopped and cleaned up after it, and talks to its admin API through the shared
admin client (tests/admin_support.py) run on that loop. One browser serves the whole package;
each test gets a fresh context, and fails if the page raised a JavaScript error or requested
anything from another origin.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar.app import create_app
from sidecar.keys import call_key
from sidecar.state import ADMIN_URL

from ..admin_support import OPERATOR_TOKEN, Admin
from ..conftest import make_settings
from ..helpers import until_true
from ..streams import OK, users_route

T = TypeVar("T")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class ServerLoop:
    """An event loop in a thread, for servers that synchronous tests talk to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 20.0) -> T:
        """Run `coro` on the loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="package")
def server_loop() -> Iterator[ServerLoop]:
    loop = ServerLoop()
    yield loop
    loop.close()


@dataclass
class Receiver:
    """A webhook receiver: what it got, and the status it answers."""

    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    status: int = 200
    url: str = ""
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def record(self, headers: dict[str, str], body: bytes) -> None:
        with self.arrived:
            self.got.append((headers, body))
            self.arrived.notify_all()

    def wait_for(self, count: int, timeout_s: float = 5.0) -> None:
        """Block until the receiver has had `count` deliveries (it runs in the server thread)."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.got) >= count, timeout_s), self.got


@dataclass
class Portal:
    """One running sidecar (proxy, admin and portal), its fake API and a receiver; `admin` is a
    client of its admin API on the server loop, which the synchronous calls here run."""

    loop: ServerLoop
    admin: Admin
    proxy_url: str
    prefix: str
    stream: str
    receiver: Receiver
    redis_url: str
    runners: list[web.AppRunner] = field(default_factory=list)

    @property
    def admin_url(self) -> str:
        return self.admin.url

    @property
    def page_url(self) -> str:
        return self.admin_url + "/admin/"

    def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, json: Any = None
    ) -> tuple[int, Any]:
        """A call of the admin API (`/admin/api{path}`) from the test: (status, JSON body)."""
        answer = self.loop.run(self.admin.call(method, path, headers, json))
        return answer.status, answer.body

    def through_proxy(
        self, method: str, path: str, headers: dict[str, str], json: Any
    ) -> tuple[int, Any]:
        """A client's call of the proxy listener (in front of the fake API): (status, JSON)."""

        async def go() -> tuple[int, Any]:
            async with self.admin.http.request(
                method, self.proxy_url + path, headers=headers, data=orjson.dumps(json)
            ) as response:
                raw = await response.read()
                return response.status, orjson.loads(raw) if raw else None

        return self.loop.run(go())

    def subscribe(self, credential: str, url: str | None = None, **fields: Any) -> dict[str, Any]:
        """A subscription of the client `credential` (its receiver by default)."""
        headers = {"Authorization": credential}
        return self.loop.run(self.admin.create(headers, url or self.receiver.url, **fields))

    def link(self, *, tenant_credential: str, read_only: bool = False, ttl: Any = "1h") -> str:
        """A portal link minted by the operator for the client `tenant_credential`."""
        made = self.admin.link(credential=tenant_credential, read_only=read_only, ttl=ttl)
        return str(self.loop.run(made)["url"])


WEBHOOK_EVENTS = {
    "success": {
        "type": "user.created",
        "description": "A user account was created.",
        "example": {"id": "u-123", "username": "ada"},
    },
    "failure": "user.creation_failed",
}


def upstream_app(redis_url: str, prefix: str, stream: str) -> web.Application:
    """A small async API: POST /api/users answers 202 and publishes the completion once the
    sidecar has had the 202 (as a backend does that answers first, then works)."""
    app = web.Application()
    tasks: set[asyncio.Task[None]] = set()

    async def publish(correlation_id: str, user: dict[str, Any]) -> None:
        client = aioredis.Redis.from_url(redis_url)

        async def tracked() -> bool:  # the sidecar records the call when the 202 reaches it
            return bool(await client.exists(call_key(prefix, correlation_id)))

        try:
            await until_true(tracked, timeout_s=5, every_s=0.005, what="the call tracked")
            await client.xadd(
                stream,
                {
                    "correlation_id": correlation_id,
                    "type": OK,
                    "payload": orjson.dumps(user).decode(),
                },
            )
        finally:
            await client.aclose()

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        user = {"id": "u-" + uuid.uuid4().hex[:8], "username": body.get("username", "")}
        task = asyncio.create_task(publish(request.headers["X-Correlation-ID"], user))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return web.json_response(
            {"status": "accepted"}, status=202, headers={"Location": f"/users/{user['id']}"}
        )

    app.router.add_post("/api/users", create)
    return app


def receiver_app(receiver: Receiver) -> web.Application:
    app = web.Application()

    async def hook(request: web.Request) -> web.Response:
        receiver.record(dict(request.headers), await request.read())
        return web.Response(
            status=receiver.status, text="thanks" if receiver.status < 300 else "no"
        )

    app.router.add_post("/hook", hook)
    return app


async def serve(app: web.Application, runners: list[web.AppRunner]) -> str:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    runners.append(runner)
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}"


StartPortal = Callable[..., Portal]


@pytest.fixture
def start_portal(redis_url: str, server_loop: ServerLoop) -> Iterator[StartPortal]:
    """Start a sidecar (and its API and receiver) with a fresh key prefix; stop and clean up."""
    started: list[Portal] = []

    def start(**overrides: Any) -> Portal:
        prefix = f"test-{uuid.uuid4().hex[:12]}"
        stream = f"{prefix}.users.events"
        receiver = Receiver()
        runners: list[web.AppRunner] = []

        async def up() -> tuple[Admin, str]:
            upstream = await serve(upstream_app(redis_url, prefix, stream), runners)
            receiver.url = await serve(receiver_app(receiver), runners) + "/hook"
            raw: dict[str, Any] = {
                "redis_url": redis_url,
                "key_prefix": prefix,
                "admin_token": OPERATOR_TOKEN,
                "routes": [users_route(stream, webhook_events=WEBHOOK_EVENTS)],
                "stream_reader": {"block": "50ms"},
                "webhooks": {
                    "allow_private_targets": True,
                    "schedule": ["50ms", "100ms"],
                    "timeout": "2s",
                },
            }
            raw.update(overrides)
            app = create_app(make_settings(upstream, **raw), CollectorRegistry())
            proxy = await serve(app, runners)
            return Admin(app[ADMIN_URL], aiohttp.ClientSession(), app), proxy

        admin, proxy_url = server_loop.run(up())
        portal = Portal(server_loop, admin, proxy_url, prefix, stream, receiver, redis_url, runners)
        started.append(portal)
        return portal

    yield start

    async def down(portal: Portal) -> None:
        await portal.admin.http.close()
        for runner in reversed(portal.runners):
            await runner.cleanup()
        client = aioredis.Redis.from_url(portal.redis_url)
        keys = [k async for k in client.scan_iter(match=f"{portal.prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    for portal in started:
        server_loop.run(down(portal))


# --------------------------------------------------------------------------------------------
# The browser
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Watch:
    """What a page did that a test must not allow: JS errors, requests to other origins."""

    origin: str = ""
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    api_calls: list[tuple[str, str]] = field(default_factory=list)


OpenPage = Callable[..., Any]


@pytest.fixture
def open_page(browser: Any) -> Iterator[OpenPage]:
    """A fresh browser context and page on a portal; checks it raised no JavaScript error and
    requested nothing from another origin."""
    contexts: list[tuple[Any, Watch]] = []

    def open_(
        portal: Portal, url: str | None = None, *, width: int = 1280, height: int = 900
    ) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height})
        watch = Watch(origin=portal.admin_url)
        page = context.new_page()
        page.set_default_timeout(5000)
        page.on("pageerror", lambda error: watch.errors.append(str(error)))

        def on_request(request: Any) -> None:
            parts = urlsplit(request.url)
            origin = f"{parts.scheme}://{parts.netloc}"
            if parts.scheme in ("http", "https") and origin != watch.origin:
                watch.foreign.append(request.url)
            if parts.path.startswith("/admin/api/"):
                watch.api_calls.append((request.method, parts.path))

        page.on("request", on_request)
        page.watch = watch  # type: ignore[attr-defined]
        contexts.append((context, watch))
        page.goto(url or portal.page_url)
        return page

    yield open_
    for context, watch in contexts:
        context.close()
        assert not watch.errors, f"JavaScript errors: {watch.errors}"
        assert not watch.foreign, f"requests to other origins: {watch.foreign}"
