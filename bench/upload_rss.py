"""Memory while streaming large bodies (run: `.venv/bin/python -m bench.upload_rss`).

Starts a sink upstream (this module with `--sink-port`, a separate process) and the real sidecar
(`sidecar run`), both on 127.0.0.1, then:

1. upload: streams a generated body of `--size-mib` MiB (default 1024) through the proxy to the
   sink, which reads and discards it, counting bytes;
2. download: the sink generates a body of the same size, the client reads and discards it.

While each transfer runs, the sidecar's RSS is sampled every 50 ms (psutil), and its kernel
high-water mark (`VmHWM`, the peak since start) is read afterwards to catch spikes between samples.
Prints the bytes the
far end received, the throughput, the sidecar's baseline and peak RSS. Exits 1 when the peak RSS
reaches `--max-rss-mib` (default 100) or a byte count does not match. Every loop is bounded; the
script stops everything it started on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
from aiohttp import web

from devtools.redis_server import free_port

from .harness import ROOT

MIB = 1024 * 1024
BLOCK = MIB  # the unit the client sends and the sink generates
SAMPLE_INTERVAL_S = 0.05
READY_TIMEOUT_S = 15.0


# --------------------------------------------------------------------------------------------
# The sink upstream (a separate process)
# --------------------------------------------------------------------------------------------


async def sink_upload(request: web.Request) -> web.Response:
    """Read and discard the body; answer how many bytes arrived."""
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
    return web.json_response({"bytes": received})


async def sink_download(request: web.Request) -> web.StreamResponse:
    """Generate `?bytes=N` bytes, one block at a time."""
    total = int(request.query["bytes"])
    block = bytes(range(256)) * (BLOCK // 256)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = total
    await response.prepare(request)
    full, rest = divmod(total, BLOCK)
    for _ in range(full):
        await response.write(block)
    if rest:
        await response.write(block[:rest])
    await response.write_eof()
    return response


async def sink_ping(request: web.Request) -> web.Response:
    return web.Response(text="pong")


def run_sink(port: int) -> None:
    """Serve the sink on 127.0.0.1:`port` until terminated."""
    app = web.Application(client_max_size=0)
    app.router.add_post("/upload", sink_upload)
    app.router.add_get("/download", sink_download)
    app.router.add_get("/ping", sink_ping)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --------------------------------------------------------------------------------------------
# Processes and RSS sampling
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def started(args: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, terminated (then killed) on exit."""
    proc = subprocess.Popen(args, cwd=ROOT, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class RssSampler:
    """Samples a process's RSS every `SAMPLE_INTERVAL_S` on a thread, keeping the peak."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.samples = 0
        self.hwm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def high_water_mark(self) -> int:
        """The kernel's peak RSS of the process so far (`VmHWM`): catches spikes between samples."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self.samples += 1
            self._stop.wait(SAMPLE_INTERVAL_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.hwm = self.high_water_mark()


async def wait_ready(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> None:
    """Poll `url` until it answers 200 (bounded)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer within {READY_TIMEOUT_S}s")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------------------------
# The transfers
# --------------------------------------------------------------------------------------------


@dataclass
class Transfer:
    """One measured transfer."""

    name: str
    sent: int
    received: int
    seconds: float
    baseline_rss: int
    peak_rss: int
    samples: int
    hwm: int  # VmHWM after the transfer: the process's peak since it started

    @property
    def mib_s(self) -> float:
        return self.received / MIB / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.name:<23} sent {self.sent:>13,} B  received {self.received:>13,} B  "
            f"{self.mib_s:8.1f} MiB/s  baseline RSS {self.baseline_rss / MIB:6.1f} MiB  "
            f"peak RSS {self.peak_rss / MIB:6.1f} MiB ({self.samples} samples; "
            f"VmHWM {self.hwm / MIB:.1f} MiB)"
        )


async def generated_body(size: int) -> AsyncIterator[bytes]:
    """`size` bytes in `BLOCK`-sized pieces; the same block object each time (bounded loop)."""
    block = os.urandom(BLOCK)
    full, rest = divmod(size, BLOCK)
    for _ in range(full):
        yield block
    if rest:
        yield block[:rest]


async def upload(
    http: aiohttp.ClientSession, proxy: str, size: int, pid: int, *, chunked: bool
) -> Transfer:
    """Stream `size` bytes through the proxy to the sink, chunked or with a Content-Length."""
    sampler = RssSampler(pid)
    baseline = sampler.rss()
    headers = {} if chunked else {"Content-Length": str(size)}
    name = "upload (chunked)" if chunked else "upload (Content-Length)"
    with sampler:
        started_at = time.perf_counter()
        body = generated_body(size)
        async with http.post(f"{proxy}/upload", data=body, headers=headers) as resp:
            resp.raise_for_status()
            received = int((await resp.json())["bytes"])
        seconds = time.perf_counter() - started_at
    return Transfer(
        name, size, received, seconds, baseline, sampler.peak, sampler.samples, sampler.hwm
    )


async def download(http: aiohttp.ClientSession, proxy: str, size: int, pid: int) -> Transfer:
    """Stream `size` generated bytes from the sink through the proxy, discarding them."""
    sampler = RssSampler(pid)
    baseline = sampler.rss()
    received = 0
    with sampler:
        started_at = time.perf_counter()
        async with http.get(f"{proxy}/download", params={"bytes": str(size)}) as resp:
            resp.raise_for_status()
            async for chunk in resp.content.iter_chunked(BLOCK):
                received += len(chunk)
        seconds = time.perf_counter() - started_at
    return Transfer(
        "download", size, received, seconds, baseline, sampler.peak, sampler.samples, sampler.hwm
    )


def machine() -> str:
    """nproc, memory and Python, as the report records them."""
    memory = psutil.virtual_memory()
    return (
        f"machine: {os.cpu_count()} CPUs, {memory.total / 2**30:.1f} GiB RAM "
        f"({memory.available / 2**30:.1f} GiB available); Python {platform.python_version()} "
        f"({platform.python_implementation()}); aiohttp {aiohttp.__version__}; "
        f"{platform.system()} {platform.release()}"
    )


async def bench(size: int, max_rss: int) -> int:
    """Run both transfers; 0 when every count matches and the peak RSS stays under `max_rss`."""
    sink_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SIDECAR_")}
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        config = Path(tmp) / "sidecar.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{proxy_port}\n"
            f"admin_listen: 127.0.0.1:{admin_port}\n"
            f"upstream: http://127.0.0.1:{sink_port}\n"
            "log: {level: warning, format: json}\n"
            "shutdown_grace: 1s\n"
        )
        sink_cmd = [sys.executable, "-m", "bench.upload_rss", "--sink-port", str(sink_port)]
        sidecar_cmd = [sys.executable, "-m", "sidecar.cli", "run", "-c", str(config)]
        with (
            started(sink_cmd, env=env) as sink,
            started(sidecar_cmd, env=env) as sidecar,
        ):
            proxy = f"http://127.0.0.1:{proxy_port}"
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                await wait_ready(http, f"http://127.0.0.1:{sink_port}/ping", sink)
                await wait_ready(http, f"http://127.0.0.1:{admin_port}/healthz", sidecar)
                await wait_ready(http, f"{proxy}/ping", sidecar)
                print(machine())
                print(
                    f"body: {size:,} bytes ({size / MIB:g} MiB), limit: peak RSS < "
                    f"{max_rss / MIB:g} MiB"
                )
                results = [
                    await upload(http, proxy, size, sidecar.pid, chunked=True),
                    await upload(http, proxy, size, sidecar.pid, chunked=False),
                    await download(http, proxy, size, sidecar.pid),
                ]
    failed = False
    for result in results:
        print(result.line())
        if result.received != result.sent:
            print(f"FAIL {result.name}: {result.received:,} bytes arrived of {result.sent:,}")
            failed = True
        if max(result.peak_rss, result.hwm) >= max_rss:
            peak = max(result.peak_rss, result.hwm)
            print(f"FAIL {result.name}: peak RSS {peak / MIB:.1f} MiB")
            failed = True
    print("FAIL" if failed else "OK")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="body size (default 1024)")
    parser.add_argument(
        "--max-rss-mib", type=int, default=100, help="fail at this peak RSS (default 100)"
    )
    parser.add_argument("--sink-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sink_port:
        run_sink(args.sink_port)
        return 0
    return asyncio.run(bench(args.size_mib * MIB, args.max_rss_mib * MIB))


if __name__ == "__main__":
    sys.exit(main())
