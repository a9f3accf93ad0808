"""Pass-through: req/s and CPU per request of a path no route names, through each proxy in turn,
one process pinned to a core of its own (`proxy_bench`'s first phase; the front alone with
`python -m bench.passthrough`).

    upstream   the upstream alone (not the limit)
    sidecar    the sidecar (`sidecar run`)
    minimal    the minimal aiohttp proxy (bench/minimal_proxy.py)
    nginx      nginx alone, one worker, a plain `proxy_pass` with keep-alive
    front      nginx, one worker, running what `sidecar export nginx` writes for the sidecar's
               config, the sidecar beside it (on the load core: idle, the front never sends it
               a pass-through call; its CPU and its counters over the load are kept to show so)

`python -m bench.passthrough` measures nginx alone and the front only, side by side in each of
`--runs` runs, and writes docs/bench/front-<label>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
from typing import Any

import aiohttp

from devtools.redis_server import free_port

from . import loadgen, nginx
from .harness import ROOT, cpu_seconds, pinned, python_command, spawn, stop_process, wait_http
from .proxy_rig import DOCS, Env, Sidecar, environment, running

SATURATED = 0.9  # a proxy below this share of its core was held back by the load side
ATTEMPTS = 3  # loads per proxy at most, while it stays below SATURATED


async def measure(env: Env, url: str, pid: int | None, seconds: float) -> dict[str, Any]:
    """Warm up 1 s, then a closed-loop load of `seconds`; the proxy's CPU per request.

    Throughput compares proxies only while each keeps its core busy: on this shared machine the
    load side is sometimes slowed for seconds, and the proxy then idles. So a load that left the
    proxy below `SATURATED` is repeated (up to `ATTEMPTS` in all) and the busiest kept.
    """
    await loadgen.closed_loop(url, connections=50, seconds=1, cores=env.load_cores, workdir=env.tmp)
    best: dict[str, Any] = {}
    for attempt in range(1, ATTEMPTS + 1):
        cpu0 = cpu_seconds(pid) if pid else 0.0
        t0 = time.perf_counter()
        result = await loadgen.closed_loop(
            url, connections=50, seconds=seconds, cores=env.load_cores, workdir=env.tmp
        )
        wall = time.perf_counter() - t0
        out: dict[str, Any] = result.as_dict()
        out["attempts"] = attempt
        if not pid:
            return out
        cpu = cpu_seconds(pid) - cpu0
        out["cpu_us_per_request"] = cpu / max(1, result.requests) * 1e6
        out["cpu_utilisation"] = cpu / wall  # 1.0 = one core busy all the time
        if not best or out["cpu_utilisation"] > best["cpu_utilisation"]:
            best = out
        if out["cpu_utilisation"] >= SATURATED:
            break
    best["attempts"] = attempt
    return best


async def bench_passthrough(
    env: Env, procs: list[subprocess.Popen[bytes]], seconds: float
) -> dict[str, Any]:
    """req/s and CPU per request: upstream alone, sidecar, minimal proxy, nginx, the front."""
    rows: dict[str, Any] = {}
    rows["upstream"] = await measure(env, f"{env.upstream}/pass", None, seconds)
    print("  upstream alone", brief(rows["upstream"]), flush=True)
    async with running(Sidecar(env, env.proxy_cores, env.optional_keys.get("clients", ""))) as sc:
        rows["sidecar"] = await measure(env, f"{sc.base}/pass", sc.pid, seconds)
    print("  sidecar", brief(rows["sidecar"]), flush=True)
    port = free_port()
    command = python_command(
        "-m", "bench.minimal_proxy", "--port", str(port), "--upstream", env.upstream
    )
    with (env.tmp / "minimal-proxy.log").open("wb") as log:  # clients hanging up are logged
        minimal = spawn(pinned(command, env.proxy_cores), cwd=ROOT, stderr=log)
    try:
        await wait_http(f"http://127.0.0.1:{port}/pass")
        rows["minimal"] = await measure(env, f"http://127.0.0.1:{port}/pass", minimal.pid, seconds)
    finally:
        stop_process(minimal)
    print("  minimal proxy", brief(rows["minimal"]), flush=True)
    if nginx.binary():
        rows["nginx"] = await bench_nginx(env, seconds)
        print("  nginx", brief(rows["nginx"]), flush=True)
        rows["front"] = await bench_front(env, seconds)
        print("  nginx front", brief(rows["front"]), _front_extra(rows["front"]), flush=True)
    else:
        print("  nginx is not installed: its rows are left out", flush=True)
    return rows


async def bench_nginx(env: Env, seconds: float) -> dict[str, Any]:
    """nginx alone as the reverse proxy (bench/nginx.py's `proxy_pass`)."""
    port = free_port()
    config = nginx.write_config(
        env.tmp / f"nginx-proxy-{port}", port=port, upstream=env.upstream_port, nofile=env.fd_limit
    )
    proxy = spawn(pinned(nginx.command(config), env.proxy_cores))
    try:
        await wait_http(f"http://127.0.0.1:{port}/pass")
        return await measure(env, f"http://127.0.0.1:{port}/pass", proxy.pid, seconds)
    finally:
        stop_process(proxy)


async def bench_front(env: Env, seconds: float) -> dict[str, Any]:
    """nginx running the front `sidecar export nginx` writes for the sidecar's config: the
    pass-through path measured as nginx alone is; the sidecar's CPU and counted calls over the
    load (both ~0: it is never sent one), and one synchronised call through the front."""
    async with running(Sidecar(env, env.load_cores, env.optional_keys.get("clients", ""))) as sc:
        port = free_port()
        directory = env.tmp / f"nginx-front-{port}"
        directory.mkdir()
        exported = directory / "exported.conf"
        export = python_command(
            "-m", "sidecar.cli", "export", "nginx", "-c", str(sc.config), "-o", str(exported),
            "--listen", f"127.0.0.1:{port}", "--sidecar", f"127.0.0.1:{sc.port}",
        )  # fmt: skip
        await asyncio.to_thread(
            subprocess.run, export, cwd=ROOT, check=True, capture_output=True, timeout=60
        )
        config = nginx.write_front(directory, exported.read_text(), nofile=env.fd_limit)
        front = spawn(pinned(nginx.command(config), env.proxy_cores))
        base = f"http://127.0.0.1:{port}"
        try:
            await wait_http(f"{base}/pass")
            async with aiohttp.ClientSession() as session:
                calls0, sidecar_cpu0 = await sidecar_calls(session, sc), cpu_seconds(sc.pid)
                row = await measure(env, f"{base}/pass", front.pid, seconds)
                row["sidecar_cpu_s"] = cpu_seconds(sc.pid) - sidecar_cpu0
                row["sidecar_calls"] = await sidecar_calls(session, sc) - calls0
                row["synchronised_via_front"] = await synchronised_call(session, base)
        finally:
            stop_process(front)
    return row


async def sidecar_calls(session: aiohttp.ClientSession, sc: Sidecar) -> float:
    """Every call the sidecar has counted (`sidecar_requests_total`, all routes and outcomes)."""
    async with session.get(f"{sc.admin}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("sidecar_requests_total{")
    )


async def synchronised_call(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """POST /jobs through the front with `Prefer: respond-async`: the sidecar's 202 (it says
    `Preference-Applied`), proof that the synchronised route reaches it."""
    async with session.post(f"{base}/jobs", data=b"{}", headers={"Prefer": "respond-async"}) as r:
        await r.read()
        return {"status": r.status, "preference_applied": r.headers.get("Preference-Applied")}


def brief(row: dict[str, Any]) -> str:
    """One row's figures in a line."""
    cpu = f", {row['cpu_us_per_request']:.1f} µs CPU/req" if "cpu_us_per_request" in row else ""
    util = f", {row['cpu_utilisation']:.0%} of a core" if "cpu_utilisation" in row else ""
    return f"{row['rps']:,.0f} req/s ({row['errors']} errors){cpu}{util}"


def _front_extra(row: dict[str, Any]) -> str:
    sync = row["synchronised_via_front"]
    return (
        f"; sidecar meanwhile: {row['sidecar_calls']:.0f} calls, {row['sidecar_cpu_s'] * 1000:.0f}"
        f" ms CPU; POST /jobs through it: {sync['status']} ({sync['preference_applied']})"
    )


def front_ratios(rows: dict[str, Any]) -> dict[str, Any]:
    """The front against nginx alone: req/s (None unless both kept their core busy) and CPU per
    request (nginx's µs / the front's: what the req/s ratio is when both are CPU-bound)."""
    front, alone = rows.get("front"), rows.get("nginx")
    if not front or not alone:
        return {}
    busy = min(front["cpu_utilisation"], alone["cpu_utilisation"]) >= SATURATED
    return {
        "rps": front["rps"] / alone["rps"] if busy else None,
        "rps_raw": front["rps"] / alone["rps"],
        "cpu": alone["cpu_us_per_request"] / front["cpu_us_per_request"],
    }


async def front_only(args: argparse.Namespace) -> int:
    """nginx alone and the front, side by side in each of `--runs` runs."""
    from .proxy_bench import machine

    runs = []
    for index in range(args.runs):
        async with environment(args) as (env, _):
            print(f"# run {index + 1}/{args.runs}: proxies on {env.proxy_cores}", flush=True)
            rows = {"nginx": await bench_nginx(env, args.seconds)}
            print("  nginx", brief(rows["nginx"]), flush=True)
            rows["front"] = await bench_front(env, args.seconds)
            print("  nginx front", brief(rows["front"]), _front_extra(rows["front"]), flush=True)
            runs.append({"passthrough": rows, "front_vs_nginx": front_ratios(rows)})
    print("\n| run | nginx alone | nginx front | req/s ratio | CPU ratio (nginx µs / front µs) |")
    print("|---|---|---|---|---|")
    for i, run in enumerate(runs, 1):
        rows, ratio = run["passthrough"], run["front_vs_nginx"]
        rps = f"{ratio['rps']:.2f}x" if ratio["rps"] else f"({ratio['rps_raw']:.2f}x, not busy)"
        print(
            f"| {i} | {brief(rows['nginx'])} | {brief(rows['front'])} | {rps} | "
            f"{ratio['cpu']:.2f}x |"
        )
    cpu = [run["front_vs_nginx"]["cpu"] for run in runs]
    print(f"\nCPU ratio median {statistics.median(cpu):.2f}x (range {min(cpu):.2f}-{max(cpu):.2f})")
    path = DOCS / f"front-{args.label}.json"
    report = {"machine": machine(), "args": vars(args), "runs": runs}
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"results: {path.relative_to(ROOT)}")
    return 0


def main() -> None:
    """Command line: the front against nginx alone."""
    parser = argparse.ArgumentParser(description="nginx front vs nginx alone, pass-through")
    parser.add_argument("--runs", type=int, default=3, help="whole runs, for the spread")
    parser.add_argument("--seconds", type=float, default=5.0, help="each measured load")
    parser.add_argument("--label", default="latest", help="docs/bench/front-<label>.json")
    parser.add_argument("--redis-url", help="use this Redis (default: a throwaway one)")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(front_only(args)))


if __name__ == "__main__":
    main()
