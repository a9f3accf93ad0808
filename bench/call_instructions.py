"""Instructions per call under callgrind: a repeatable cost figure on a noisy machine (run:
`.venv/bin/python -m bench.call_instructions [--other PATH]`).

CPU time on a shared machine moves by 2x from one minute to the next; the number of
instructions a call executes does not. This runs the sidecar under `valgrind --tool=callgrind`
(about 50x slower while it counts; not counting until the loads start) and counts the
instructions of two loads, each after a warm-up:

1. pass-through: `--calls` GETs of a path no route names, 10 keep-alive connections;
2. synchronised calls: `--calls` POSTs on a stream route, each on a connection of its own (as
   the proxy benchmark's intake), 20 at a time; the upstream publishes each completion while
   the sidecar holds the call (before its 202), so a call is whole: arrival, forward, 202,
   tracking write (with the operation's first timeline events), completion event, 200 (and
   the operation's closing write);
3. idempotent calls: the same on a route with `idempotency: {}`, each call with a key of its
   own, so each also claims its Idempotency-Key (for checkouts that have it; "-" otherwise).

Instructions per call = the load's instructions (until a settling time after its last answer,
so that what the calls leave behind them, their closing writes and the webhook hand-off of their
completions, is counted with them however busy the machine is) minus the background's (the
stream reader, the webhook loops: counted alone, idle, for as long as the load took) / calls.
The upstream (aiohttp) and Redis run normally. `--other PATH` measures another checkout of the
project too (a `git worktree` of an earlier commit, say) in the same run, so two versions compare
as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from devtools.redis_server import RedisServer, answers, free_port

from .harness import STREAM_ROUTE, spawn, stop_process, wait_http

LOADS = ("passthrough", "synchronised", "idempotent")
IDEMPOTENT_ROUTE = """
  - name: bench-idempotent
    method: POST
    path: /pjobs
    budget: 300s
    idempotency: {{}}
    wait:
      stream: {{key: {prefix}:events, success: [Done], failure: [Failed]}}
"""
TOTALS = re.compile(rb"^(?:totals|summary): (\d+)", re.MULTILINE)
HERE = Path(__file__).resolve().parents[1]
SETTLE_S = 3.0  # at least this long after a load's last answer is still the load's


def idempotency_in(tree: Path) -> bool:
    """True when the checkout knows `idempotency:` on routes."""
    return (tree / "sidecar" / "sync" / "idempotency.py").exists()


def config(
    port: int, admin: int, upstream: str, redis_url: str, prefix: str, idempotent: bool
) -> str:
    """One stream route on POST /jobs (and, with `idempotent`, the same with idempotency on
    POST /pjobs); every other path passes through. Timeouts are generous: under callgrind the
    sidecar runs ~50x slower."""
    base = f"""
listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin}
upstream: {upstream}
redis_url: {redis_url}
key_prefix: {prefix}
log: {{level: warning}}
shutdown_grace: 1s
stream_reader: {{block: 1s, count: 1000}}
clients: {{header_timeout: 300s, body_timeout: 300s}}
proxy: {{connect_timeout: 60s, read_timeout: 300s}}
routes:
  - name: {STREAM_ROUTE}
    method: POST
    path: /jobs
    budget: 300s
    wait:
      stream: {{key: {prefix}:events, success: [Done], failure: [Failed]}}
"""
    return base + (IDEMPOTENT_ROUTE.format(prefix=prefix) if idempotent else "")


class Callgrind:
    """A sidecar of checkout `tree` under callgrind, collecting only when told."""

    def __init__(self, tree: Path, tmp: Path, upstream: str, redis_url: str) -> None:
        self.tree, self.tmp = tree, tmp
        self.prefix = f"bench-cg-{uuid.uuid4().hex[:8]}"
        self.port, self.admin_port = free_port(), free_port()
        self.config = tmp / f"sidecar-{self.port}.yaml"
        self.idempotent = idempotency_in(tree)
        self.config.write_text(
            config(self.port, self.admin_port, upstream, redis_url, self.prefix, self.idempotent)
        )
        self.out = tmp / f"cg-{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """The proxy listener."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start under callgrind and wait until ready (minutes: everything runs ~50x slower)."""
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.out}.%p",
            sys.executable,
            "-m",
            "sidecar.cli",
            "run",
            "-c",
            str(self.config),
        ]
        log = (self.tmp / f"sidecar-{self.port}.log").open("wb")
        self.proc = spawn(command, cwd=self.tree, stderr=log)
        log.close()
        await wait_http(f"http://127.0.0.1:{self.admin_port}/readyz", timeout_s=600)

    def control(self, *args: str) -> None:
        """`callgrind_control ARGS PID`."""
        assert self.proc is not None
        subprocess.run(
            ["callgrind_control", *args, str(self.proc.pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def dumped(self, keep: Path | None = None) -> int:
        """Instructions since the last zeroing: dump now and read the newest dump's total
        (the dump is copied to `keep`, for callgrind_annotate)."""
        before = set(self.tmp.glob(f"{self.out.name}.*"))
        self.control("--dump")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            new = set(self.tmp.glob(f"{self.out.name}.*")) - before
            for path in new:
                match = TOTALS.search(path.read_bytes())
                if match:
                    if keep:
                        keep.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, keep)
                    return int(match.group(1))
            time.sleep(0.2)
        raise RuntimeError("callgrind wrote no dump")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.proc is not None:
            stop_process(self.proc, 60)


async def passthrough(session: aiohttp.ClientSession, base: str, calls: int) -> None:
    """`calls` GETs of /pass, 10 at a time on keep-alive connections."""

    async def one(n: int) -> None:
        for _ in range(n):
            async with session.get(f"{base}/pass") as resp:
                await resp.read()
                assert resp.status == 200, resp.status

    await asyncio.gather(*(one(calls // 10 + (n < calls % 10)) for n in range(10)))


async def synchronised(base: str, stream: str, calls: int, path: str = "/jobs") -> None:
    """`calls` synchronised calls, 20 at a time, each on a connection of its own; on /pjobs
    each with an Idempotency-Key of its own."""
    connector = aiohttp.TCPConnector(force_close=True, limit=20)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> None:
            headers = {"X-Bench-Complete": stream}
            if path == "/pjobs":
                headers["Idempotency-Key"] = uuid.uuid4().hex
            async with session.post(f"{base}{path}", data=b"{}", headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, (resp.status, resp.headers)

        await asyncio.gather(*(one() for _ in range(calls)))


async def measure(tree: Path, args: argparse.Namespace, upstream: str, redis_url: str) -> Any:
    """The instructions per call of both loads, for one checkout."""
    with tempfile.TemporaryDirectory(prefix="cg-") as tmp:
        sc = Callgrind(tree, Path(tmp), upstream, redis_url)
        try:
            await sc.start()
            stream = f"{sc.prefix}:events"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
                await passthrough(session, sc.base, 50)  # warm-up
                await synchronised(sc.base, stream, 40)
                if sc.idempotent:
                    await synchronised(sc.base, stream, 40, "/pjobs")
                sc.control("--instr=on")
                result: dict[str, Any] = {"tree": str(tree)}
                loads = [
                    ("passthrough", lambda: passthrough(session, sc.base, args.calls)),
                    ("synchronised", lambda: synchronised(sc.base, stream, args.calls)),
                ]
                if sc.idempotent:
                    loads.append(
                        ("idempotent", lambda: synchronised(sc.base, stream, args.calls, "/pjobs"))
                    )
                for name, load in loads:
                    sc.control("--zero")
                    started = time.monotonic()
                    await load()
                    # What the calls left to do after their answers (closing writes, the
                    # webhook hand-off of their completions) is theirs: counted, by waiting
                    # for it inside the load's window (more when the machine is busy).
                    await asyncio.sleep(max(SETTLE_S, (time.monotonic() - started) * 0.25))
                    took = time.monotonic() - started
                    total = sc.dumped(
                        keep=args.keep and Path(args.keep) / f"{tree.name}-{name}.out"
                    )
                    sc.control("--zero")  # the background alone, as long as the load took
                    await asyncio.sleep(min(took, 30.0))
                    idle = sc.dumped() * took / min(took, 30.0)
                    result[name] = {
                        "calls": args.calls,
                        "seconds": round(took, 1),
                        "instructions": total,
                        "background": round(idle),
                        "per_call": (total - idle) / args.calls,
                    }
                    share = idle / total if total else 0.0
                    print(
                        f"  {tree}: {name}: {result[name]['per_call'] / 1e6:.3f} M instr/call "
                        f"(background {share:.0%} of the load's, subtracted; {took:.0f} s)"
                    )
                return result
        finally:
            sc.stop()
            r = aioredis.Redis.from_url(redis_url)
            async for key in r.scan_iter(match=f"{sc.prefix}*", count=1000):
                await r.delete(key)
            await r.aclose()


async def run(args: argparse.Namespace) -> int:
    """Both checkouts, then the table."""
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    server = None
    redis_url = args.redis_url
    if not answers(redis_url):
        server = RedisServer(port=free_port()).start()
        redis_url = server.url
    upstream_port = free_port()
    upstream = spawn(
        [
            sys.executable,
            "-m",
            "bench.sync_upstream",
            "--port",
            str(upstream_port),
            "--redis-url",
            redis_url,
        ],
        cwd=HERE,
    )
    try:
        await wait_http(f"http://127.0.0.1:{upstream_port}/stats", timeout_s=30)
        results = [
            await measure(tree, args, f"http://127.0.0.1:{upstream_port}", redis_url)
            for tree in args.trees
        ]
    finally:
        stop_process(upstream)
        if server is not None:
            server.close()
    print(
        "\n| checkout | pass-through, instructions per call | synchronised call | idempotent call |"
    )
    print("|---|---|---|---|")
    for r in results:
        cells = [f"{r[n]['per_call'] / 1e6:.3f} M" if n in r else "-" for n in LOADS]
        print(f"| {r['tree']} | " + " | ".join(cells) + " |")
    if len(results) == 2:
        ratios = [
            f"{results[0][n]['per_call'] / results[1][n]['per_call']:.3f}"
            if n in results[0] and n in results[1]
            else "-"
            for n in LOADS
        ]
        print("| this ÷ other | " + " | ".join(ratios) + " |")
    return 0


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="calls per load")
    parser.add_argument("--other", metavar="PATH", help="another checkout, measured the same way")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--keep", metavar="DIR", help="keep each load's callgrind dump here")
    args = parser.parse_args()
    # This checkout (bench/..), not harness.ROOT: a checkout is where its `sidecar/` lives.
    args.trees = [HERE] + ([Path(args.other).resolve()] if args.other else [])
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
