"""Benchmark of the synchronised call (run: `.venv/bin/python -m bench.sync_bench`).

Starts Redis (the one at $REDIS_URL if it answers, else a throwaway one), a minimal async API
(`bench.sync_upstream`) and the real sidecar (`sidecar run`) as separate processes, all on
127.0.0.1, then measures, in one run so the figures compare side by side:

1. event → answer latency: N calls are held, then their completions are XADDed at a fixed rate
   (100/s and 1,000/s); latency = time the client has its answer minus time just before the XADD.
2. capacity: W calls held at once; the sidecar's RSS growth per waiting request.
3. CPU per call: sidecar CPU time (user+sys) per synchronised call vs per pass-through call.
4. poll mode: extra latency over the true completion time at the default poll interval, and
   upstream poll requests per synchronised call.

Every loop is bounded; the script stops everything it started on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import redis.asyncio as aioredis

from devtools.redis_server import RedisServer, answers, free_port

from .harness import (
    ROOT,
    hold,
    percentile,
    processes,
    publish_at_rate,
    raise_open_files_limit,
    spawn,
    wait_http,
)


def sidecar_config(
    path: Path,
    *,
    port: int,
    admin: int,
    upstream: int,
    redis_url: str,
    prefix: str,
    stream: str,
    max_connections: int,
) -> None:
    path.write_text(
        f"""
listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin}
upstream: http://127.0.0.1:{upstream}
redis_url: {redis_url}
key_prefix: {prefix}
log: {{level: warning}}
stream_reader: {{block: 1s, count: 1000}}
proxy: {{max_connections: {max_connections}}}
routes:
  - name: bench-stream
    method: POST
    path: /jobs
    budget: 120s
    max_waiting: 100000
    wait:
      stream: {{key: {stream}, success: [Done], failure: [Failed]}}
  - name: bench-poll
    method: POST
    path: /pjobs
    budget: 10s
    wait:
      poll: {{interval: 250ms, max_interval: 2s, done_status: [200]}}
"""
    )


async def bench_latency(
    session: aiohttp.ClientSession,
    r: aioredis.Redis,
    base: str,
    admin: str,
    stream: str,
    rate: int,
    seconds: float,
) -> dict[str, Any]:
    n = int(rate * seconds)
    cids = [f"lat-{rate}-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    done: dict[str, float] = {}
    tasks = await hold(session, base, admin, cids, done)
    start = time.perf_counter()
    published = await publish_at_rate(r, stream, cids, rate)
    statuses = await asyncio.gather(*tasks)
    lat_ms = [(done[c] - published[c]) * 1000 for c in cids]
    return {
        "rate": rate,
        "calls": n,
        "ok": sum(s == 200 for s in statuses),
        "p50_ms": percentile(lat_ms, 0.50),
        "p99_ms": percentile(lat_ms, 0.99),
        "max_ms": max(lat_ms),
        "achieved_rate": n / (time.perf_counter() - start),
    }


async def bench_capacity(
    session: aiohttp.ClientSession,
    r: aioredis.Redis,
    base: str,
    admin: str,
    stream: str,
    proc: psutil.Process,
    n: int,
) -> dict[str, Any]:
    before = proc.memory_info().rss
    cids = [f"cap-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    done: dict[str, float] = {}
    tasks = await hold(session, base, admin, cids, done)
    held_rss = proc.memory_info().rss
    for i in range(0, n, 500):
        async with r.pipeline(transaction=False) as pipe:
            for cid in cids[i : i + 500]:
                pipe.xadd(stream, {"correlation_id": cid, "type": "Done", "payload": "{}"})
            await pipe.execute()
    statuses = await asyncio.gather(*tasks)
    return {
        "held": n,
        "ok": sum(s == 200 for s in statuses),
        "rss_before_mib": before / 2**20,
        "rss_held_mib": held_rss / 2**20,
        "kib_per_waiting": (held_rss - before) / n / 1024,
    }


async def bench_cpu(
    session: aiohttp.ClientSession,
    r: aioredis.Redis,
    base: str,
    stream: str,
    proc: psutil.Process,
    n: int,
    concurrency: int = 50,
) -> dict[str, Any]:
    async def sync_call(cid: str) -> int:
        # The upstream publishes the completion before its 202: answered at once.
        async with session.post(
            f"{base}/jobs",
            data=b"{}",
            headers={"X-Correlation-ID": cid, "X-Bench-Complete": stream},
        ) as resp:
            await resp.read()
            return resp.status

    async def plain_call(cid: str) -> int:
        async with session.post(
            f"{base}/plain", data=b"{}", headers={"X-Correlation-ID": cid}
        ) as resp:
            await resp.read()
            return resp.status

    async def run(kind: str) -> tuple[float, float, int]:
        queue = [f"cpu-{kind}-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
        fn = sync_call if kind == "sync" else plain_call
        ok = 0

        async def worker() -> None:
            nonlocal ok
            while queue:
                status = await fn(queue.pop())
                ok += status == 200

        cpu0, t0 = proc.cpu_times(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu1, t1 = proc.cpu_times(), time.perf_counter()
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        return cpu / n * 1e6, n / (t1 - t0), ok

    plain_us, plain_rps, plain_ok = await run("plain")
    sync_us, sync_rps, sync_ok = await run("sync")
    return {
        "calls": n,
        "sync_cpu_us_per_call": sync_us,
        "passthrough_cpu_us_per_call": plain_us,
        "ratio": sync_us / plain_us,
        "sync_calls_per_s": sync_rps,
        "passthrough_calls_per_s": plain_rps,
        "ok": (sync_ok, plain_ok),
    }


async def bench_poll(
    session: aiohttp.ClientSession, base: str, upstream: str, n: int, done_after: float
) -> dict[str, Any]:
    async with session.get(f"{upstream}/stats") as resp:
        polls_before = (await resp.json())["polls"]

    async def call(i: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        async with session.post(
            f"{base}/pjobs",
            data=b"{}",
            headers={"X-Correlation-ID": f"poll-{i}-{uuid.uuid4().hex}"},
        ) as r:
            await r.read()
            return r.status, time.perf_counter() - t0 - done_after

    results = await asyncio.gather(*(call(i) for i in range(n)))
    async with session.get(f"{upstream}/stats") as resp:
        polls = (await resp.json())["polls"] - polls_before
    extra_ms = [max(0.0, e) * 1000 for _, e in results]
    return {
        "calls": n,
        "ok": sum(s == 200 for s, _ in results),
        "done_after_ms": done_after * 1000,
        "extra_p50_ms": percentile(extra_ms, 0.5),
        "extra_p99_ms": percentile(extra_ms, 0.99),
        "polls_per_call": polls / n,
    }


async def run(args: argparse.Namespace) -> None:
    limit = raise_open_files_limit()
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    own: RedisServer | None = None
    if not answers(redis_url):
        own = RedisServer().start()
        redis_url = own.url
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    stream = f"{prefix}:events"
    port, admin_port, up_port = free_port(), free_port(), free_port()
    base, admin, upstream = (f"http://127.0.0.1:{p}" for p in (port, admin_port, up_port))
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    config = tmp / "sidecar.yaml"
    sidecar_config(
        config,
        port=port,
        admin=admin_port,
        upstream=up_port,
        redis_url=redis_url,
        prefix=prefix,
        stream=stream,
        max_connections=args.max_connections,
    )
    r = aioredis.Redis.from_url(redis_url)
    try:
        with processes() as procs:
            procs.append(
                spawn(
                    [
                        sys.executable,
                        "-m",
                        "bench.sync_upstream",
                        "--redis-url",
                        redis_url,
                        "--port",
                        str(up_port),
                        "--done-after",
                        str(args.poll_done_after),
                    ],
                    cwd=ROOT,
                )
            )
            log = (tmp / "sidecar.log").open("wb")
            procs.append(
                spawn(
                    [sys.executable, "-m", "sidecar.cli", "run", "-c", str(config)],
                    cwd=ROOT,
                    stderr=log,
                    env={**os.environ, "SIDECAR_CONFIG": str(config)},
                )
            )
            await wait_http(f"{upstream}/stats")
            await wait_http(f"{admin}/readyz")
            proc = psutil.Process(procs[1].pid)
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=300)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                print(
                    f"# machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
                    f"open-files limit {limit}"
                )
                results: dict[str, Any] = {}
                results["cpu"] = await bench_cpu(session, r, base, stream, proc, args.cpu_calls)
                print("cpu", results["cpu"], flush=True)
                for rate in args.rates:
                    key = f"latency@{rate}"
                    results[key] = await bench_latency(
                        session, r, base, admin, stream, rate, args.seconds
                    )
                    print(key, results[key], flush=True)
                results["capacity"] = await bench_capacity(
                    session, r, base, admin, stream, proc, args.hold
                )
                print("capacity", results["capacity"], flush=True)
                results["poll"] = await bench_poll(
                    session, base, upstream, args.poll_calls, args.poll_done_after
                )
                print("poll", results["poll"], flush=True)
            print_table(results)
    finally:
        keys = [k async for k in r.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await r.delete(*keys)
        await r.aclose()
        if own is not None:
            own.close()


def print_table(results: dict[str, Any]) -> None:
    print("\n| measure | value |\n|---|---|")
    for key, value in results.items():
        if key.startswith("latency@"):
            print(
                f"| event→answer at {value['rate']}/s ({value['calls']} calls) | "
                f"p50 {value['p50_ms']:.2f} ms, p99 {value['p99_ms']:.2f} ms, "
                f"max {value['max_ms']:.1f} ms |"
            )
    cap = results["capacity"]
    print(
        f"| {cap['held']} waiting requests in one process | RSS {cap['rss_before_mib']:.0f} → "
        f"{cap['rss_held_mib']:.0f} MiB, {cap['kib_per_waiting']:.1f} KiB per waiting request |"
    )
    cpu = results["cpu"]
    print(
        f"| sidecar CPU per call | sync {cpu['sync_cpu_us_per_call']:.0f} µs, pass-through "
        f"{cpu['passthrough_cpu_us_per_call']:.0f} µs (ratio {cpu['ratio']:.2f}) |"
    )
    poll = results["poll"]
    print(
        f"| poll mode (default 250ms→2s, done after {poll['done_after_ms']:.0f} ms) | extra "
        f"p50 {poll['extra_p50_ms']:.0f} ms, p99 {poll['extra_p99_ms']:.0f} ms; "
        f"{poll['polls_per_call']:.2f} polls per call |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seconds", type=float, default=3.0, help="publishing time per rate")
    parser.add_argument("--hold", type=int, default=10_000, help="waiting requests to hold")
    parser.add_argument("--cpu-calls", type=int, default=3000)
    parser.add_argument("--poll-calls", type=int, default=200)
    parser.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        help="the sidecar's upstream pool (proxy.max_connections)",
    )
    parser.add_argument("--poll-done-after", type=float, default=0.3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
