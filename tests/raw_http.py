"""HTTP on the wire, for the tests of what slow, greedy or malformed clients (and upstreams)
get: the proxy listener served as `sidecar run` serves it (`Proxy`, started by the `start_proxy`
fixture of tests/conftest.py), raw connections to it, and an upstream answering exact bytes."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from aiohttp import web

from sidecar.metrics import METRICS


@dataclass
class Proxy:
    """The sidecar's proxy listener, served as `sidecar run` serves it (guarded)."""

    app: web.Application
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def metric(self, name: str, **labels: str) -> float:
        return self.app[METRICS].registry.get_sample_value(name, labels) or 0.0

    async def raw(
        self, source: str | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw connection (from the loopback address `source`, e.g. 127.0.0.2)."""
        local = (source, 0) if source else None
        return await asyncio.open_connection(self.host, self.port, local_addr=local)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer (with Content-Length) from a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (EOF, or reset)."""
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionResetError:
        return True


async def raw_upstream(answer: bytes) -> tuple[asyncio.Server, str]:
    """An upstream that answers every request with exactly `answer`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    sock: socket.socket = server.sockets[0]
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"
