"""Load generators for the proxy benchmark: `wrk` when installed, else an aiohttp client.

`wrk` is run with a Lua `done()` hook that prints its summary as one JSON line (requests,
duration, errors by kind, latency percentiles), so nothing depends on its text layout.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from .harness import percentile, pinned

_DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

_POST_LUA = """
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
"""


@dataclass
class LoadResult:
    """One load run: requests completed, errors, req/s and client-side latency."""

    generator: str
    requests: int
    seconds: float
    errors: int  # socket errors + non-2xx/3xx answers
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        """Requests completed per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        """JSON-ready, with req/s."""
        return {**asdict(self), "rps": self.rps}


def have_wrk() -> bool:
    """True when `wrk` is on PATH."""
    return shutil.which("wrk") is not None


def lua_script(workdir: Path, post: bool = False) -> Path:
    """A Lua script in `workdir`: the JSON summary, plus a POST of `{}` when `post`."""
    path = workdir / ("post.lua" if post else "get.lua")
    path.write_text((_POST_LUA if post else "") + _DONE_LUA)
    return path


def wrk_command(
    url: str,
    *,
    connections: int,
    seconds: float,
    cores: list[int] | None,
    workdir: Path,
    post: bool = False,
) -> list[str]:
    """The wrk command line (1 thread), pinned to `cores`."""
    return pinned(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "300s",
            "-s",
            str(lua_script(workdir, post)),
            url,
        ],
        cores,
    )


def parse_wrk(output: str) -> LoadResult:
    """The JSON line our Lua hook printed."""
    for line in output.splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line[len("WRKJSON ") :])
            errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
            return LoadResult(
                "wrk",
                data["requests"],
                data["duration_us"] / 1e6,
                errors,
                data["p50_us"] / 1000,
                data["p90_us"] / 1000,
                data["p99_us"] / 1000,
                data["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk printed no summary:\n{output[-2000:]}")


def run_wrk(
    url: str, *, connections: int, seconds: float, cores: list[int] | None, workdir: Path
) -> LoadResult:
    """A closed-loop GET load of `seconds` (bounded by wrk's own -d and a timeout here)."""
    cmd = wrk_command(url, connections=connections, seconds=seconds, cores=cores, workdir=workdir)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    return parse_wrk(done.stdout)


async def run_python(url: str, *, connections: int, seconds: float) -> LoadResult:
    """The same closed-loop GET load from this process (aiohttp), when wrk is missing."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        ok = resp.status < 400
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    ms = [x * 1000 for x in latencies]
    return LoadResult(
        "python",
        len(latencies),
        elapsed,
        errors,
        percentile(ms, 0.5),
        percentile(ms, 0.9),
        percentile(ms, 0.99),
        max(ms, default=float("nan")),
    )


async def closed_loop(
    url: str, *, connections: int, seconds: float, cores: list[int] | None, workdir: Path
) -> LoadResult:
    """wrk when installed (in a thread, so this loop keeps running), else the Python client."""
    if have_wrk():
        return await asyncio.to_thread(
            run_wrk, url, connections=connections, seconds=seconds, cores=cores, workdir=workdir
        )
    return await run_python(url, connections=connections, seconds=seconds)
