"""What the benchmarks share: child processes, CPU pinning, readiness, held calls, percentiles.

Everything here runs on 127.0.0.1 and is bounded in time; `processes()` stops what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]  # the repository
STREAM_ROUTE = "bench-stream"  # the sync route every benchmark config names


def raise_open_files_limit() -> int:
    """Raise this process's open-files soft limit to its hard limit (children inherit it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values` (nearest rank); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child process (Popen returns at once; nothing here waits on it)."""
    return subprocess.Popen(args, **kwargs)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; always reaps the child."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to append children to; every one is stopped on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            stop_process(proc)


# --------------------------------------------------------------------------------------------
# CPU pinning and accounting
# --------------------------------------------------------------------------------------------


def split_cores() -> tuple[list[int], list[int]]:
    """(cores for the process under test, cores for everything else).

    The process under test gets the last core to itself; the load generator, the upstream,
    Redis and this script share the others. With one core there is nothing to separate.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return cores, cores
    return cores[-1:], cores[:-1]


def pinned(command: list[str], cores: list[int] | None) -> list[str]:
    """`command` prefixed with `taskset -c <cores>` (unchanged when taskset is missing)."""
    if not cores or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", ",".join(map(str, cores)), *command]


def tree(pid: int) -> list[psutil.Process]:
    """A process and its live descendants (workers of a multi-process server)."""
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    """user+sys CPU seconds of a process and its live descendants."""
    total = 0.0
    for proc in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its live descendants."""
    total = 0
    for proc in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


# --------------------------------------------------------------------------------------------
# Readiness, metrics, held calls
# --------------------------------------------------------------------------------------------


async def wait_http(url: str, timeout_s: float = 20.0) -> None:
    """Until `url` answers below 500 (or raise after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def waiting_now(
    session: aiohttp.ClientSession, admin: str, route: str = STREAM_ROUTE
) -> float:
    """`sidecar_waiting_requests` of `route`, read from the admin listener's /metrics."""
    prefix = f'sidecar_waiting_requests{{route="{route}"}}'
    async with session.get(f"{admin}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def hold(
    session: aiohttp.ClientSession,
    base: str,
    admin: str,
    cids: list[str],
    done: dict[str, float],
    *,
    baseline: float = 0,
    timeout_s: float = 120.0,
) -> list[asyncio.Task[int]]:
    """Start one held call per id (POST /jobs); return once the sidecar holds them all.

    `baseline` is the number of calls already held on the route by others. `done[cid]` is set
    (perf_counter) when a call's answer has arrived.
    """

    async def call(cid: str) -> int:
        async with session.post(
            f"{base}/jobs", data=b"{}", headers={"X-Correlation-ID": cid}
        ) as resp:
            await resp.read()
            done[cid] = time.perf_counter()
            return resp.status

    tasks = [asyncio.create_task(call(cid)) for cid in cids]
    deadline = time.monotonic() + timeout_s
    while await waiting_now(session, admin) < baseline + len(cids):
        if time.monotonic() > deadline:
            raise RuntimeError("the sidecar never held every call")
        failed = [t for t in tasks if t.done()]
        if failed:
            raise RuntimeError(f"{len(failed)} call(s) answered before their event: {failed[0]}")
        await asyncio.sleep(0.1)
    return tasks


async def publish_at_rate(
    r: aioredis.Redis, stream: str, cids: list[str], rate: float, payload: str = '{"ok":true}'
) -> dict[str, float]:
    """XADD one `Done` completion per id at `rate`/s; returns the perf_counter just before each."""
    published: dict[str, float] = {}
    start = time.perf_counter()
    for i, cid in enumerate(cids):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        published[cid] = time.perf_counter()
        await r.xadd(stream, {"correlation_id": cid, "type": "Done", "payload": payload})
    return published


async def publish_all(r: aioredis.Redis, stream: str, cids: list[str], batch: int = 500) -> None:
    """XADD one `Done` completion per id, pipelined in batches."""
    for i in range(0, len(cids), batch):
        async with r.pipeline(transaction=False) as pipe:
            for cid in cids[i : i + batch]:
                pipe.xadd(stream, {"correlation_id": cid, "type": "Done", "payload": "{}"})
            await pipe.execute()


def latency_summary(published: dict[str, float], done: dict[str, float]) -> dict[str, float]:
    """p50/p90/p99/max (ms) of answer - publish, over the ids answered."""
    lat_ms = [(done[c] - t) * 1000 for c, t in published.items() if c in done]
    return {
        "answered": len(lat_ms),
        "p50_ms": percentile(lat_ms, 0.50),
        "p90_ms": percentile(lat_ms, 0.90),
        "p99_ms": percentile(lat_ms, 0.99),
        "max_ms": max(lat_ms) if lat_ms else float("nan"),
    }


def python_command(*args: str) -> list[str]:
    """This interpreter running `args` (e.g. `-m sidecar.cli run`)."""
    return [sys.executable, *args]
