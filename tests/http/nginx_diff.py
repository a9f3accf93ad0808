"""The upstream pool against nginx: one scripted upstream writing exact bytes, the same answers
relayed through nginx (Debian's package: `proxy_pass` with HTTP/1.1 keep-alive, bench/nginx.py's
reverse proxy) and through the sidecar's proxy listener, and what a client sees of each.

    ScriptedUpstream   answers `GET /<case>` with the case's bytes; numbers its connections, so a
                       test can tell whether the proxy sent the next request on the same one
    Nginx              an nginx of the test's own (its config in a temporary directory, in the
                       foreground, on a free port)
    observe            one case through one proxy: the client's answer, and whether the proxy
                       used the case's upstream connection again

`python -m tests.http.nginx_diff` prints the table of every case for the sidecar found on the
import path (run it from another checkout to see that one's column).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL

from bench import nginx as nginx_config
from devtools.redis_server import free_port

SECRET = b"SECRET"  # in every bad answer: it must never reach a client in a 502 of the sidecar
FOLLOW_UP = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine"
BIG = 2 * 1024 * 1024


@dataclass(frozen=True)
class Case:
    """Bytes the upstream answers one request with, and what each proxy should make of them."""

    name: str
    answer: bytes
    then: str  # "keep": the upstream keeps the connection open; "close": it closes it
    nginx: Outcome
    sidecar: Outcome | None = None  # None: the same as nginx's
    why: str = ""  # why the sidecar answers otherwise than nginx
    method: str = "GET"
    late: bytes = b""  # written on the connection once the answer reached the client


@dataclass(frozen=True)
class Outcome:
    """What a client sees (status, body; None: no status line, or a body not compared) and
    whether the proxy sent the next request on the case's upstream connection."""

    status: int | None
    body: bytes | None
    reused: bool

    def __repr__(self) -> str:
        return shown(self)


def matches(expected: Outcome, seen: Outcome) -> bool:
    """`seen` is what was expected (a body expected as None is not compared)."""
    body = seen.body if expected.body is not None else None
    return (seen.status, body, seen.reused) == (expected.status, expected.body, expected.reused)


@dataclass(frozen=True)
class Answer:
    """An answer as a client reads it, to the end of its connection."""

    status: int | None  # None: no status line (the bytes were relayed raw)
    headers: dict[str, str]
    body: bytes
    raw: bytes


def parse(raw: bytes) -> Answer:
    """A whole answer read to the connection's end: its head, its body de-chunked."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    code = lines[0].split(" ")[1] if lines[0].count(" ") else ""
    if not raw.startswith(b"HTTP/1.") or not sep or not code.isdigit():
        return Answer(None, {}, raw, raw)
    status = int(code)
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    body = rest
    if headers.get("transfer-encoding") == "chunked":
        body, rest = b"", rest
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2 :]
    elif "content-length" in headers and status not in (204, 304):
        body = rest[: int(headers["content-length"])]
    return Answer(status, headers, body, raw)


@dataclass
class ScriptedUpstream:
    """An upstream answering `/<case name>` with that case's bytes (anything else: `FOLLOW_UP`),
    noting on which of its connections each request came (`served`) and which connections the
    proxy closed (`closed`). A case's `late` bytes are written once `late_now` is set."""

    cases: dict[str, Case]
    served: list[tuple[int, str]] = field(default_factory=list)
    closed: set[int] = field(default_factory=set)
    late_now: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    port: int = 0
    _server: asyncio.Server | None = None
    _count: int = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _note(self, served: tuple[int, str] | None = None, closed: int | None = None) -> None:
        async with self.changed:
            if served is not None:
                self.served.append(served)
            if closed is not None:
                self.closed.add(closed)
            self.changed.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count += 1
        conn = self._count
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                case = self.cases.get(path.strip("/"))
                await self._note(served=(conn, path))
                writer.write(case.answer if case else FOLLOW_UP)
                await writer.drain()
                if case is not None and case.late:
                    await self.late_now.wait()
                    writer.write(case.late)
                    await writer.drain()
                if case is not None and case.then == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            await self._note(closed=conn)  # the proxy closed it
        finally:
            writer.close()

    async def closed_by_proxy(self, conn: int, timeout_s: float) -> bool:
        """Whether the proxy closes connection `conn` within `timeout_s`."""
        async with self.changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self.changed.wait_for(lambda: conn in self.closed)
            return conn in self.closed


class Nginx:
    """An nginx reverse proxy of the test's own in front of `upstream_port`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="sidecar-nginx-")
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        directory = Path(self._dir.name)
        config = nginx_config.write_config(
            directory, port=self.port, upstream=self.upstream_port, nofile=1024
        )
        self._proc = await asyncio.create_subprocess_exec(
            *nginx_config.command(config), stdout=DEVNULL, stderr=DEVNULL
        )
        async with asyncio.timeout(10):
            while True:
                assert self._proc.returncode is None, (directory / "error.log").read_text()
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.01)  # until nginx listens
                    continue
                writer.close()
                return self.port

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await asyncio.wait_for(self._proc.wait(), 10)
        self._dir.cleanup()


async def exchange(port: int, method: str, path: str) -> Answer:
    """One request (`Connection: close`), its answer read to the end of the connection. An
    answer that switches protocols is read to the end of its head, then the client leaves."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    length = "Content-Length: 2\r\n" if method == "POST" else ""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: test\r\n{length}Connection: close\r\n\r\n".encode()
        + (b"{}" if method == "POST" else b"")
    )
    raw = b""
    try:
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                raw += chunk
                if raw.startswith(b"HTTP/1.1 101 ") and b"\r\n\r\n" in raw:
                    break  # a tunnel: nothing more belongs to this request
    finally:
        writer.close()
    return parse(raw)


async def observe(port: int, upstream: ScriptedUpstream, case: Case) -> tuple[Outcome, Answer]:
    """`case` through the proxy at `port`: the client's answer, then a second request, and
    whether that one went out on the case's upstream connection."""
    answer = await exchange(port, case.method, f"/{case.name}")
    conn = next(c for c, path in reversed(upstream.served) if path == f"/{case.name}")
    if case.late:
        upstream.late_now.set()  # bytes nobody asked for, on an idle pooled connection
        await upstream.closed_by_proxy(conn, 2.0)
    follow_up = await exchange(port, "GET", "/follow-up")
    assert follow_up.body == b"fine", follow_up.raw[:300]
    reused = upstream.served[-1][0] == conn
    shown = answer.body if answer.status != 502 else None
    return Outcome(answer.status, shown, reused), answer


CASES = [
    Case(
        "close-delimited",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nthe body runs to the close",
        "close",
        Outcome(200, b"the body runs to the close", False),
    ),
    Case(
        "http10-close-delimited",
        b"HTTP/1.0 200 OK\r\n\r\nan HTTP/1.0 body",
        "close",
        Outcome(200, b"an HTTP/1.0 body", False),
    ),
    Case(
        "interim-1xx",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload"
        b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        "close",
        Outcome(100, None, False),
        sidecar=Outcome(200, b"final", False),
        why="nginx 1.22 takes a 100 for the final answer and relays the rest as its body; "
        "RFC 9110 15.2 says interim answers are skipped",
    ),
    Case(
        "204-with-length",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        "keep",
        Outcome(204, b"", True),
    ),
    Case(
        "304-with-length",
        b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 100\r\n\r\n',
        "keep",
        Outcome(304, b"", True),
    ),
    Case(
        "101-unasked",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: Upgrade\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n" + SECRET,
        "close",  # nginx relays nothing until the upstream closes
        Outcome(101, None, False),
        sidecar=Outcome(502, None, False),
        why="no Upgrade was forwarded, so the switch was not asked for (RFC 9110 15.2.2): "
        "what follows is not HTTP; nginx relays the 101 and then the raw bytes",
    ),
    Case(
        "stray-before",
        b"junk " + SECRET + b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "close",
        Outcome(
            None, b"junk " + SECRET + b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False
        ),
        sidecar=Outcome(502, None, False),
        why="nginx takes an answer without a status line for HTTP/0.9 and relays its bytes "
        "raw, without a status line of its own",
    ),
    Case(
        "stray-after-length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + SECRET,
        "keep",
        Outcome(200, b"ok", False),
    ),
    Case(
        "stray-after-answer",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n" + SECRET,
        "keep",
        Outcome(200, b"ok", False),
    ),
    Case(
        "stray-after-chunks",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" + SECRET,
        "keep",
        Outcome(200, b"ok", False),
    ),
    Case(
        "stray-after-204",
        b"HTTP/1.1 204 No Content\r\n\r\n" + SECRET,
        "keep",
        Outcome(204, b"", False),
    ),
    Case(
        "stray-on-idle",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "keep",
        Outcome(200, b"ok", False),
        late=b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n" + SECRET,
    ),
    Case(
        "malformed-header",
        b"HTTP/1.1 200 OK\r\n" + SECRET + b" header line\r\nContent-Length: 2\r\n\r\nok",
        "keep",
        Outcome(502, None, False),
    ),
    Case(
        "nul-in-header",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00" + SECRET + b"\r\nContent-Length: 2\r\n\r\nok",
        "keep",
        Outcome(502, None, False),
    ),
    Case(
        "malformed-status",
        b"HTTP/1.1 2OO " + SECRET + b"\r\nContent-Length: 2\r\n\r\nok",
        "close",
        Outcome(None, b"HTTP/1.1 2OO " + SECRET + b"\r\nContent-Length: 2\r\n\r\nok", False),
        sidecar=Outcome(502, None, False),
        why="nginx relays an invalid status line raw (HTTP/0.9)",
    ),
    Case(
        "conflicting-lengths",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n"
        + SECRET
        + b": x\r\n\r\nok",
        "close",
        Outcome(200, b"ok", False),
        sidecar=Outcome(502, None, False),
        why="nginx 1.22 takes the last length and relays an answer cut short; two lengths are "
        "a smuggling attempt (RFC 9112 6.3) that the sidecar refuses",
    ),
    Case(
        "oversize-header-line",
        b"HTTP/1.1 200 OK\r\nX-Big: " + SECRET * 4000 + b"\r\nContent-Length: 2\r\n\r\nok",
        "keep",
        Outcome(502, None, False),
    ),
    Case(
        "oversize-head",
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-H%d: %s\r\n" % (i, SECRET * 8) for i in range(200))
        + b"Content-Length: 2\r\n\r\nok",
        "keep",
        Outcome(502, None, False),
    ),
    Case(
        "large-202-on-a-sync-route",
        b"HTTP/1.1 202 Accepted\r\nLocation: /jobs/1\r\nContent-Length: %d\r\n\r\n" % BIG
        + b"x" * BIG,
        "keep",
        Outcome(202, b"x" * BIG, True),
        method="POST",
    ),
]

# The sidecar's settings for the cases: the large 202 arrives on a synchronised route.
ROUTES = [
    {
        "name": "large-202",
        "method": "POST",
        "path": "/large-202-on-a-sync-route",
        "budget": "1s",
        "wait": {"poll": {"interval": "1s"}},
    }
]


@contextlib.asynccontextmanager
async def sidecar_proxy(upstream_port: int) -> AsyncIterator[int]:
    """The sidecar's proxy listener (guarded, as `sidecar run` serves it) in front of the port."""
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from sidecar.app import client_guard, create_app
    from sidecar.config import parse_settings
    from sidecar.http.listener import GuardedAppRunner

    raw = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "upstream": f"http://127.0.0.1:{upstream_port}",
        "routes": ROUTES,
        "log": {"level": "error"},
    }
    app = create_app(parse_settings(raw, "<nginx_diff>", env={}), CollectorRegistry())
    runner = GuardedAppRunner(app, guard=client_guard(app, "proxy"), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def shown(outcome: Outcome, answer: Answer | None = None) -> str:
    """One cell of the table (`answer`: the client's, to say when a 502 quotes the upstream)."""
    status = "raw bytes" if outcome.status is None else str(outcome.status)
    body = "" if outcome.body is None else f" {outcome.body[:24]!r}"
    if outcome.body is not None and len(outcome.body) > 24:
        body = f" {len(outcome.body)} bytes"
    leak = (
        ", quoting the upstream" if answer and answer.status == 502 and SECRET in answer.raw else ""
    )
    return f"{status}{body}{leak}{', reused' if outcome.reused else ''}"


async def _table() -> None:
    print("| case | nginx | sidecar |")
    print("|---|---|---|")
    for case in CASES:
        cells = []
        for proxy in ("nginx", "sidecar"):
            upstream = ScriptedUpstream({case.name: case})
            port = await upstream.start()
            try:
                if proxy == "nginx":
                    server = Nginx(port)
                    try:
                        seen, answer = await observe(await server.start(), upstream, case)
                    finally:
                        await server.stop()
                else:
                    async with sidecar_proxy(port) as proxy_port:
                        try:
                            seen, answer = await observe(proxy_port, upstream, case)
                        except Exception as exc:
                            cells.append(f"fails: {exc.__class__.__name__}")
                            continue
                cells.append(shown(seen, answer))
            finally:
                await upstream.close()
        print(f"| {case.name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    sys.exit(asyncio.run(_table()))
