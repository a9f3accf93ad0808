"""The proxy benchmark's rig: what its figures and its profiles (`proxy_bench`, `proxy_profile`)
both run on.

One run's environment (a temp dir, Redis, the upstream, the split of cores), the sidecar under
test as a child process with its config, and the synchronised-call loads both use: calls held
in the background until the sidecar holds them all, and event → answer latency at a rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from devtools.redis_server import RedisServer, answers, free_port

from . import loadgen, nginx
from .harness import (
    ROOT,
    STREAM_ROUTE,
    hold,
    latency_summary,
    pinned,
    publish_at_rate,
    python_command,
    raise_open_files_limit,
    spawn,
    split_cores,
    stop_process,
    wait_http,
    waiting_now,
)

DOCS = ROOT / "docs" / "bench"
SETTLE_S = 1.0  # after calls are held, before their completions: their tracking writes land
BATCH = 500  # intake: connections per wrk process
WINDOW = 1000  # intake: at most this many calls sent but not yet held (below the listen backlog)


# --------------------------------------------------------------------------------------------
# The environment of one run: ports, cores, Redis, the upstream
# --------------------------------------------------------------------------------------------


@dataclass
class Env:
    """What every phase of one run shares."""

    tmp: Path
    redis_url: str
    prefix: str
    proxy_cores: list[int]
    load_cores: list[int]
    fd_limit: int
    upstream_port: int = 0
    upstream_kind: str = ""
    optional_keys: dict[str, str] = field(default_factory=dict)  # accepted extra config

    @property
    def stream(self) -> str:
        """The completion stream of the sync route."""
        return f"{self.prefix}:events"

    @property
    def upstream(self) -> str:
        """The upstream's base URL."""
        return f"http://127.0.0.1:{self.upstream_port}"


def sidecar_yaml(env: Env, port: int, admin: int, extra: str = "") -> str:
    """The sidecar's config: one stream route on POST /jobs; every other path passes through."""
    return f"""
listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin}
upstream: {env.upstream}
redis_url: {env.redis_url}
key_prefix: {env.prefix}
log: {{level: warning}}
shutdown_grace: 1s
stream_reader: {{block: 1s, count: 1000}}
proxy: {{max_connections: 1000}}
{extra}
routes:
  - name: {STREAM_ROUTE}
    method: POST
    path: /jobs
    budget: 300s
    max_waiting: 100000
    wait:
      stream: {{key: {env.stream}, success: [Done], failure: [Failed]}}
"""


def probe_key(env: Env, snippet: str) -> tuple[bool, str]:
    """Does `sidecar check` accept the config with `snippet` added? (accepted, its message)."""
    path = env.tmp / f"probe-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(sidecar_yaml(env, free_port(), free_port(), snippet))
    done = subprocess.run(
        python_command("-m", "sidecar.cli", "check", "-c", str(path)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    message = (done.stderr or done.stdout).strip().splitlines()
    return done.returncode == 0, message[-1].strip() if message else ""


class Sidecar:
    """`sidecar run -c <config>` as a child process pinned to `cores`."""

    def __init__(
        self,
        env: Env,
        cores: list[int] | None,
        extra: str = "",
        cprofile: Path | None = None,
        gc_probe: list[str] | None = None,
        tree: Path | None = None,
    ) -> None:
        self.env, self.cores, self.cprofile, self.gc_probe = env, cores, cprofile, gc_probe
        self.tree = tree  # another checkout (with its own .venv) to run instead of this one
        self.port, self.admin_port = free_port(), free_port()
        self.config = env.tmp / f"sidecar-{self.port}.yaml"
        self.config.write_text(sidecar_yaml(env, self.port, self.admin_port, extra))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """The proxy listener."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        """The admin listener."""
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int:
        """The sidecar's process id."""
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> Sidecar:
        """Start and wait until /readyz answers."""
        log = (self.env.tmp / f"sidecar-{self.port}.log").open("wb")
        profiler = ("-m", "cProfile", "-o", str(self.cprofile)) if self.cprofile else ()
        main = ("bench.gc_probe", *self.gc_probe, "--") if self.gc_probe else ("sidecar.cli",)
        command = python_command(*profiler, "-m", *main, "run", "-c", str(self.config))
        if self.tree is not None:
            command[0] = str(self.tree / ".venv" / "bin" / "python")
        self.proc = spawn(pinned(command, self.cores), cwd=self.tree or ROOT, stderr=log)
        log.close()
        await wait_http(f"{self.admin}/readyz", timeout_s=30)
        return self

    def stop(self) -> None:
        """SIGTERM (the sidecar drains), SIGKILL after 30 s."""
        if self.proc is not None:
            stop_process(self.proc, 30)


@contextlib.asynccontextmanager
async def running(sidecar: Sidecar) -> Any:
    """A started sidecar, stopped on exit."""
    try:
        yield await sidecar.start()
    finally:
        sidecar.stop()


def start_upstream(env: Env, procs: list[subprocess.Popen[bytes]]) -> None:
    """nginx serving a 50-byte JSON (and 202s on /jobs) when installed, else the aiohttp one."""
    env.upstream_port = free_port()
    if nginx.binary():
        config = nginx.write_config(env.tmp / "nginx-upstream", port=env.upstream_port)
        procs.append(spawn(pinned(nginx.command(config), env.load_cores)))
        env.upstream_kind = "nginx (1 worker, `return 200` of a 50-byte JSON)"
    else:
        command = python_command("-m", "bench.sync_upstream", "--port", str(env.upstream_port))
        procs.append(spawn(pinned(command, env.load_cores), cwd=ROOT))
        env.upstream_kind = "aiohttp (bench/sync_upstream.py, 50-byte JSON)"


@contextlib.asynccontextmanager
async def environment(args: argparse.Namespace) -> Any:
    """Redis, the upstream, a temp dir and the core split; all stopped and deleted on exit."""
    proxy_cores, load_cores = split_cores()
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, load_cores)  # this script, Redis and the upstream stay off the proxy's
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-proxy-bench-"))
    own: RedisServer | None = None
    redis_url = args.redis_url
    if redis_url is None or not answers(redis_url):
        own = RedisServer().start()
        redis_url = own.url
    env = Env(
        tmp=tmp,
        redis_url=redis_url,
        prefix=f"pbench-{uuid.uuid4().hex[:8]}",
        proxy_cores=proxy_cores,
        load_cores=load_cores,
        fd_limit=raise_open_files_limit(),
    )
    r = aioredis.Redis.from_url(redis_url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        start_upstream(env, procs)
        await wait_http(f"{env.upstream}/pass")
        # A connection cap, when the sidecar has one, must not be what is measured: where it
        # derives its cap from the open-files limit (`auto`, the default) the defaults are run,
        # else the cap is set to the limit.
        auto, _ = probe_key(env, "clients: {max_connections: auto}")
        accepted, _ = probe_key(env, f"clients: {{max_connections: {env.fd_limit}}}")
        if accepted and not auto:
            env.optional_keys["clients"] = f"clients: {{max_connections: {env.fd_limit}}}"
        yield env, r
    finally:
        for proc in procs:
            stop_process(proc)
        keys = [k async for k in r.scan_iter(match=f"{env.prefix}*", count=1000)]
        if keys:
            await r.delete(*keys)
        await r.aclose()
        if own is not None:
            own.close()
        shutil.rmtree(tmp, ignore_errors=True)
        os.sched_setaffinity(0, affinity)


# --------------------------------------------------------------------------------------------
# Synchronised calls: held in the background, answered at a rate
# --------------------------------------------------------------------------------------------


async def until_held(
    session: aiohttp.ClientSession,
    sc: Sidecar,
    target: float,
    timeout_s: float,
    interval_s: float = 0.1,
) -> tuple[list[tuple[float, float]], bool]:
    """Poll the held-calls gauge until `target`; the (seconds, held) samples and whether reached."""
    start = time.perf_counter()
    samples: list[tuple[float, float]] = []
    while time.perf_counter() - start < timeout_s:
        held = await waiting_now(session, sc.admin)
        samples.append((time.perf_counter() - start, held))
        if held >= target:
            return samples, True
        await asyncio.sleep(interval_s)
    return samples, False


async def until_held_zero(
    session: aiohttp.ClientSession, sc: Sidecar, timeout_s: float = 60
) -> None:
    """Until no call is held (after the background callers went away)."""
    deadline = time.monotonic() + timeout_s
    # The gauge lives in another process: polling it is the only way.
    while time.monotonic() < deadline and await waiting_now(session, sc.admin) > 0:  # noqa: ASYNC110
        await asyncio.sleep(0.2)


async def latency_point(
    session: aiohttp.ClientSession,
    r: aioredis.Redis,
    sc: Sidecar,
    env: Env,
    baseline: float,
    calls: int,
    rate: float,
) -> dict[str, Any]:
    """Hold `calls` more calls (beside `baseline` held), XADD their completions at `rate`/s."""
    cids = [f"lat-{uuid.uuid4().hex[:12]}" for _ in range(calls)]
    done: dict[str, float] = {}
    tasks = await hold(session, sc.base, sc.admin, cids, done, baseline=baseline)
    await asyncio.sleep(SETTLE_S)
    held = await waiting_now(session, sc.admin)
    published = await publish_at_rate(r, env.stream, cids, rate)
    statuses = await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "held_at_start": held,
        "baseline_held": baseline,
        "rate": rate,
        "calls": calls,
        "ok": sum(s == 200 for s in statuses),
        **latency_summary(published, done),
    }


@dataclass
class Background:
    """Held calls nobody completes: `wrk` POSTs, or aiohttp calls from this process."""

    kind: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    scrapes: int = 0
    outputs: list[Path] = field(default_factory=list)

    def answered_early(self) -> dict[str, int]:
        """After `close()`: what the wrk processes saw (an answer to a held call is a failure)."""
        totals: dict[str, int] = {}
        for path in self.outputs:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("WRKJSON "):
                    data = json.loads(line[len("WRKJSON ") :])
                    for key in ("requests", "connect", "read", "write", "status", "timeout"):
                        totals[key] = totals.get(key, 0) + int(data[key])
        return totals

    async def close(self) -> None:
        """Hang up every call (the sidecar sees its clients go)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def open_background(
    env: Env, sc: Sidecar, session: aiohttp.ClientSession, n: int, timeout_s: float = 180
) -> Background:
    """Open `n` held calls (the sidecar mints their ids), `BATCH` connections at a time, keeping
    at most `WINDOW` calls sent but not yet held: the sidecar always has work queued, and the
    listen backlog never overflows (an overflow costs SYN retransmits, i.e. idle seconds)."""
    use_wrk = loadgen.have_wrk()
    kind = f"wrk -c{BATCH} batches" if use_wrk else f"aiohttp, {BATCH} at a time"
    background = Background(f"{kind}, at most {WINDOW} not yet held")

    async def call() -> None:
        async with session.post(f"{sc.base}/jobs", data=b"{}") as resp:
            await resp.read()

    started, baseline = 0, await waiting_now(session, sc.admin)
    deadline = time.monotonic() + timeout_s
    while started < n and time.monotonic() < deadline:
        held = await waiting_now(session, sc.admin) - baseline
        background.scrapes += 1
        if started - held >= WINDOW:
            await asyncio.sleep(0.02)
            continue
        k = min(BATCH, n - started)
        if use_wrk:
            cmd = loadgen.wrk_command(
                f"{sc.base}/jobs",
                connections=k,
                seconds=600,
                cores=env.load_cores,
                workdir=env.tmp,
                post=True,
            )
            with (env.tmp / f"intake-wrk-{started}.out").open("wb") as out:
                background.procs.append(spawn(cmd, stdout=out, stderr=subprocess.STDOUT))
            background.outputs.append(env.tmp / f"intake-wrk-{started}.out")
        else:
            background.tasks += [asyncio.create_task(call()) for _ in range(k)]
        started += k
    return background
