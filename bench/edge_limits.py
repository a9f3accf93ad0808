"""Edge limits: what clients' bodies cost the sidecar (run: `.venv/bin/python -m bench.edge_limits
[--other PATH]`).

Two figures, each with a fresh sidecar (`sidecar run` of the checkout, a separate process) in
front of bench/sync_upstream.py (a separate process: `POST /jobs` answers 202, its Location stays
pending; `POST /plain` reads its body and answers 200; `GET /pass` answers at once):

1. **RSS with 100 held 10 MiB calls.** One poll route (`POST /jobs`, budget 120 s), no Redis.
   100 calls with a 10 MiB body each, all started at once; a 503 is sent again after its
   `Retry-After` (the budget's answer); RSS of the sidecar once it holds all 100
   (`sidecar_waiting_requests`), beside its RSS before and its peak (`VmHWM`).
2. **A plain GET behind 50 slow pass-through bodies.** `proxy.max_connections: 50` (a pool
   sized to an upstream's 50 workers). 50 clients send `POST /plain` with `Content-Length:
   100000` and then one byte every 20 s; 2 s later, 5 plain GETs at once, each bounded at 90 s:
   their latency and status.

`--other PATH` measures another checkout the same way (a `git worktree` of an earlier commit),
in the same run, this checkout first. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

from devtools.redis_server import free_port

from .harness import ROOT, percentile, rss_bytes, spawn, stop_process, wait_http

MIB = 1024 * 1024
ROUTE = "bench-held"
HELD_CALLS = 100
BODY = 10 * MIB
SLOW_SENDERS = 50
SLOW_EVERY_S = 20.0
PLAIN_GETS = 5
GET_BOUND_S = 90.0


def config(port: int, admin: int, upstream: str, extra: str = "") -> str:
    """One poll route whose calls stay pending; everything else passes through."""
    return f"""
listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin}
upstream: {upstream}
log: {{level: error}}
shutdown_grace: 1s
{extra}
routes:
  - name: {ROUTE}
    method: POST
    path: /jobs
    budget: 120s
    wait: {{poll: {{interval: 1s, max_interval: 2s}}}}
"""


@dataclass
class Sidecar:
    """A sidecar of checkout `tree`, running `sidecar run` with its own config."""

    tree: Path
    tmp: Path
    upstream: str
    extra: str = ""
    port: int = 0
    admin: int = 0
    proc: object = None

    async def __aenter__(self) -> Sidecar:
        self.port, self.admin = free_port(), free_port()
        path = self.tmp / f"sidecar-{self.port}.yaml"
        path.write_text(config(self.port, self.admin, self.upstream, self.extra))
        command = [sys.executable, "-m", "sidecar.cli", "run", "-c", str(path)]
        self.proc = spawn(command, cwd=self.tree)
        await wait_http(f"http://127.0.0.1:{self.admin}/healthz")
        return self

    async def __aexit__(self, *exc: object) -> None:
        stop_process(self.proc)  # type: ignore[arg-type]

    @property
    def pid(self) -> int:
        return self.proc.pid  # type: ignore[attr-defined,no-any-return]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def held(self, session: aiohttp.ClientSession) -> float:
        prefix = f'sidecar_waiting_requests{{route="{ROUTE}"}}'
        async with session.get(f"http://127.0.0.1:{self.admin}/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith(prefix):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0


def peak_rss(pid: int) -> int:
    """The process's RSS high-water mark (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def held_calls_rss(tree: Path, tmp: Path, upstream: str) -> dict[str, float]:
    """Figure 1: RSS before, at peak, and with 100 held 10 MiB calls."""
    body = b"x" * BODY
    async with (
        Sidecar(tree, tmp, upstream) as sidecar,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session,
    ):
        async with session.get(sidecar.url + "/pass") as resp:  # warm
            await resp.read()
        before = rss_bytes(sidecar.pid)
        refused = 0

        async def call() -> int:
            nonlocal refused
            while True:
                async with session.post(sidecar.url + "/jobs", data=body) as resp:
                    if resp.status != 503:
                        await resp.read()
                        return resp.status
                    refused += 1
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))

        tasks = [asyncio.create_task(call()) for _ in range(HELD_CALLS)]
        started = time.monotonic()
        while await sidecar.held(session) < HELD_CALLS:
            if time.monotonic() - started > 240:
                raise RuntimeError("the sidecar never held every call")
            done = [t for t in tasks if t.done()]
            if done:
                raise RuntimeError(f"a call ended before its budget: {done[0].result()}")
            await asyncio.sleep(0.2)
        intake_s = time.monotonic() - started
        await asyncio.sleep(2)  # settle: what remains held, not what is being freed
        held = rss_bytes(sidecar.pid)
        peak = peak_rss(sidecar.pid)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "rss_before_mib": before / MIB,
        "rss_held_mib": held / MIB,
        "rss_peak_mib": peak / MIB,
        "intake_s": intake_s,
        "refused_503": refused,
    }


async def slow_sender(url_port: int, stop: asyncio.Event) -> None:
    """A pass-through upload sending one byte every SLOW_EVERY_S until told to stop."""
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", url_port)
        writer.write(b"POST /plain HTTP/1.1\r\nHost: bench\r\nContent-Length: 100000\r\n\r\n")
        try:
            while not stop.is_set():
                writer.write(b"x")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SLOW_EVERY_S)
        except OSError:
            pass
        finally:
            writer.close()


async def get_behind_slow_bodies(tree: Path, tmp: Path, upstream: str) -> dict[str, object]:
    """Figure 2: plain GETs while 50 slow pass-through bodies are being sent."""
    extra = "proxy: {max_connections: 50}"
    async with (
        Sidecar(tree, tmp, upstream, extra) as sidecar,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=GET_BOUND_S)) as session,
    ):
        stop = asyncio.Event()
        senders = [
            asyncio.create_task(slow_sender(sidecar.port, stop)) for _ in range(SLOW_SENDERS)
        ]
        await asyncio.sleep(2)  # the scenario: the slow bodies are on their way

        async def get() -> tuple[float, str]:
            started = time.perf_counter()
            try:
                async with session.get(sidecar.url + "/pass") as resp:
                    await resp.read()
                    status = str(resp.status)
            except TimeoutError:
                status = "no answer"
            return time.perf_counter() - started, status

        results = await asyncio.gather(*(get() for _ in range(PLAIN_GETS)))
        stop.set()
        await asyncio.gather(*senders)
    latencies = [r[0] for r in results]
    return {
        "get_p50_s": percentile(latencies, 0.5),
        "get_max_s": max(latencies),
        "statuses": sorted({r[1] for r in results}),
    }


async def main_async(trees: list[Path]) -> int:
    upstream_port = free_port()
    upstream = spawn(
        [
            sys.executable,
            "-m",
            "bench.sync_upstream",
            "--port",
            str(upstream_port),
            "--done-after",
            "100000",
        ],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,  # the upstream's own complaints about clients that left
    )
    results = []
    try:
        await wait_http(f"http://127.0.0.1:{upstream_port}/stats", timeout_s=30)
        url = f"http://127.0.0.1:{upstream_port}"
        with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
            for tree in trees:
                rss = await held_calls_rss(tree, Path(tmp), url)
                slow = await get_behind_slow_bodies(tree, Path(tmp), url)
                results.append((tree, rss, slow))
    finally:
        stop_process(upstream)
    print(
        "| checkout | RSS before | RSS, 100 held 10 MiB calls | peak RSS | intake | 503s "
        "retried | plain GET behind 50 slow bodies (p50 / max) | GET statuses |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for tree, rss, slow in results:
        print(
            f"| {tree} | {rss['rss_before_mib']:.0f} MiB | {rss['rss_held_mib']:.0f} MiB | "
            f"{rss['rss_peak_mib']:.0f} MiB | {rss['intake_s']:.1f} s | {rss['refused_503']:.0f} | "
            f"{slow['get_p50_s']:.3f} / {slow['get_max_s']:.3f} s | {', '.join(slow['statuses'])} |"  # type: ignore[arg-type]
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", metavar="PATH", help="another checkout, measured the same way")
    args = parser.parse_args()
    return asyncio.run(main_async([ROOT] + ([Path(args.other).resolve()] if args.other else [])))


if __name__ == "__main__":
    psutil.Process()  # fail early without psutil
    sys.exit(main())
