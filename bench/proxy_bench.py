"""Performance benchmark of the proxy (run: `make bench-proxy`, or
`.venv/bin/python -m bench.proxy_bench`).

All on 127.0.0.1, in one run so the figures compare side by side, repeated `--runs` times (each
run starts everything afresh) to show the spread:

1. pass-through (`bench/passthrough.py`): req/s of a path no route names, through the sidecar
   (`sidecar run`), the minimal aiohttp proxy (`bench/minimal_proxy.py`), nginx (1 worker) and
   nginx running the front `sidecar export nginx` writes (1 worker, the sidecar beside it),
   each one process pinned to a core of its own, with `wrk -t1 -c50` (or an aiohttp client) and
   the upstream on the other core(s); the upstream alone first, to show it is not the limit.
   CPU per request = the proxy process's user+sys time (psutil) / requests completed.
2. synchronised intake: N calls (default 9,000) on a stream route, 500 connections at a time
   (one `wrk -c500` POSTing each, else aiohttp), keeping at most 1,000 sent but not yet held;
   sidecar CPU from the first call until `sidecar_waiting_requests` reaches N (the 202 received
   and the waiter registered), per call, less the bench's own /metrics scrapes; calls held per
   second (N / that time); RSS growth per held call.
3. event → answer at 1,000 completions/s with those N still held (3,000 more calls with known
   ids, their completions XADDed at 1,000/s), and with only 1,000 held.
4. capacity: 15,000 and 30,000 calls held by a fresh sidecar, then completed; held with 0 errors
   or not (levels the open-files limit cannot fit are reported, not tried).
5. `workers: 2` vs `workers: 1` pass-through, when the sidecar accepts the `workers` key.

Writes `docs/bench/proxy-<label>.json` and `.png`, and prints the figures against the targets.
`--profile` instead records py-spy flame graphs of the pass-through (sidecar and minimal proxy)
and of the intake under load into `docs/bench/profiles/` (cProfile tables without py-spy), and
times the garbage collector under three settings (`bench/gc_probe.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from . import loadgen, nginx
from .harness import (
    ROOT,
    cpu_seconds,
    latency_summary,
    publish_all,
    publish_at_rate,
    rss_bytes,
    waiting_now,
)
from .passthrough import bench_passthrough, measure
from .proxy_rig import (
    BATCH,
    DOCS,
    SETTLE_S,
    WINDOW,
    Env,
    Sidecar,
    environment,
    latency_point,
    open_background,
    probe_key,
    running,
    until_held,
    until_held_zero,
)

FD_MARGIN = 1500  # descriptors a sidecar needs beside its client sockets (upstream pool, Redis)


# --------------------------------------------------------------------------------------------
# 2-3. synchronised intake, event → answer
# --------------------------------------------------------------------------------------------


async def scrape_cost_us(session: aiohttp.ClientSession, sc: Sidecar, n: int = 20) -> float:
    """Sidecar CPU per /metrics scrape (the bench's own polling), measured while idle."""
    cpu0 = cpu_seconds(sc.pid)
    for _ in range(n):
        await waiting_now(session, sc.admin)
    return (cpu_seconds(sc.pid) - cpu0) / n * 1e6


async def bench_sync(
    env: Env,
    r: aioredis.Redis,
    n: int,
    latency_calls: int,
    rate: float,
    tree: Path | None = None,
) -> dict[str, Any]:
    """Intake of `n` calls at once (CPU, rate, RSS), then event → answer with them held (by
    this checkout, or the one at `tree`)."""
    out: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=0)
    clients = env.optional_keys.get("clients", "")
    async with (
        running(Sidecar(env, env.proxy_cores, clients, tree=tree)) as sc,
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
    ):
        # A few calls first (lazy imports, the first pooled connections), not enough to
        # pre-grow the memory the intake measures.
        await latency_point(session, r, sc, env, 0, 50, rate)
        out["scrape_cpu_us"] = await scrape_cost_us(session, sc)
        rss0, cpu0 = rss_bytes(sc.pid), cpu_seconds(sc.pid)
        t0 = time.perf_counter()
        background = await open_background(env, sc, session, n)
        samples, reached = await until_held(session, sc, n, timeout_s=180, interval_s=0.02)
        cpu, wall = cpu_seconds(sc.pid) - cpu0, time.perf_counter() - t0
        rss = rss_bytes(sc.pid) - rss0
        scrapes = len(samples) + background.scrapes
        out["intake"] = {
            "generator": background.kind,
            "calls": n,
            "reached": reached,
            "held": samples[-1][1] if samples else 0,
            "seconds": wall,
            "cpu_us_per_call": cpu / n * 1e6,
            "cpu_us_per_call_net": (cpu - scrapes * out["scrape_cpu_us"] / 1e6) / n * 1e6,
            "scrapes": scrapes,
            "cpu_utilisation": cpu / wall,
            # From the first call to the last one held.
            "calls_per_s": n / wall,
            "rss_before_mib": rss0 / 2**20,
            "rss_held_mib": (rss0 + rss) / 2**20,
            "kib_per_held": rss / n / 1024,
            "timeline": samples,
        }
        out["intake"]["counters"] = await counters(session, sc)
        print("  intake:", _intake(out["intake"]), flush=True)
        try:
            if reached:
                out["latency_held"] = await latency_point(
                    session, r, sc, env, n, latency_calls, rate
                )
                print(f"  event→answer, {n:,} held:", _lat(out["latency_held"]), flush=True)
        finally:
            await background.close()
            out["intake"]["generator_saw"] = background.answered_early()
            await until_held_zero(session, sc)
        if not reached:
            print("  intake short:", out["intake"]["counters"], out["intake"]["generator_saw"])
        out["latency_low"] = await latency_point(session, r, sc, env, 0, 1000, rate)
        print("  event→answer, 1,000 held:", _lat(out["latency_low"]), flush=True)
    return out


def _lat(p: dict[str, Any]) -> str:
    return (
        f"p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, max {p['max_ms']:.1f} ms "
        f"({p['ok']}/{p['calls']} answered 200, {p['held_at_start']:.0f} held at the start)"
    )


def _intake(i: dict[str, Any]) -> str:
    return (
        f"{i['held']:.0f}/{i['calls']} held in {i['seconds']:.1f} s ({i['generator']}); "
        f"{i['cpu_us_per_call_net']:.0f} µs CPU per call (raw {i['cpu_us_per_call']:.0f}, "
        f"{i['scrapes']} scrapes); {i['calls_per_s']:,.0f} calls/s, sidecar at "
        f"{i['cpu_utilisation']:.0%} of a core; {i['kib_per_held']:.1f} KiB RSS per held call"
    )


COUNTERS = ("sidecar_requests_total", "sidecar_fallbacks_total", "sidecar_upstream_errors_total")


async def counters(session: aiohttp.ClientSession, sc: Sidecar) -> dict[str, float]:
    """The sidecar's request, fallback and upstream-error counters (to explain a shortfall)."""
    async with session.get(f"{sc.admin}/metrics") as resp:
        text = await resp.text()
    out = {}
    for line in text.splitlines():
        if line.startswith(COUNTERS):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# --------------------------------------------------------------------------------------------
# 4. capacity
# --------------------------------------------------------------------------------------------


async def bench_capacity(
    env: Env,
    r: aioredis.Redis,
    level: int,
    rate: float,
    latency_calls: int,
    tree: Path | None = None,
) -> dict[str, Any]:
    """A fresh sidecar holds `level` calls, answers `latency_calls` of them at `rate`/s, then the
    rest at once; 0 errors = every call held, then answered 200."""
    need = level + FD_MARGIN
    if need > env.fd_limit:
        return {
            "held": level,
            "skipped": f"open-files limit {env.fd_limit} < {need} ({level:,} client sockets + "
            f"{FD_MARGIN} for the upstream pool and Redis); the hard limit cannot be raised here",
        }
    sources = [f"127.0.0.{2 + i}" for i in range((level + 19_999) // 20_000)]
    timeout = aiohttp.ClientTimeout(total=900)
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, local_addr=(ip, 0)), timeout=timeout
        )
        for ip in sources
    ]
    cids = [f"cap-{level}-{i}-{uuid.uuid4().hex[:6]}" for i in range(level)]
    done: dict[str, float] = {}
    statuses: list[Any] = []
    out: dict[str, Any] = {"held": level}
    try:
        async with running(
            Sidecar(env, env.proxy_cores, env.optional_keys.get("clients", ""), tree=tree)
        ) as sc:
            rss0 = rss_bytes(sc.pid)

            async def call(i: int, cid: str) -> int:
                session = sessions[i % len(sessions)]
                async with session.post(
                    f"{sc.base}/jobs", data=b"{}", headers={"X-Correlation-ID": cid}
                ) as resp:
                    await resp.read()
                    done[cid] = time.perf_counter()
                    return resp.status

            t0 = time.perf_counter()
            tasks: list[asyncio.Task[int]] = []
            held, early, max_held = 0.0, 0, 0.0
            deadline = time.monotonic() + 300
            # As in the intake: BATCH calls at a time, at most WINDOW sent but not yet held, so
            # what is measured is holding, not a listen backlog flooded by `level` SYNs at once.
            while time.monotonic() < deadline:
                held = await waiting_now(sessions[0], sc.admin)
                max_held = max(max_held, held)
                early = sum(t.done() for t in tasks)  # answered before their event: failures
                if held >= level or (len(tasks) == level and held + early >= level):
                    break
                if len(tasks) < level and len(tasks) - held - early < WINDOW:
                    first_new = len(tasks)
                    for i in range(first_new, min(level, first_new + BATCH)):
                        tasks.append(asyncio.create_task(call(i, cids[i])))
                    continue
                await asyncio.sleep(0.05)
            reached = held >= level
            out.update(
                reached=reached,
                max_held=max_held,
                seconds_to_hold=time.perf_counter() - t0,
                kib_per_held=(rss_bytes(sc.pid) - rss0) / level / 1024,
                early=early,
            )
            await asyncio.sleep(SETTLE_S)
            if reached:
                first = cids[:latency_calls]
                published = await publish_at_rate(r, env.stream, first, rate)
                await publish_all(r, env.stream, cids[latency_calls:])
                out["latency"] = {
                    "held_at_start": level,
                    "rate": rate,
                    "calls": len(first),
                    **latency_summary(published, done),
                }
            else:  # complete what is held, so every call has an outcome to count
                await publish_all(r, env.stream, cids[: len(tasks)])
                for task in tasks:
                    if not task.done():
                        task.cancel()
            statuses = await asyncio.gather(*tasks, return_exceptions=True)
            statuses += ["never sent"] * (level - len(tasks))
    finally:
        for session in sessions:
            await session.close()
    out["ok"] = sum(s == 200 for s in statuses)
    out["errors"] = level - out["ok"]
    out["failures"] = dict(
        Counter(
            f"status {s}" if isinstance(s, int) else s if isinstance(s, str) else repr(s)[:80]
            for s in statuses
            if s != 200
        )
    )
    out["passed"] = bool(out.get("reached")) and out["errors"] == 0
    return out


# --------------------------------------------------------------------------------------------
# 5. workers
# --------------------------------------------------------------------------------------------


async def bench_workers(env: Env, seconds: float) -> dict[str, Any]:
    """Pass-through req/s with `workers: 2` against `workers: 1`, when the key exists."""
    accepted, message = probe_key(env, "workers: 2")
    if not accepted:
        return {"available": False, "reason": f"`sidecar check` refuses `workers: 2`: {message}"}
    cores = sorted(os.sched_getaffinity(0) | set(env.proxy_cores) | set(env.load_cores))
    spare = len(cores) >= 3
    worker_cores = cores[-2:] if spare else None
    rows: dict[str, Any] = {"available": True, "spare_cores": spare}
    for workers in (1, 2):
        extra = f"workers: {workers}\n{env.optional_keys.get('clients', '')}"
        async with running(Sidecar(env, worker_cores, extra)) as sc:
            rows[f"workers_{workers}"] = await measure(env, f"{sc.base}/pass", sc.pid, seconds)
    rows["ratio"] = rows["workers_2"]["rps"] / rows["workers_1"]["rps"]
    if not spare:
        rows["note"] = f"{len(cores)} cores: the load generator shares them; not meaningful"
    return rows


# --------------------------------------------------------------------------------------------
# One run, and the whole benchmark
# --------------------------------------------------------------------------------------------


async def one_run(args: argparse.Namespace, index: int) -> dict[str, Any]:
    """Every phase once, side by side."""
    async with environment(args) as (env, r):
        print(
            f"# run {index + 1}/{args.runs}: proxy under test on core(s) {env.proxy_cores}, "
            f"load generator + upstream + Redis + this script on {env.load_cores}; upstream "
            f"{env.upstream_kind}; load generator {'wrk' if loadgen.have_wrk() else 'aiohttp'}",
            flush=True,
        )
        run: dict[str, Any] = {
            "proxy_cores": env.proxy_cores,
            "load_cores": env.load_cores,
            "upstream": env.upstream_kind,
            "fd_limit": env.fd_limit,
            "optional_keys": env.optional_keys,
        }
        if not args.sync_only:
            print("pass-through:", flush=True)
            run["passthrough"] = await bench_passthrough(env, [], args.seconds)
        # With --other, both checkouts' synchronised calls, one after the other, in turns
        # (this one first in odd runs, the other first in even ones).
        sides: list[tuple[str, Path | None]] = [("this", None)]
        if args.other:
            sides.append(("other", Path(args.other)))
            if index % 2:
                sides.reverse()
        for side, tree in sides:
            into = run if side == "this" else run.setdefault("other", {"tree": str(tree)})
            print(f"synchronised calls ({tree or 'this checkout'}):", flush=True)
            into["sync"] = await bench_sync(
                env, r, args.intake, args.latency_calls, args.rate, tree
            )
            into["capacity"] = []
            for level in args.hold_levels:
                result = await bench_capacity(env, r, level, args.rate, args.latency_calls, tree)
                into["capacity"].append(result)
                print(f"  capacity {level:,}:", _capacity(result), flush=True)
        if args.sync_only:
            return run
        run["workers"] = await bench_workers(env, args.seconds)
        print("workers:", run["workers"].get("reason") or f"{run['workers']['ratio']:.2f}x")
        return run


def _capacity(c: dict[str, Any]) -> str:
    if "skipped" in c:
        return f"not tried: {c['skipped']}"
    lat = c.get("latency")
    text = f"{c['max_held']:.0f} held, {c['errors']} errors"
    if c.get("failures"):
        text += f" {c['failures']}"
    if lat:
        text += f"; event→answer p99 {lat['p99_ms']:.2f} ms at {lat['rate']:.0f}/s"
    return text + f"; {c['kib_per_held']:.1f} KiB per held call"


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    import aiohttp as _aiohttp

    versions = {"python": platform.python_version(), "aiohttp": _aiohttp.__version__}
    for tool, flag in (("nginx", "-v"), ("wrk", "-v")):
        if shutil.which(tool):
            done = subprocess.run(
                [tool, flag], capture_output=True, text=True, timeout=10, check=False
            )
            text = (done.stderr or done.stdout).strip().splitlines()
            versions[tool] = text[0] if text else "?"
    return {"cores": os.cpu_count(), "kernel": platform.release(), **versions}


async def run(args: argparse.Namespace) -> int:
    """The whole benchmark: `--runs` runs, then the table, JSON and chart."""
    from .proxy_report import print_table, write_chart, write_json

    runs = [await one_run(args, i) for i in range(args.runs)]
    report = {"machine": machine(), "args": vars(args) | {"out": None}, "runs": runs}
    json_path = write_json(report, DOCS / f"proxy-{args.label}.json")
    print_table(report)
    png = write_chart(report, DOCS / f"proxy-{args.label}.png")
    print(
        f"\nresults: {json_path.relative_to(ROOT)}"
        + (f", chart: {png.relative_to(ROOT)}" if png else "")
    )
    return 0


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="whole runs, for the spread")
    parser.add_argument("--seconds", type=float, default=5.0, help="each pass-through load")
    parser.add_argument("--intake", type=int, default=9000, help="calls opened at once, held")
    parser.add_argument("--latency-calls", type=int, default=3000, help="completions timed")
    parser.add_argument("--rate", type=float, default=1000.0, help="completions per second")
    parser.add_argument("--hold-levels", type=int, nargs="*", default=[15_000, 30_000])
    parser.add_argument("--label", default="latest", help="docs/bench/proxy-<label>.json/.png")
    parser.add_argument("--redis-url", help="use this Redis (default: a throwaway one, pinned)")
    parser.add_argument(
        "--profile", action="store_true", help="record flame graphs instead of figures"
    )
    parser.add_argument(
        "--native", action="store_true", help="with --profile: C frames too (py-spy --native)"
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--other",
        metavar="PATH",
        help="another checkout (with its own .venv): its synchronised rows too, in turns",
    )
    parser.add_argument(
        "--sync-only",
        action="store_true",
        help="only the synchronised calls and capacity (no pass-through, no workers)",
    )
    parser.add_argument(
        "--without",
        nargs="+",
        choices=("wrk", "nginx"),
        default=[],
        help="act as if these were not installed (to check the fallbacks)",
    )
    args = parser.parse_args()
    if args.other:
        args.other = str(Path(args.other).resolve())
    if "wrk" in args.without:
        loadgen.have_wrk = lambda: False
    if "nginx" in args.without:
        nginx.binary = lambda: None
    if args.quick:
        args.runs, args.seconds, args.intake, args.latency_calls = 1, 2.0, 2000, 1000
        args.hold_levels = [3000]
    if args.profile:
        from .proxy_profile import profile

        raise SystemExit(asyncio.run(profile(args)))
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
