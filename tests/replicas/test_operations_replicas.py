"""Operations on two replicas (in this process) sharing one Redis, and a Redis Cluster: a retry
on one replica attaches to the call held on the other, a status URL minted by one is answered
by the other, and the timeline is whole whichever replica wrote which step. On a cluster every
script must keep its keys in one slot: the operation's, the token's and the key's are apart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from sidecar.state import ADMIN_URL, HUB

from ..conftest import SidecarFactory, Upstream
from ..helpers import until, until_true
from ..operations_support import A, B, OrdersApi, order_route
from .support import RedisUnderTest


@pytest.fixture
async def pair(
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    sidecars: list[TestClient],
    redis_under_test: RedisUnderTest,
) -> AsyncIterator[tuple[OrdersApi, TestClient, TestClient]]:
    stream = f"{redis_under_test.prefix}:orders.events"
    api = OrdersApi(redis_under_test.client, stream, location=False)  # type: ignore[arg-type]
    upstream = await start_upstream(api.app())
    clients = []
    for _ in range(2):
        client = await start_sidecar(
            upstream,
            redis_url=redis_under_test.url,
            key_prefix=redis_under_test.prefix,
            admin_token="op-token",
            stream_reader={"block": "50ms"},
            routes=[order_route(stream)],
        )
        hub = client.app[HUB]
        assert hub is not None
        await asyncio.wait_for(hub.connected.wait(), 10)
        clients.append(client)
    yield api, clients[0], clients[1]
    for client in sidecars:  # stopped before the fixture deletes the test's keys
        await client.close()


def waiting(client: TestClient) -> int:
    hub = client.app[HUB]
    assert hub is not None
    return hub.waiting


async def place(client: TestClient, **headers: str) -> Any:
    sent = {"Authorization": A, "Idempotency-Key": "order-9", **headers}
    return await client.post("/orders", data=b'{"item": "desk"}', headers=sent)


async def test_retries_status_urls_and_timelines_across_replicas(
    pair: tuple[OrdersApi, TestClient, TestClient],
) -> None:
    api, one, two = pair
    first = asyncio.create_task(place(one))
    await until(lambda: waiting(one) == 1 and len(api.calls) == 1, timeout_s=10)
    retry = asyncio.create_task(place(two))
    await until(lambda: waiting(two) == 1, timeout_s=10)
    # Answered 202 at once (respond-async), a third retry gets the first call's status URL.
    early = await place(two, Prefer="respond-async")
    assert early.status == 202
    location = early.headers["Location"]
    assert location.startswith("/.sidecar/operations/")
    cid = api.calls[0]["cid"]
    pending = await one.get(location, headers={"Authorization": A})
    assert pending.status == 202
    assert (await two.get(location, headers={"Authorization": B})).status == 404

    await api.complete(cid, {"order": 99})
    answers = [await first, await retry]
    assert [a.status for a in answers] == [200, 200]
    assert [await a.json() for a in answers] == [{"order": 99}] * 2
    assert len(api.calls) == 1

    async def answered_on(client: TestClient) -> bool:
        resp = await client.get(location, headers={"Authorization": A})
        return bool(resp.status == 200 and await resp.json() == {"order": 99})

    await until_true(lambda: answered_on(two))
    await until_true(lambda: answered_on(one))
    replay = await place(one)
    assert replay.headers["Idempotent-Replayed"] == "true"

    url = one.app[ADMIN_URL] + f"/admin/api/operations/{cid}"

    async def whole() -> bool:
        async with one.session.get(url, headers={"Authorization": A}) as resp:
            body = orjson.loads(await resp.read())
        kinds = [e["kind"] for e in body.get("events", [])]
        return "idempotent_replay" in kinds and kinds.count("idempotent_attach") >= 2

    await until_true(whole)
    async with one.session.get(url, headers={"Authorization": A}) as resp:
        op = orjson.loads(await resp.read())
    kinds = [e["kind"] for e in op["events"]]
    assert kinds[:4] == ["received", "forwarded", "upstream_answered", "held"]
    assert kinds.index("completed") < kinds.index("answered")
    assert op["state"] == "succeeded"
    assert "status_read" in kinds

    async with one.session.delete(url, headers={"Authorization": "Bearer op-token"}) as gone:
        assert gone.status == 204
    assert (await two.get(location, headers={"Authorization": A})).status == 404
