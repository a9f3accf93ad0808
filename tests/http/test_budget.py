"""What clients' bodies may cost the whole process (sidecar/http/budget.py): one byte budget for
every body held in memory, given back once a body is forwarded (so a held call holds none of
it), a 503 + Retry-After past it; a minimum data rate after a grace period; and a pass-through
body read up to `clients.pass_through_buffer` before an upstream connection is taken, so slow
senders never hold the pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from ..conftest import FakeApiFactory, ProxyFactory
from ..fakes import FakeApi, reply
from ..helpers import until
from ..raw_http import Proxy, closed, read_answer

MiB = 1024 * 1024
HELD = {  # a synchronised route whose calls are held until their budget ends
    "name": "jobs",
    "method": "POST",
    "path": "/jobs",
    "budget": "30s",
    "wait": {"poll": {"interval": "20ms", "max_interval": "20ms"}},
}


@pytest.fixture
async def pending(fake_api: FakeApiFactory) -> FakeApi:
    """An API that accepts `POST /jobs` and never finishes: its calls are held."""
    return await fake_api(
        accept="POST /jobs", location="/jobs/{cid}", status="/jobs/{cid}", replies=[reply(202)]
    )


def held_bytes(proxy: Proxy) -> float:
    return proxy.metric("sidecar_body_buffer_bytes")


async def test_a_held_call_holds_none_of_the_budget(
    start_proxy: ProxyFactory, pending: FakeApi
) -> None:
    proxy = await start_proxy(
        pending, routes=[HELD], clients={"max_body": "1MiB", "buffer_budget": "2MiB"}
    )
    async with aiohttp.ClientSession() as http:
        calls = []
        for n in range(1, 6):  # 5 MiB of bodies held at once through a 2 MiB budget
            calls.append(asyncio.ensure_future(http.post(proxy.url + "/jobs", data=b"x" * MiB)))
            await until(lambda n=n: pending.count == n, what=f"call {n} forwarded and held")
        await until(lambda: len(pending.polls) >= 5, what="their polls under way")
        assert held_bytes(proxy) == 0  # forwarded: given back while the calls wait
        assert [len(s.body) for s in pending.seen if s.method == "POST"] == [MiB] * 5
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)


async def test_past_the_budget_a_body_is_refused_503_with_retry_after(
    start_proxy: ProxyFactory, pending: FakeApi
) -> None:
    proxy = await start_proxy(
        pending, routes=[HELD], clients={"max_body": "1MiB", "buffer_budget": "2MiB"}
    )
    slow = []
    for _ in range(2):  # two bodies on their way, slowly: they hold 2 MiB between them
        reader, writer = await proxy.raw()
        writer.write(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nxx" % MiB)
        slow.append((reader, writer))
    await until(lambda: held_bytes(proxy) == 2 * MiB, what="two bodies held")

    reader, writer = await proxy.raw()  # a third, declared: refused before it is read
    writer.write(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % MiB)
    status, headers, body = await read_answer(reader)
    assert (status, headers["retry-after"]) == (503, "1")
    assert orjson.loads(body)["type"] == "urn:sidecar:problem:overloaded"
    assert await closed(reader)
    writer.close()
    async with aiohttp.ClientSession() as http:
        # Chunked, no length: refused once what came does not fit.
        async def parts() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield b"y" * 16384

        async with http.post(proxy.url + "/jobs", data=parts()) as resp:
            assert resp.status == 503
        # With Expect: 100-continue: refused before it is sent.
        async with http.post(
            proxy.url + "/jobs", data=b"z" * 1024, headers={"Expect": "100-continue"}
        ) as resp:
            assert resp.status == 503
        async with http.get(proxy.url + "/other") as resp:
            assert resp.status == 200  # bodiless calls are untouched
    assert proxy.metric("sidecar_body_budget_refused_total", route="jobs") == 3
    assert (
        proxy.metric("sidecar_requests_total", route="jobs", outcome="rejected", status_class="5xx")
        == 3
    )

    for _, writer in slow:  # the two slow bodies complete: forwarded, then given back
        writer.write(b"x" * (MiB - 2))
    await until(lambda: pending.count == 2, what="the slow calls forwarded")
    await until(lambda: held_bytes(proxy) == 0, what="their bodies given back")
    for _, writer in slow:
        writer.close()


async def test_a_body_under_the_minimum_rate_is_408_after_its_grace(
    start_proxy: ProxyFactory, pending: FakeApi
) -> None:
    proxy = await start_proxy(
        pending.url,
        routes=[HELD],
        clients={"min_body_rate": 100, "body_rate_grace": "300ms", "body_timeout": "30s"},
    )
    for path in ("/jobs", "/upload"):  # a synchronised body, a pass-through one
        reader, writer = await proxy.raw()
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode())

        async def trickle(w: asyncio.StreamWriter = writer) -> None:
            while True:  # the scenario: a byte every 50 ms, 20 B/s, never a long pause
                w.write(b"x")
                await asyncio.sleep(0.05)

        sender = asyncio.ensure_future(trickle())
        try:
            status, _, body = await asyncio.wait_for(read_answer(reader), 5)
        finally:
            sender.cancel()
        assert status == 408
        assert "100 bytes a second" in orjson.loads(body)["detail"]
        assert await closed(reader)
        writer.close()
    timeouts = proxy.metric("sidecar_client_timeouts_total", listener="proxy", phase="body_rate")
    assert timeouts == 2
    assert not pending.seen  # neither reached the upstream


async def test_slow_pass_through_senders_never_hold_the_pool(
    start_proxy: ProxyFactory, fake_api: FakeApiFactory
) -> None:
    api = await fake_api()
    proxy = await start_proxy(api, proxy={"max_connections": 2}, clients={"body_timeout": "30s"})
    slow = []
    for _ in range(10):  # ten uploads that have sent a byte and wait: more than the pool
        _, writer = await proxy.raw()
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nx")
        slow.append(writer)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(proxy.url + "/plain") as resp,  # not queued behind them
    ):
        assert resp.status == 200
    assert [s.path for s in api.seen] == ["/plain"]
    for writer in slow:
        writer.close()


async def test_a_pass_through_body_within_the_buffer_is_sent_whole_with_its_length(
    start_proxy: ProxyFactory, fake_api: FakeApiFactory
) -> None:
    api = await fake_api()
    proxy = await start_proxy(api, clients={"pass_through_buffer": "1KiB"})

    async def parts(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield b"p" * 200

    async with aiohttp.ClientSession() as http:
        for count in (3, 20):  # 600 bytes: buffered whole; 4000: streamed after the first KiB
            async with http.post(proxy.url + "/upload", data=parts(count)) as resp:
                assert resp.status == 200
    small, large = api.seen
    assert (small.headers.get("Content-Length"), len(small.body)) == ("600", 600)
    assert "Transfer-Encoding" not in small.headers
    assert (large.headers.get("Transfer-Encoding"), len(large.body)) == ("chunked", 4000)
    assert held_bytes(proxy) == 0
