"""Fixtures of the replica tests: every test runs twice, on one Redis (the shared one, or a
throwaway server when none answers) and on a 3-node Redis Cluster started from redis-server;
each with a key prefix (and so a stream) of its own, deleted afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from devtools.redis_server import RedisClusterServers, RedisUnavailable

from ..processes import sidecar_processes
from .support import JobsApi, Receiver, RedisUnderTest, Replicas


@pytest.fixture(scope="session")
def cluster() -> Iterator[RedisClusterServers]:
    """A 3-node Redis Cluster, shared by this directory's tests (each has its own prefix)."""
    try:
        servers = RedisClusterServers(3).start()
    except RedisUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield servers
    servers.close()


@pytest.fixture(params=["single", "cluster"])
async def redis_under_test(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[RedisUnderTest]:
    """The Redis every replica of the test shares; the test's keys are deleted afterwards
    (the replicas, which depend on this fixture, are stopped first)."""
    prefix = f"rep-{uuid.uuid4().hex[:10]}"
    target: RedisUnderTest
    if request.param == "cluster":
        servers: RedisClusterServers = request.getfixturevalue("cluster")
        target = RedisUnderTest(
            "cluster",
            servers.url,
            RedisCluster.from_url(servers.url),
            [aioredis.Redis.from_url(node.url) for node in servers.nodes],
            prefix,
        )
    else:
        target = RedisUnderTest(
            "single",
            redis_url,
            aioredis.Redis.from_url(redis_url),
            [aioredis.Redis.from_url(redis_url)],
            prefix,
        )
    try:
        yield target
    finally:
        await target.delete_everything()
        await target.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The clients' session: no connection cap (hundreds of calls are held at once)."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        yield session


@pytest.fixture
async def api(aiohttp_server: Any, redis_under_test: RedisUnderTest) -> AsyncIterator[JobsApi]:
    """The jobs API (the replicas' upstream) and its backend."""
    jobs = JobsApi(redis_under_test)
    jobs.server = await aiohttp_server(jobs.app())
    backend = asyncio.create_task(jobs.backend())
    yield jobs
    backend.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await backend


@pytest.fixture
async def receiver(aiohttp_server: Any) -> AsyncIterator[Receiver]:
    fake = Receiver()
    fake.server = await aiohttp_server(fake.app())
    yield fake
    fake.release.set()  # held requests answer, so the server closes at once


@pytest.fixture
async def replicas(
    tmp_path: Path,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    api: JobsApi,
    redis_under_test: RedisUnderTest,
) -> AsyncIterator[Replicas]:
    """Starts replicas; any still running is killed at teardown, before the test's keys are
    deleted (a live replica would create some again)."""
    async with sidecar_processes(tmp_path, http) as start:
        yield Replicas(start, http)
