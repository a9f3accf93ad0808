"""Shared fixtures: a real Redis (the one at $REDIS_URL, else a throwaway server), per-test key
isolation, fake upstreams as real aiohttp servers (`fake_api`), the sidecar under test with its
cleanup contexts running (`start_sidecar`), a client of its admin API (`start_admin`), and the
sidecar as a real process (`run_sidecar`)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from devtools.redis_server import RedisServer, RedisUnavailable, answers
from sidecar.app import client_guard, create_app
from sidecar.config import Settings, parse_settings
from sidecar.http.listener import GuardedAppRunner
from sidecar.state import ADMIN_URL

from .admin_support import OPERATOR_TOKEN, Admin, StartAdmin
from .fakes import FakeApi
from .processes import StartProcess, sidecar_processes
from .raw_http import Proxy
from .streams import StreamEnv, StreamEnvFactory, users_route

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """$REDIS_URL (default 127.0.0.1:6379) if it answers, else a throwaway redis-server."""
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    if answers(url):
        yield url
        return
    try:
        server = RedisServer().start()
    except RedisUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def key_prefix() -> str:
    """A unique prefix for every Redis key this test creates."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sidecars() -> list[TestClient]:
    """The sidecars this test started (`start_sidecar` adds them)."""
    return []


@pytest.fixture
async def redis(
    redis_url: str, key_prefix: str, sidecars: list[TestClient]
) -> AsyncIterator[aioredis.Redis]:
    """A client on the shared Redis; deletes every key under this test's prefix afterwards,
    once this test's sidecars have stopped (their loops would create streams again)."""
    client: aioredis.Redis = aioredis.Redis.from_url(redis_url)
    yield client
    for sidecar in sidecars:
        await sidecar.close()
    keys = [k async for k in client.scan_iter(match=f"{key_prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, for restarts and kills."""
    try:
        server = RedisServer().start()
    except RedisUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.close()


@pytest.fixture
def kept_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own that keeps its data across a restart (AOF)."""
    try:
        server = RedisServer(persist=True).start()
    except RedisUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.close()


Upstream = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
async def start_upstream(aiohttp_server: Any) -> Upstream:
    """Start an aiohttp app as a fake upstream; returns its TestServer."""

    async def start(app: web.Application) -> TestServer:
        server: TestServer = await aiohttp_server(app)
        return server

    return start


ProxyFactory = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy() -> AsyncIterator[ProxyFactory]:
    """Start the sidecar's proxy listener in front of `upstream` as `sidecar run` serves it
    (guarded: header timeouts, connection caps, bad requests answered by the listener), on an
    ephemeral port; returns a `Proxy` (tests/raw_http.py). Keyword arguments are settings."""
    runners: list[GuardedAppRunner] = []

    async def start(upstream: str | TestServer | FakeApi, **overrides: Any) -> Proxy:
        if isinstance(upstream, FakeApi):
            upstream = upstream.url
        elif isinstance(upstream, TestServer):
            upstream = str(upstream.make_url("")).rstrip("/")
        app = create_app(make_settings(upstream, **overrides), CollectorRegistry())
        runner = GuardedAppRunner(app, guard=client_guard(app, "proxy"), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return Proxy(app, host, port)

    yield start
    for runner in runners:
        await runner.cleanup()


FakeApiFactory = Callable[..., Awaitable[FakeApi]]


@pytest.fixture
def fake_api(start_upstream: Upstream) -> FakeApiFactory:
    """Start a fake asynchronous API (`tests.fakes.FakeApi`); keyword arguments set its fields,
    e.g. `await fake_api(accept="POST /api/users", location="/users/{cid}")`."""

    async def start(**fields: Any) -> FakeApi:
        api = FakeApi(**fields)
        api.server = await start_upstream(api.app())
        return api

    return start


def make_settings(upstream: str, **overrides: Any) -> Settings:
    """Settings for a test sidecar on ephemeral ports, validated like a real file."""
    raw: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "upstream": upstream,
        "log": {"level": "debug", "format": "text"},
    }
    raw.update(overrides)
    return parse_settings(raw, "<test>", env={})


SidecarFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def start_sidecar(aiohttp_client: Any, sidecars: list[TestClient]) -> SidecarFactory:
    """Start the real sidecar app (cleanup contexts and all) in front of `upstream`."""

    async def start(upstream: str | TestServer | FakeApi, **overrides: Any) -> TestClient:
        if isinstance(upstream, FakeApi):
            upstream = upstream.url
        elif isinstance(upstream, TestServer):
            upstream = str(upstream.make_url("")).rstrip("/")
        settings = make_settings(upstream, **overrides)
        client: TestClient = await aiohttp_client(create_app(settings, CollectorRegistry()))
        sidecars.append(client)
        return client

    return start


@pytest.fixture
async def stream_env(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> StreamEnvFactory:
    """Make a `StreamEnv` (tests/streams.py): the users API, the sidecar in front of it with the
    route `create-user` waiting on `{key_prefix}:users.events` (keyword arguments override the
    route's keys), its reader connected. `url` is another Redis (own_redis), `readiness` that
    block of the settings."""

    async def make(
        *,
        routes: list[dict[str, Any]] | None = None,
        url: str | None = None,
        readiness: dict[str, Any] | None = None,
        **route_overrides: Any,
    ) -> StreamEnv:
        stream = f"{key_prefix}:users.events"
        api = await fake_api(
            accept="POST /api/users", location="/users/{cid}", headers={"X-Upstream": "1"}
        )
        client = await start_sidecar(
            api,
            redis_url=url or redis_url,
            key_prefix=key_prefix,
            stream_reader={"block": "50ms"},
            routes=routes or [users_route(stream, **route_overrides)],
            **({"readiness": readiness} if readiness else {}),
        )
        env = StreamEnv(client, api, redis, stream)
        await asyncio.wait_for(env.hub.connected.wait(), 5)
        if url is not None:
            env.redis = aioredis.Redis.from_url(url)
        return env

    return make


@pytest.fixture
async def start_admin(
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    aiohttp_client: Any,
    sidecars: list[TestClient],
) -> AsyncIterator[StartAdmin]:
    """Start the real sidecar (cleanup contexts and all) on this test's Redis and key prefix,
    with `OPERATOR_TOKEN` as its admin token and an upstream nobody listens on; returns an
    `Admin` (tests/admin_support.py) of its admin listener. Keyword arguments are settings that
    override those (`routes=[...]`, `webhooks={...}`, `upstream=...`, `redis_url=None`)."""
    sessions: list[aiohttp.ClientSession] = []

    async def start(**overrides: Any) -> Admin:
        raw: dict[str, Any] = {
            "redis_url": redis_url,
            "key_prefix": key_prefix,
            "admin_token": OPERATOR_TOKEN,
            **overrides,
        }
        upstream = raw.pop("upstream", "http://127.0.0.1:9")
        client: TestClient = await aiohttp_client(
            create_app(make_settings(upstream, **raw), CollectorRegistry())
        )
        sidecars.append(client)
        sessions.append(aiohttp.ClientSession())
        return Admin(client.app[ADMIN_URL], sessions[-1], client.app)

    yield start
    for session in sessions:
        await session.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for talking to sidecar processes; short timeouts so a broken test
    fails rather than hangs."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
async def run_sidecar(tmp_path: Path, http: aiohttp.ClientSession) -> AsyncIterator[StartProcess]:
    """Start `sidecar run` processes (tests/processes.py), each with its config; any still
    running is killed at teardown."""
    async with sidecar_processes(tmp_path, http) as start:
        yield start
