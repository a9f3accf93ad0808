"""Real nginx running what `sidecar export nginx` writes: its config in a temporary directory
(bench/nginx.py's main file around the include), in the foreground, on a free port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from subprocess import DEVNULL

import pytest

from bench import nginx
from devtools.redis_server import free_port
from sidecar.config import Settings
from sidecar.front import FrontOptions, plan_front, render_nginx

START_TIMEOUT_S = 10.0

StartFront = Callable[..., Awaitable[str]]


def need_nginx() -> None:
    """Skip where Debian's nginx is not installed (`apt-get install nginx`)."""
    if nginx.binary() is None:
        pytest.skip("nginx is not installed")


@contextlib.asynccontextmanager
async def fronts(tmp_path: Path) -> AsyncIterator[StartFront]:
    """Start nginx fronts: `start(settings, sidecar="host:port")` writes the front of `settings`
    (to a sidecar at that address) and returns its base URL once nginx listens. Every one is
    stopped on exit."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(settings: Settings, *, sidecar: str, trust_forwarded: bool = False) -> str:
        port = free_port()
        directory = tmp_path / f"nginx-{port}"
        front = FrontOptions(
            listen=f"127.0.0.1:{port}", sidecar=sidecar, trust_forwarded=trust_forwarded
        )
        config = nginx.write_front(
            directory, render_nginx(plan_front(settings), front), nofile=1024
        )
        proc = await asyncio.create_subprocess_exec(
            *nginx.command(config), stdout=DEVNULL, stderr=DEVNULL
        )
        procs.append(proc)
        await listening(proc, port, directory)
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)


async def listening(proc: asyncio.subprocess.Process, port: int, directory: Path) -> None:
    """Until nginx accepts connections on `port` (the one wait a child process allows);
    fails with its error log when it exits instead."""
    async with asyncio.timeout(START_TIMEOUT_S):
        while True:
            if proc.returncode is not None:
                pytest.fail((directory / "error.log").read_text(), pytrace=False)
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.01)  # until nginx listens
                continue
            writer.close()
            return
