"""The upstream clients side by side: the sidecar's pool against an aiohttp `ClientSession`
(run: `.venv/bin/python -m bench.upstream_clients`, or `make bench-clients`).

The sidecar sends its calls, its polls and its GETs of a Location through one client, its own
keep-alive pool (`sidecar/http/pool.py`); polls used to go through a `ClientSession`. This
measures the two as clients alone, with nothing of the sidecar around them:

- the upstream: nginx (one worker) answering every GET with 200 and a ~200-byte JSON status
  document, or, without nginx, an aiohttp app serving the same document (this module with
  `--serve PORT`); its own process, on the other core(s);
- the client: this process, alone on the last core, on the event loop the sidecar runs on
  (uvloop when installed, as `event_loop: auto`); `--requests` GETs (20,000), `--concurrency`
  (50) at a time, each reading the whole body, after 500 GETs of warm-up on the same client;
- rounds interleaved, pool, session, pool, session, ... (`--rounds` of each, 3), so that the
  machine's slower and faster minutes hit both alike; a fresh client for every round;
- per round: GETs per second (wall clock) and CPU per GET (`time.process_time()`: this
  process's user+sys time; the upstream is another process), and how busy the client's core
  was; then median and range per client, and pool ÷ session per pair and of the medians.

`--instructions` also counts instructions per GET under `valgrind --tool=callgrind`, which
repeat within a fraction of a per cent where seconds do not: per client, one process makes
`--cg-requests` GETs (2,000) and another a third as many, each counted whole from start to exit;
instructions per GET = the difference ÷ the difference in GETs (start-up, imports, warm-up and
exit are the same in both and cancel out). Results go to `--out` (default
`docs/bench/upstream-clients.json`, the figures docs/benchmarks.md gives) and are printed as a
table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from devtools.redis_server import free_port
from sidecar.http.pool import UpstreamPool

from . import nginx
from .harness import ROOT, pinned, python_command, spawn, split_cores, stop_process, wait_http

# What a poll of a Location reads back: a JSON status document of ~200 bytes (no `'` in it: it
# goes into nginx's config as a quoted string).
STATUS_DOCUMENT = (
    '{"id":"0f8e2c4a-5b6d-4e7f-8a9b-1c2d3e4f5a6b","state":"running",'
    '"progress":{"done":37,"total":100},"created_at":"2025-01-01T12:00:00Z",'
    '"updated_at":"2025-01-01T12:00:07Z","links":{"self":"/jobs/0f8e2c4a"}}'
)
WARM_UP = 500
HEADERS = {"Accept": "application/json"}
CLIENTS = ("pool", "session")
TOTALS = re.compile(rb"^(?:totals|summary): (\d+)", re.MULTILINE)


# --------------------------------------------------------------------------------------------
# The two clients, each as the sidecar has (or had) it
# --------------------------------------------------------------------------------------------


def new_pool() -> UpstreamPool:
    """The sidecar's pool with its defaults (`proxy.max_connections` 1000, connect 5 s, read
    60 s)."""
    return UpstreamPool(limit=1000, connect_timeout_s=5.0, read_timeout_s=60.0)


def new_session() -> aiohttp.ClientSession:
    """The `ClientSession` the sidecar used to poll with, configured as it was."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=65, sock_connect=5, sock_read=60),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
    )


class Client:
    """One of the two clients, open for one round: `get()` is one GET read whole (its size)."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind, self.url = kind, URL(url)
        self.pool = new_pool() if kind == "pool" else None
        self.session = new_session() if kind == "session" else None

    async def get(self) -> int:
        """One GET of the status document, its body read whole; the body's size."""
        if self.pool is not None:
            async with await self.pool.request("GET", self.url, HEADERS) as response:
                body = await response.content.read()
        else:
            assert self.session is not None
            async with self.session.get(self.url, headers=HEADERS) as resp:
                body = await resp.read()
        if len(body) != len(STATUS_DOCUMENT):
            raise RuntimeError(f"{self.kind}: {len(body)} bytes, not the status document")
        return len(body)

    async def close(self) -> None:
        """Close every connection."""
        if self.pool is not None:
            await self.pool.close()
        if self.session is not None:
            await self.session.close()


async def load(get: Callable[[], Awaitable[int]], requests: int, concurrency: int) -> None:
    """`requests` GETs, `concurrency` at a time (each worker takes the next until none is left)."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await get()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def one_round(kind: str, url: str, requests: int, concurrency: int) -> dict[str, Any]:
    """A fresh client: warm-up, then `requests` GETs timed (wall clock and this process's CPU)."""
    client = Client(kind, url)
    try:
        await load(client.get, WARM_UP, concurrency)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await load(client.get, requests, concurrency)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    finally:
        await client.close()
    return {
        "client": kind,
        "requests": requests,
        "seconds": wall,
        "rps": requests / wall,
        "cpu_us_per_get": cpu / requests * 1e6,
        "cpu_utilisation": cpu / wall,
    }


# --------------------------------------------------------------------------------------------
# The upstream
# --------------------------------------------------------------------------------------------


def serve(port: int) -> None:
    """The aiohttp upstream (without nginx): every GET answered 200 with the status document."""
    body = STATUS_DOCUMENT.encode()

    async def status(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", status)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


def start_upstream(tmp: Path, cores: list[int]) -> tuple[subprocess.Popen[bytes], str, str]:
    """nginx when installed, else the aiohttp upstream: (process, URL of a status, its kind)."""
    port = free_port()
    if nginx.binary():
        config = nginx.write_config(tmp / "nginx", port=port, answer=STATUS_DOCUMENT)
        proc = spawn(pinned(nginx.command(config), cores))
        kind = f"nginx (1 worker, `return 200` of a {len(STATUS_DOCUMENT)}-byte JSON)"
    else:
        command = python_command("-m", "bench.upstream_clients", "--serve", str(port))
        proc = spawn(pinned(command, cores), cwd=ROOT)
        kind = f"aiohttp (bench/upstream_clients.py --serve, {len(STATUS_DOCUMENT)}-byte JSON)"
    return proc, f"http://127.0.0.1:{port}/jobs/0f8e2c4a", kind


# --------------------------------------------------------------------------------------------
# Instructions per GET (callgrind)
# --------------------------------------------------------------------------------------------


def count_instructions(kind: str, url: str, requests: int, concurrency: int, tmp: Path) -> int:
    """Instructions of one whole process (start to exit) that makes `requests` GETs with the
    `kind` client, under callgrind."""
    out = tmp / f"cg-{kind}-{requests}"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        *python_command(
            "-m",
            "bench.upstream_clients",
            "--only",
            kind,
            "--url",
            url,
            "--requests",
            str(requests),
            "--concurrency",
            str(concurrency),
        ),
    ]
    environ = os.environ | {"PYTHONHASHSEED": "0"}  # the same dict and set layouts every run
    done = subprocess.run(
        command, cwd=ROOT, env=environ, capture_output=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"callgrind run failed: {done.stderr.decode()[-800:]}")
    match = TOTALS.search(out.read_bytes())
    if match is None:
        raise RuntimeError(f"no total in {out}")
    return int(match.group(1))


def instructions(url: str, requests: int, concurrency: int, tmp: Path) -> dict[str, Any]:
    """Instructions per GET of each client: a whole process making `requests` GETs, less one
    making a third as many, ÷ the difference in GETs."""
    small = max(concurrency, requests // 3)
    out: dict[str, Any] = {"requests": [small, requests]}
    for kind in CLIENTS:
        counts = [count_instructions(kind, url, n, concurrency, tmp) for n in (small, requests)]
        out[kind] = {
            "instructions": counts,
            "per_get": (counts[1] - counts[0]) / (requests - small),
        }
        print(f"  {kind}: {out[kind]['per_get'] / 1e3:,.1f} k instructions per GET", flush=True)
    out["ratio"] = out["pool"]["per_get"] / out["session"]["per_get"]
    return out


# --------------------------------------------------------------------------------------------
# The whole benchmark
# --------------------------------------------------------------------------------------------


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """uvloop's loop when installed (the sidecar's `event_loop: auto`), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None, "asyncio"
    from importlib.metadata import version

    return uvloop.new_event_loop, f"uvloop {version('uvloop')}"


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range per client and figure, and pool ÷ session per pair and of the medians."""
    out: dict[str, Any] = {}
    for kind in CLIENTS:
        mine = [r for r in rounds if r["client"] == kind]
        out[kind] = {
            key: {
                "median": statistics.median(r[key] for r in mine),
                "min": min(r[key] for r in mine),
                "max": max(r[key] for r in mine),
            }
            for key in ("rps", "cpu_us_per_get", "cpu_utilisation")
        }
    pools = [r for r in rounds if r["client"] == "pool"]
    sessions = [r for r in rounds if r["client"] == "session"]
    for key in ("rps", "cpu_us_per_get"):
        out[f"ratio_{key}"] = {
            "medians": out["pool"][key]["median"] / out["session"][key]["median"],
            "per_pair": [p[key] / s[key] for p, s in zip(pools, sessions, strict=True)],
        }
    return out


def print_table(report: dict[str, Any]) -> None:
    """The figures as Markdown."""
    s = report["summary"]
    print(f"\n## Upstream clients: {report['requests']:,} GETs, {report['concurrency']} at a time")
    print(f"upstream: {report['upstream']}; loop: {report['loop']}; client on core(s) ", end="")
    print(f"{report['client_cores']}, upstream on {report['upstream_cores']}\n")
    print("| round | client | GETs/s | CPU per GET | client's core busy |")
    print("|---|---|---|---|---|")
    for r in report["rounds"]:
        print(
            f"| {r['round']} | {r['client']} | {r['rps']:,.0f} | {r['cpu_us_per_get']:.1f} µs "
            f"| {r['cpu_utilisation']:.0%} |"
        )
    print("\n| figure | pool | session | pool ÷ session (medians; per pair) |")
    print("|---|---|---|---|")
    for key, label, fmt in (
        ("rps", "GETs/s", "{:,.0f}"),
        ("cpu_us_per_get", "CPU per GET, µs", "{:.1f}"),
    ):
        cells = []
        for kind in CLIENTS:
            f = s[kind][key]
            cells.append(
                f"{fmt.format(f['median'])} ({fmt.format(f['min'])} to {fmt.format(f['max'])})"
            )
        ratio = s[f"ratio_{key}"]
        pairs = " / ".join(f"{x:.2f}" for x in ratio["per_pair"])
        print(f"| {label} | {cells[0]} | {cells[1]} | **{ratio['medians']:.2f}**; {pairs} |")
    cg = report.get("instructions")
    if cg:
        print(
            f"| instructions per GET (callgrind) | {cg['pool']['per_get'] / 1e3:,.1f} k "
            f"| {cg['session']['per_get'] / 1e3:,.1f} k | **{cg['ratio']:.2f}** |"
        )


async def rounds(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    """The interleaved rounds: pool, session, pool, session, ..."""
    out = []
    for i in range(args.rounds):
        for kind in CLIENTS:
            result = await one_round(kind, url, args.requests, args.concurrency)
            result["round"] = i + 1
            out.append(result)
            print(
                f"  round {i + 1}, {kind}: {result['rps']:,.0f} GETs/s, "
                f"{result['cpu_us_per_get']:.1f} µs CPU per GET, "
                f"core {result['cpu_utilisation']:.0%} busy",
                flush=True,
            )
    return out


def run(args: argparse.Namespace) -> int:
    """Start the upstream, run the rounds (and callgrind), write and print the figures."""
    client_cores, upstream_cores = split_cores()
    affinity = os.sched_getaffinity(0)
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-upstream-clients-"))
    upstream, url, upstream_kind = start_upstream(tmp, upstream_cores)
    factory, loop_name = loop_factory()
    try:
        os.sched_setaffinity(0, client_cores)  # the clients alone on their core
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(wait_http(url))
            print(
                f"# {args.rounds} rounds of each client, interleaved; {args.requests:,} GETs, "
                f"{args.concurrency} at a time; upstream {upstream_kind}; {loop_name}",
                flush=True,
            )
            measured = runner.run(rounds(args, url))
        report: dict[str, Any] = {
            "machine": {
                "cores": os.cpu_count(),
                "kernel": platform.release(),
                "python": platform.python_version(),
                "aiohttp": aiohttp.__version__,
            },
            "requests": args.requests,
            "concurrency": args.concurrency,
            "upstream": upstream_kind,
            "loop": loop_name,
            "client_cores": client_cores,
            "upstream_cores": upstream_cores,
            "rounds": measured,
            "summary": summary(measured),
        }
        if args.instructions and shutil.which("valgrind") is None:
            print("valgrind is not installed (apt-get install valgrind): no instruction counts")
        elif args.instructions:
            print(f"callgrind: {args.cg_requests:,} GETs per client (a few minutes)", flush=True)
            report["instructions"] = instructions(url, args.cg_requests, args.concurrency, tmp)
    finally:
        os.sched_setaffinity(0, affinity)
        stop_process(upstream)
        shutil.rmtree(tmp, ignore_errors=True)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"\nresults: {path}")
    return 0


def only(args: argparse.Namespace) -> int:
    """One client, `--requests` GETs of `--url` after the warm-up (what callgrind counts)."""
    factory, _ = loop_factory()

    async def go() -> None:
        client = Client(args.only, args.url)
        try:
            await load(client.get, WARM_UP, args.concurrency)
            await load(client.get, args.requests, args.concurrency)
        finally:
            await client.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(go())
    return 0


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="GETs per round")
    parser.add_argument("--concurrency", type=int, default=50, help="GETs at a time")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each client")
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions per GET (callgrind)"
    )
    parser.add_argument("--cg-requests", type=int, default=2000, help="GETs under callgrind")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2,000 GETs, 1 round")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "upstream-clients.json"))
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.only:
        raise SystemExit(only(args))
    if args.quick:
        args.requests, args.rounds, args.cg_requests = 2000, 1, 600
    raise SystemExit(run(args))


if __name__ == "__main__":
    main()
