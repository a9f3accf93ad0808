"""The upstream pool holds the promise of speaking HTTP/1.1 by hand: the same raw answers relayed
through a real nginx and through the sidecar give the client the same answer, except where the
sidecar is stricter on purpose (each such case says why, in tests/http/nginx_diff.py); a
connection that carried anything unexpected is never used again; a 502 never quotes the
upstream's bytes; and under concurrency no client ever gets another's answer."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from bench import nginx as nginx_config

from ..conftest import ProxyFactory
from .nginx_diff import (
    CASES,
    ROUTES,
    SECRET,
    Answer,
    Case,
    Nginx,
    Outcome,
    ScriptedUpstream,
    exchange,
    matches,
    observe,
)

StartNginx = Callable[[int], Awaitable[int]]


@pytest.fixture
async def start_nginx() -> AsyncIterator[StartNginx]:
    """Start nginx (a reverse proxy of this test's own) in front of an upstream port."""
    if nginx_config.binary() is None:
        pytest.fail(
            "no nginx (scripts/test-deps installs it: apt-get install nginx)", pytrace=False
        )
    started: list[Nginx] = []

    async def start(upstream_port: int) -> int:
        started.append(Nginx(upstream_port))
        return await started[-1].start()

    yield start
    for server in started:
        await server.stop()


async def through(port: int, case: Case) -> tuple[Outcome, Answer]:
    upstream = ScriptedUpstream({case.name: case})
    await upstream.start()
    try:
        return await observe(port, upstream, case)
    finally:
        await upstream.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_an_answer_through_nginx_and_through_the_sidecar(
    case: Case, start_nginx: StartNginx, start_proxy: ProxyFactory
) -> None:
    upstream = ScriptedUpstream({case.name: case})
    port = await upstream.start()
    nginx_seen, _ = await observe(await start_nginx(port), upstream, case)
    await upstream.close()

    upstream = ScriptedUpstream({case.name: case})
    port = await upstream.start()
    proxy = await start_proxy(f"http://127.0.0.1:{port}", routes=ROUTES)
    seen, answer = await observe(proxy.port, upstream, case)
    await upstream.close()

    assert matches(case.nginx, nginx_seen), f"nginx changed: {nginx_seen}"
    expected = case.sidecar or case.nginx
    assert matches(expected, seen), f"{seen} (nginx: {nginx_seen}; {case.why})"
    if answer.status == 502:
        problem = orjson.loads(answer.body)
        assert problem["type"] == "urn:sidecar:problem:upstream-unreachable"
        assert SECRET not in answer.raw, "a 502 quoted the upstream's bytes"


HOLD_S = 0.5  # how long a switched connection waits for more from the proxy before it closes


class Mixed:
    """An upstream that answers `/mix/<client>/<kind>` in one of four ways, marking every byte
    it sends with the client it answers (`for:<client>`):

        101    switches protocols; on the switched connection every later request, whoever
               sends it, gets `for:<client>` (the other protocol's bytes belong to that client)
        glued  its answer with a second complete answer glued to it
        late   its answer, then bytes that are not HTTP, written apart
        plain  its answer
    """

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0

    @staticmethod
    def answer(client: str) -> bytes:
        body = f"for:{client}".encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                _, _, client, kind = head.split(b" ", 2)[1].decode().split("/")
                if kind == "101":
                    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\n\r\n")
                    await writer.drain()
                    try:  # the scenario: the switched connection idles a while
                        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HOLD_S)
                    except TimeoutError:
                        break
                    writer.write(self.answer(client))  # another's request, this one's bytes
                    await writer.drain()
                    break
                writer.write(
                    self.answer(client) + (self.answer(client) if kind == "glued" else b"")
                )
                await writer.drain()
                if kind == "late":
                    writer.write(f"late bytes for:{client}\r\n".encode())
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def wrong_answers(port: int, clients: int = 20, each: int = 10) -> tuple[int, int]:
    """Every client's requests through the proxy at `port`: how many answers carried another
    client's bytes, and how many carried its own answer."""
    kinds = ["101", "glued", "late", "plain"]
    wrong = right = 0

    async def client(name: str) -> None:
        nonlocal wrong, right
        for i in range(each):
            got = await exchange(port, "GET", f"/mix/{name}/{kinds[(i + int(name[1:])) % 4]}")
            marks = set(re.findall(rb"for:(c\d+)", got.raw))
            if marks - {name.encode()}:
                wrong += 1
            elif got.body == f"for:{name}".encode():
                right += 1

    await asyncio.gather(*(client(f"c{n}") for n in range(clients)))
    return wrong, right


async def test_no_client_gets_another_s_answer_however_the_upstream_misbehaves(
    start_nginx: StartNginx, start_proxy: ProxyFactory
) -> None:
    results = {}
    for proxy_kind in ("nginx", "sidecar"):
        mixed = Mixed()
        server = await asyncio.start_server(mixed.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        if proxy_kind == "nginx":
            proxy_port = await start_nginx(port)
        else:
            proxy_port = (await start_proxy(f"http://127.0.0.1:{port}")).port
        results[proxy_kind] = (*await wrong_answers(proxy_port), mixed.connections)
        server.close()
    assert results["nginx"][0] == 0, results
    wrong, right, connections = results["sidecar"]
    assert wrong == 0, results
    # Most glued, late and plain answers arrive whole (the 101s are 502s, and late bytes racing a
    # reuse may turn the next request on that connection into a 502, never a wrong answer).
    assert right >= 100, results
    assert connections < 200  # good connections are still kept alive and reused
