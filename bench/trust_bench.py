"""Before/after benchmark of the client, Redis, memory and tenant-fairness limits.

Run: `.venv/bin/python -m bench.trust_bench --before PATH --after PATH`

PATH is a checkout of the sidecar with its own `.venv` (`make install`); each version's sidecar
runs as a process, `PATH/.venv/bin/sidecar run -c <config>`, with a config written for that
version (the older one refuses the newer keys). Everything listens on 127.0.0.1; the async API
(`bench.sync_upstream`) and the webhook receivers run beside it (the receivers in this
process). Figures:

1. slow headers: one connection trickling its request line and headers one byte a second,
   never finishing them: how long until the sidecar closes it, and what it answered. Then
   1,100 such connections at once for a bounded time, the sidecar started with an open-files
   soft limit of 1,024 (the usual default) and with this process's (raised) one: connections
   the sidecar held, refused or answered, its file descriptors, a plain request meanwhile, and
   its log (lines per second, bytes).
2. Redis down: a sidecar with one stream route and webhooks on its own throwaway redis-server;
   the server is stopped for 20 s: log lines per second, `sidecar_redis_up` sampled every
   100 ms (flaps), then the server is started again: what the sidecar says.
3. 1 MB events: 300 completion events of 1 MB each, of a type the route lists, for ids nobody
   waits on: the sidecar's RSS before, at the peak, after reading them and after `recent_ttl`
   (throwaway redis-server: 300 MB per version is not for a shared Redis).
4. cross-tenant delivery: (a) tenant A's 40 endpoints never answer and A sends 200 test
   messages to them; tenant B's one fast endpoint: time from the XADD of B's completion to B's
   receiver (also without A's load); (b) 100,000 messages queued for A's one slow endpoint
   (50 ms) straight into the outbox with the version's own `Outbox.enqueue_many`
   (`bench/trust_enqueue.py`, run by that version's interpreter); B's delay again.

Figures 1 (single connection) and 2 run beside each other, as do both versions in 1 (single)
and 3; everything else runs alone, one version after the other. Every wait is capped, every
process started is stopped and every Redis key written (a fresh `key_prefix` per sidecar) is
deleted, on failure too. `--repeat N` runs it all N times; the results (each run, and the spread)
go to `--out` (docs/bench/trust.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import redis.asyncio as aioredis
import yaml
from aiohttp import web

from devtools.redis_server import RedisServer, answers, free_port

from .sync_bench import wait_http

ROOT = Path(__file__).resolve().parents[2]
ROUTE, EVENT = "trust-jobs", "trust.done"
TRICKLE = b"GET /jobs/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: trickle\r\nX-Trickle: "


# --- processes and configs ------------------------------------------------------------------


def raise_open_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


@dataclass(frozen=True)
class Version:
    """One checkout under test."""

    name: str
    root: Path

    @property
    def sidecar(self) -> Path:
        return self.root / ".venv" / "bin" / "sidecar"

    @property
    def python(self) -> Path:
        return self.root / ".venv" / "bin" / "python"

    @property
    def newer(self) -> bool:
        """True for a version that knows `clients:` (and the other new keys)."""
        reference = (self.root / "config" / "sidecar.yaml").read_text()
        return any(line.startswith("clients:") for line in reference.splitlines())


def config_for(
    version: Version,
    *,
    port: int,
    admin: int,
    upstream: int,
    prefix: str,
    redis_url: str | None = None,
    stream: str | None = None,
    log_level: str = "info",
    webhooks: dict[str, Any] | None = None,
    newer_webhooks: dict[str, Any] | None = None,
    clients: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A config the version accepts; the `newer_*`/`clients` keys only for the newer one."""
    cfg: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin}",
        "upstream": f"http://127.0.0.1:{upstream}",
        "key_prefix": prefix,
        "admin_token": f"op-{prefix}",
        "shutdown_grace": "2s",
        "log": {"level": log_level, "format": "json"},
    }
    if redis_url:
        cfg["redis_url"] = redis_url
    if stream:
        cfg["routes"] = [
            {
                "name": ROUTE,
                "method": "POST",
                "path": "/jobs",
                "budget": "10s",
                "wait": {"stream": {"key": stream, "success": ["Done"], "failure": ["Failed"]}},
                "webhook_events": {"success": EVENT, "failure": "trust.failed"},
            }
        ]
    hooks = {"allow_private_targets": True, **(webhooks or {})}
    if version.newer:
        hooks.update(newer_webhooks or {})
        if clients:
            cfg["clients"] = clients
    cfg["webhooks"] = hooks
    return cfg


def child_env(tmp: Path) -> dict[str, str]:
    """The environment of a sidecar: no SIDECAR_* overrides of ours, bytecode kept out of the
    checkout (it is read-only to this bench)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return env


class Sidecar:
    """One sidecar process of one version, its config and its log (stderr, JSON lines)."""

    def __init__(
        self, version: Version, tmp: Path, name: str, cfg: dict[str, Any], nofile: int | None = None
    ) -> None:
        self.version, self.tmp, self.name, self.cfg = version, tmp, name, cfg
        self.config_path = tmp / f"{name}.yaml"
        self.log_path = tmp / f"{name}.log"
        self.nofile = nofile
        self.extra_env: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin = "http://" + cfg["admin_listen"]
        self.base = "http://" + cfg["listen"]
        self.port = int(cfg["listen"].rsplit(":", 1)[1])

    def start(self) -> Sidecar:
        self.config_path.write_text(yaml.safe_dump(self.cfg, sort_keys=False))
        nofile = self.nofile

        def limit() -> None:
            if nofile is not None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(self.version.sidecar), "run", "-c", str(self.config_path)],
                cwd=self.tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**child_env(self.tmp), **self.extra_env},
                preexec_fn=limit,
            )
        return self

    @property
    def ps(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    async def up(self, path: str = "/readyz", timeout_s: float = 30.0) -> None:
        """Until `path` answers 200 (the process must still run)."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.admin + path) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name}: {path} never answered 200: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_lines(self, start: int = 0, end: int | None = None) -> list[bytes]:
        with self.log_path.open("rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(end - start)
        return [line for line in data.split(b"\n") if line.strip()]

    def log_tail(self, n: int = 2000) -> str:
        return (
            self.log_path.read_bytes()[-n:].decode(errors="replace")
            if self.log_path.exists()
            else ""
        )


@contextlib.contextmanager
def running(*sidecars: Sidecar) -> Iterator[tuple[Sidecar, ...]]:
    try:
        for s in sidecars:
            s.start()
        yield sidecars
    finally:
        for s in sidecars:
            s.stop()


def messages(lines: list[bytes], top: int = 5) -> list[tuple[str, int]]:
    """The most frequent log messages (JSON `message`, else the raw line's start)."""
    counts: Counter[str] = Counter()
    for line in lines:
        try:
            text = str(orjson.loads(line).get("message", ""))
        except orjson.JSONDecodeError:
            text = line[:80].decode(errors="replace")
        counts[text.split("\n", 1)[0][:100]] += 1
    return counts.most_common(top)


def log_stats(path: Path, start: int, end: int) -> dict[str, Any]:
    """Lines, top messages and accept() errors of a log slice, read as a stream (a flooded log
    is hundreds of MB)."""
    counts: Counter[str] = Counter()
    lines = accept_errors = 0
    with path.open("rb") as f:
        f.seek(start)
        remaining = end - start
        for line in f:
            if remaining <= 0:
                break
            remaining -= len(line)
            if not line.strip():
                continue
            lines += 1
            accept_errors += b"out of system resource" in line
            try:
                text = str(orjson.loads(line).get("message", ""))
            except orjson.JSONDecodeError:
                text = line[:80].decode(errors="replace")
            counts[text.split("\n", 1)[0][:100]] += 1
    return {"lines": lines, "top": counts.most_common(3), "accept_errors": accept_errors}


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def metric(values: dict[str, float], name: str, *label_parts: str) -> float | None:
    """Sum of the series of `name` whose labels contain every one of `label_parts`."""
    found = [
        v
        for k, v in values.items()
        if (k == name or k.startswith(name + "{")) and all(p in k for p in label_parts)
    ]
    return sum(found) if found else None


async def scrape(session: aiohttp.ClientSession, admin: str) -> dict[str, float]:
    async with session.get(admin + "/metrics", timeout=aiohttp.ClientTimeout(total=1)) as resp:
        return parse_metrics(await resp.text())


async def delete_prefix(r: aioredis.Redis, prefix: str) -> int:
    """Delete every key under `prefix:`; how many there were."""
    deleted = 0
    batch: list[bytes] = []
    async for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await r.unlink(*batch)
            batch = []
    if batch:
        deleted += await r.unlink(*batch)
    return deleted


async def wait_group(r: aioredis.Redis, stream: str, timeout_s: float = 20.0) -> None:
    """Until a consumer group (the webhook dispatcher's) reads `stream`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aioredis.ResponseError):
            if await r.xinfo_groups(stream):
                return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no consumer group on {stream}")


def new_prefix(tag: str) -> str:
    return f"trust-{tag}-{uuid.uuid4().hex[:8]}"


# --- 1. slow headers ---------------------------------------------------------------------------


def parse_answer(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {"status": None}
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    answer: dict[str, Any] = {
        "status": int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None,
        "content_type": headers.get("content-type"),
    }
    try:
        answer["body"] = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer["body"] = body[:300].decode(errors="replace")
    return answer


@dataclass
class Trickle:
    """One client connection sending its head one byte a second and never finishing it."""

    port: int
    opened: float = 0.0
    connected: bool = False
    connect_error: str | None = None
    closed_after: float | None = None
    received: bytearray = field(default_factory=bytearray)
    sent: int = 0

    async def run(self, seconds: float, connect_timeout: float = 10.0) -> Trickle:
        self.opened = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            self.connect_error = exc.__class__.__name__
            return self
        self.connected = True
        start = time.monotonic()
        closed = asyncio.Event()

        async def read() -> None:
            with contextlib.suppress(OSError):
                while chunk := await reader.read(65536):
                    self.received += chunk
            closed.set()

        reading = asyncio.create_task(read())
        head = TRICKLE + b"a" * 100_000
        try:
            while time.monotonic() - start < seconds and not closed.is_set():
                try:
                    writer.write(head[self.sent : self.sent + 1])
                    self.sent += 1
                    await writer.drain()
                except OSError:
                    await asyncio.wait_for(closed.wait(), 2.0)
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), 1.0)
            if closed.is_set():
                self.closed_after = time.monotonic() - start
        except TimeoutError:
            self.closed_after = time.monotonic() - start
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return self


async def slow_header_one(
    version: Version, tmp: Path, upstream: int, cap_s: float
) -> dict[str, Any]:
    cfg = config_for(
        version, port=free_port(), admin=free_port(), upstream=upstream, prefix=new_prefix("sh")
    )
    with running(Sidecar(version, tmp, f"{version.name}-slow1", cfg)) as (side,):
        await side.up("/healthz")
        t = await Trickle(side.port).run(cap_s)
        lines = side.log_lines()
    return {
        "closed_after_s": None if t.closed_after is None else round(t.closed_after, 1),
        "still_open_at_cap": t.closed_after is None,
        "cap_s": cap_s,
        "bytes_sent": t.sent,
        "answer": parse_answer(bytes(t.received)),
        "log_lines": len(lines),
        "config": cfg,
    }


async def slow_header_flood(
    version: Version,
    tmp: Path,
    upstream: int,
    n: int,
    seconds: float,
    nofile: int | None,
    keep: bool = False,
) -> dict[str, Any]:
    clients = {"max_connections": 1000}
    cfg = config_for(
        version,
        port=free_port(),
        admin=free_port(),
        upstream=upstream,
        prefix=new_prefix("fl"),
        clients=clients,
    )
    label = f"{version.name}-flood-{nofile or 'inherited'}"
    side = Sidecar(version, tmp, label, cfg, nofile=nofile)
    with running(side):
        await side.up("/healthz")
        await asyncio.sleep(1.0)
        ps = side.ps
        soft_limit = ps.rlimit(psutil.RLIMIT_NOFILE)[0]
        fds0 = ps.num_fds()
        log0 = side.log_size()
        trickles = [Trickle(side.port) for _ in range(n)]
        gate = asyncio.Semaphore(200)

        async def one(t: Trickle) -> None:
            async with gate:  # connects 200 at a time, all within about a second
                task = asyncio.create_task(t.run(seconds))
                await asyncio.sleep(0.005)
            await task

        samples: list[dict[str, float]] = []
        probes: list[dict[str, Any]] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                with contextlib.suppress(psutil.Error):
                    held = sum(
                        1
                        for c in ps.net_connections(kind="tcp")
                        if c.laddr and c.laddr.port == side.port and c.status == "ESTABLISHED"
                    )
                    samples.append({"t": time.monotonic() - t0, "fds": ps.num_fds(), "held": held})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

        async def probe() -> None:
            timeout = aiohttp.ClientTimeout(total=3)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 5.0)
                    if stop.is_set():
                        break
                    at = time.monotonic() - t0
                    try:
                        async with session.get(f"{side.base}/jobs/probe") as resp:
                            await resp.read()
                            probes.append({"t": round(at, 1), "status": resp.status})
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        probes.append({"t": round(at, 1), "error": exc.__class__.__name__})

        t0 = time.monotonic()
        helpers = [asyncio.create_task(sample()), asyncio.create_task(probe())]
        await asyncio.gather(*(one(t) for t in trickles))
        # The window is `seconds` even when the sidecar closed every trickle sooner: the plain
        # requests go on, showing whether the listener serves again.
        await asyncio.sleep(max(0.0, t0 + seconds - time.monotonic()))
        window = time.monotonic() - t0
        stop.set()
        await asyncio.gather(*helpers)
        log1 = side.log_size()
        log = await asyncio.to_thread(log_stats, side.log_path, log0, log1)
        values: dict[str, float] = {}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with aiohttp.ClientSession() as session:
                values = await scrape(session, side.admin)
        alive = side.proc is not None and side.proc.poll() is None
    if not keep:
        side.log_path.unlink(missing_ok=True)  # a flooded one is hundreds of MB
    outcome: Counter[str] = Counter()
    for t in trickles:
        if not t.connected:
            outcome[f"connect failed ({t.connect_error})"] += 1
        elif t.closed_after is None:
            outcome["open until the client stopped"] += 1
        elif t.received:
            outcome[f"answered {parse_answer(bytes(t.received))['status']} and closed"] += 1
        elif t.closed_after < 1.0:
            outcome["closed at once, no answer (refused)"] += 1
        else:
            outcome["closed later, no answer"] += 1
    closed_answered = [
        t.closed_after for t in trickles if t.closed_after is not None and t.received
    ]
    return {
        "connections": n,
        "seconds": round(window, 1),
        "sidecar_nofile_soft": soft_limit,
        "started_with_nofile": nofile or "inherited",
        "client_outcomes": dict(outcome),
        "answered_after_s_median": round(statistics.median(closed_answered), 1)
        if closed_answered
        else None,
        "sidecar_fds_idle": fds0,
        "sidecar_fds_peak": max((s["fds"] for s in samples), default=None),
        "sidecar_connections_held_peak": max((s["held"] for s in samples), default=None),
        "plain_requests_meanwhile": probes,
        "log_lines": log["lines"],
        "log_bytes": log1 - log0,
        "log_lines_per_s": round(log["lines"] / window, 1),
        "log_top": log["top"],
        "log_accept_errors": log["accept_errors"],
        "refused_total_metric": metric(values, "sidecar_client_connections_refused_total"),
        "header_timeouts_metric": metric(
            values, "sidecar_client_timeouts_total", 'phase="headers"'
        ),
        "sidecar_alive_at_end": alive,
        "config": cfg,
    }


# --- 2. Redis down -----------------------------------------------------------------------------


async def redis_down(version: Version, tmp: Path, outage_s: float) -> dict[str, Any]:
    server = RedisServer().start()
    prefix = new_prefix("rd")
    cfg = config_for(
        version,
        port=free_port(),
        admin=free_port(),
        upstream=9,
        prefix=prefix,
        redis_url=server.url,
        stream=f"{prefix}:events",
    )
    side = Sidecar(version, tmp, f"{version.name}-redisdown", cfg)
    try:
        with running(side):
            await side.up("/readyz")
            await asyncio.sleep(3.0)
            async with aiohttp.ClientSession() as session:
                before = metric(await scrape(session, side.admin), "sidecar_redis_up")
                log0 = side.log_size()
                server.stop()
                t0 = time.monotonic()
                samples: list[float | None] = []
                tick = t0
                while time.monotonic() - t0 < outage_s:
                    try:
                        samples.append(
                            metric(await scrape(session, side.admin), "sidecar_redis_up")
                        )
                    except (aiohttp.ClientError, TimeoutError):
                        samples.append(None)
                    tick += 0.1
                    await asyncio.sleep(max(0.0, tick - time.monotonic()))
                window = time.monotonic() - t0
                log1 = side.log_size()
                server.start()
                t1 = time.monotonic()
                ready_after = None
                after_samples: list[float | None] = []
                while time.monotonic() - t1 < 30:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(side.admin + "/readyz") as resp:
                            if resp.status == 200:
                                ready_after = time.monotonic() - t1
                                break
                    await asyncio.sleep(0.1)
                settle = time.monotonic() + 5.0
                while time.monotonic() < settle:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        after_samples.append(
                            metric(await scrape(session, side.admin), "sidecar_redis_up")
                        )
                    await asyncio.sleep(0.1)
                log2 = side.log_size()
    finally:
        with contextlib.suppress(Exception):
            r = aioredis.Redis.from_url(server.url)
            await delete_prefix(r, prefix)
            await r.aclose()
        server.close()
    down_lines = side.log_lines(log0, log1)
    back_lines = side.log_lines(log1, log2)
    seen = [s for s in samples if s is not None]
    flips = sum(1 for a, b in itertools.pairwise(seen) if a != b)

    def says_connected(lines: list[bytes]) -> int:
        return sum(b"connected" in line.lower() or b"answers" in line.lower() for line in lines)

    return {
        "outage_s": round(window, 1),
        "log_lines": len(down_lines),
        "log_lines_per_s": round(len(down_lines) / window, 1),
        "log_bytes": log1 - log0,
        "log_top": messages(down_lines, 4),
        "connected_lines_while_down": says_connected(down_lines),
        "redis_up_before": before,
        "redis_up_samples": len(samples),
        "redis_up_values_while_down": dict(Counter(str(s) for s in samples)),
        "redis_up_samples_at_1_while_down": sum(1 for s in seen if s == 1),
        "redis_up_changes_while_down": flips,
        "redis_up_absent_samples": sum(1 for s in samples if s is None),
        "ready_again_after_s": None if ready_after is None else round(ready_after, 2),
        "redis_up_after_restart": after_samples[-1] if after_samples else None,
        "log_lines_after_restart_5s": len(back_lines),
        "connected_lines_after_restart": says_connected(back_lines),
        "log_after_restart": messages(back_lines, 4),
        "config": cfg,
    }


# --- 3. RSS with 1 MB events ---------------------------------------------------------------


async def big_events(
    version: Version, tmp: Path, redis_url: str, events: int, ttl_wait_s: float
) -> dict[str, Any]:
    prefix = new_prefix("rss")
    stream = f"{prefix}:events"
    cfg = config_for(
        version,
        port=free_port(),
        admin=free_port(),
        upstream=9,
        prefix=prefix,
        redis_url=redis_url,
        stream=stream,
        log_level="warning",
    )
    side = Sidecar(version, tmp, f"{version.name}-rss", cfg)
    r = aioredis.Redis.from_url(redis_url)
    mib = 2**20
    try:
        with running(side):
            await side.up("/readyz")
            await wait_group(r, stream)
            await asyncio.sleep(3.0)
            ps = side.ps
            rss0 = ps.memory_info().rss
            peak = rss0
            stop = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not stop.is_set():
                    with contextlib.suppress(psutil.Error):
                        peak = max(peak, ps.memory_info().rss)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.2)

            sampler = asyncio.create_task(sample())
            data = orjson.dumps({"blob": "x" * mib}).decode()
            for i in range(events):
                await r.xadd(
                    stream,
                    {
                        "correlation_id": f"nobody-{i}-{uuid.uuid4().hex[:8]}",
                        "type": "Done",
                        "payload": data,
                    },
                )
            t_sent = time.monotonic()
            read = 0.0
            async with aiohttp.ClientSession() as session:
                while time.monotonic() - t_sent < 120:
                    values = await scrape(session, side.admin)
                    read = metric(values, "sidecar_stream_events_total", f'stream="{stream}"') or 0
                    if read >= events:
                        break
                    await asyncio.sleep(0.5)
                read_after = time.monotonic() - t_sent
                await asyncio.sleep(5.0)
                rss_read = ps.memory_info().rss
                cache = metric(await scrape(session, side.admin), "sidecar_stream_cache_bytes")
                await asyncio.sleep(max(0.0, ttl_wait_s - (time.monotonic() - t_sent)))
                rss_ttl = ps.memory_info().rss
                cache_ttl = metric(await scrape(session, side.admin), "sidecar_stream_cache_bytes")
            stop.set()
            await sampler
    finally:
        side.stop()
        await delete_prefix(r, prefix)
        await r.aclose()
    return {
        "events": events,
        "event_mib": 1,
        "events_read": read,
        "read_within_s": round(read_after, 1),
        "rss_before_mib": round(rss0 / mib),
        "rss_peak_mib": round(peak / mib),
        "rss_after_read_mib": round(rss_read / mib),
        "rss_after_recent_ttl_mib": round(rss_ttl / mib),
        "recent_ttl_wait_s": ttl_wait_s,
        "cache_bytes_metric_mib": None if cache is None else round(cache / mib, 1),
        "cache_bytes_metric_after_ttl_mib": None
        if cache_ttl is None
        else round(cache_ttl / mib, 1),
        "config": cfg,
    }


# --- 4. cross-tenant delivery --------------------------------------------------------------


@dataclass
class Receivers:
    """Webhook endpoints in this process: `hang` never answers (until `release`), `slow`
    answers after 50 ms, `fast` at once and notes when each correlation id arrived."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    hung: int = 0
    slow: int = 0
    arrivals: dict[str, float] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    runners: list[web.AppRunner] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    async def on_hang(self, request: web.Request) -> web.Response:
        self.hung += 1
        await request.read()
        await self.release.wait()
        return web.Response()

    async def on_slow(self, request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.05)
        self.slow += 1
        return web.Response()

    async def on_fast(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.perf_counter()
        cid = orjson.loads(body).get("correlation_id")
        if cid and cid not in self.arrivals:
            self.arrivals[cid] = now
            waiter = self.waiters.get(cid)
            if waiter is not None and not waiter.done():
                waiter.set_result(now)
        return web.Response()

    async def start(self) -> None:
        for name, handler in (
            ("hang", self.on_hang),
            ("slow", self.on_slow),
            ("fast", self.on_fast),
        ):
            app = web.Application()
            app.router.add_post("/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
            self.runners.append(runner)
            self.ports[name] = port

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/{path}"

    async def close(self) -> None:
        self.release.set()
        await asyncio.sleep(0.1)
        for runner in self.runners:
            await runner.cleanup()


class Tenants:
    """Admin API and proxy calls of the tenants against one sidecar."""

    A, B = "Bearer tenant-a", "Bearer tenant-b"

    def __init__(
        self, session: aiohttp.ClientSession, side: Sidecar, r: aioredis.Redis, stream: str
    ):
        self.session, self.side, self.r, self.stream = session, side, r, stream
        self.api = side.admin + "/admin/api"

    async def subscribe(self, credential: str, url: str) -> str:
        async with self.session.post(
            self.api + "/subscriptions",
            json={"url": url, "events": ["*"]},
            headers={"Authorization": credential},
        ) as resp:
            body = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"subscribe: {resp.status} {body}")
            return str(body["id"])

    async def owner_of(self, sub_id: str) -> str:
        token = self.side.cfg["admin_token"]
        async with self.session.get(
            f"{self.api}/subscriptions/{sub_id}", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            return str((await resp.json()).get("owner", ""))

    async def test_send(self, credential: str, sub_id: str) -> int:
        async with self.session.post(
            f"{self.api}/subscriptions/{sub_id}/test", headers={"Authorization": credential}
        ) as resp:
            await resp.read()
            return resp.status

    async def delivery_delay(
        self, receivers: Receivers, credential: str, cap_s: float
    ) -> dict[str, Any]:
        """A synchronised call answered 202 at once (respond-async), then its completion XADDed:
        seconds from the XADD to the fast receiver having the webhook (None past `cap_s`)."""
        async with self.session.post(
            self.side.base + "/jobs",
            data=b"{}",
            headers={"Authorization": credential, "Prefer": "respond-async"},
        ) as resp:
            await resp.read()
            status, cid = resp.status, resp.headers.get("X-Correlation-ID", "")
        if status != 202 or not cid:
            return {"call_status": status, "delay_s": None}
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        receivers.waiters[cid] = waiter
        t0 = time.perf_counter()
        await self.r.xadd(self.stream, {"correlation_id": cid, "type": "Done", "payload": "{}"})
        try:
            arrived = await asyncio.wait_for(waiter, cap_s)
        except TimeoutError:
            return {"call_status": status, "delay_s": None, "cap_s": cap_s}
        return {"call_status": status, "delay_s": round(arrived - t0, 3)}


@contextlib.asynccontextmanager
async def tenant_sidecar(
    version: Version,
    tmp: Path,
    name: str,
    redis_url: str,
    upstream: int,
    newer_webhooks: dict[str, Any],
) -> AsyncIterator[Tenants]:
    prefix = new_prefix(name)
    stream = f"{prefix}:events"
    cfg = config_for(
        version,
        port=free_port(),
        admin=free_port(),
        upstream=upstream,
        prefix=prefix,
        redis_url=redis_url,
        stream=stream,
        log_level="warning",
        newer_webhooks=newer_webhooks,
    )
    side = Sidecar(version, tmp, f"{version.name}-{name}", cfg)
    r = aioredis.Redis.from_url(redis_url)
    try:
        with running(side):
            await side.up("/readyz")
            await wait_group(r, stream)
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                yield Tenants(session, side, r, stream)
    finally:
        side.stop()
        leftover = await delete_prefix(r, prefix)
        print(f"  {side.name}: deleted {leftover} keys under {prefix}", flush=True)
        await r.aclose()


async def tenants_dead_endpoints(
    version: Version, tmp: Path, redis_url: str, upstream: int, cap_s: float
) -> dict[str, Any]:
    receivers = Receivers()
    await receivers.start()
    try:
        async with tenant_sidecar(
            version, tmp, "deadend", redis_url, upstream, {"test_sends_per_minute": 1000}
        ) as t:
            await t.subscribe(t.B, receivers.url("fast", "b"))
            baseline = [await t.delivery_delay(receivers, t.B, 30) for _ in range(3)]
            subs_a = [await t.subscribe(t.A, receivers.url("hang", f"a/{i}")) for i in range(40)]
            statuses: Counter[int] = Counter()
            t_load = time.perf_counter()
            for i in range(0, 200, 20):
                sent = await asyncio.gather(
                    *(t.test_send(t.A, subs_a[j % 40]) for j in range(i, i + 20))
                )
                statuses.update(sent)
            load_s = time.perf_counter() - t_load
            loaded = await t.delivery_delay(receivers, t.B, cap_s)
            cfg = t.side.cfg
            hung = receivers.hung
    finally:
        await receivers.close()
    delays = [b["delay_s"] for b in baseline if b["delay_s"] is not None]
    return {
        "baseline_delay_s": delays,
        "a_endpoints": 40,
        "a_test_sends": dict(statuses),
        "a_test_sends_took_s": round(load_s, 2),
        "a_attempts_hanging_at_end": hung,
        "b_delay_s": loaded["delay_s"],
        "b_call_status": loaded["call_status"],
        "cap_s": cap_s,
        "config": cfg,
    }


async def tenants_backlog(
    version: Version, tmp: Path, redis_url: str, upstream: int, count: int, cap_s: float
) -> dict[str, Any]:
    receivers = Receivers()
    await receivers.start()
    try:
        async with tenant_sidecar(version, tmp, "backlog", redis_url, upstream, {}) as t:
            await t.subscribe(t.B, receivers.url("fast", "b"))
            sub_a = await t.subscribe(t.A, receivers.url("slow", "a"))
            owner = await t.owner_of(sub_a) or "unused-by-this-version"
            helper = await asyncio.create_subprocess_exec(
                str(version.python),
                str(ROOT / "tests" / "bench" / "trust_enqueue.py"),
                "--redis-url",
                redis_url,
                "--prefix",
                t.side.cfg["key_prefix"],
                "--sub",
                sub_a,
                "--owner",
                owner,
                "--count",
                str(count),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=child_env(tmp),
                cwd=tmp,
            )
            try:
                out, err = await asyncio.wait_for(helper.communicate(), 300)
            finally:
                if helper.returncode is None:
                    helper.kill()
                    await helper.wait()
            if helper.returncode != 0:
                raise RuntimeError(f"enqueue helper failed: {err.decode()[-2000:]}")
            enqueued = json.loads(out)
            slow0 = receivers.slow
            loaded = await t.delivery_delay(receivers, t.B, cap_s)
            a_delivered = receivers.slow - slow0
            cfg = t.side.cfg
    finally:
        await receivers.close()
    return {
        "backlog": count,
        "enqueued": enqueued["enqueued"],
        "enqueue_s": round(enqueued["seconds"], 1),
        "a_delivered_before_enqueue_done": slow0,
        "a_delivered_while_b_waited": a_delivered,
        "b_delay_s": loaded["delay_s"],
        "b_call_status": loaded["call_status"],
        "cap_s": cap_s,
        "config": cfg,
    }


# --- the run -----------------------------------------------------------------------------------


def progress(name: str, result: dict[str, Any]) -> None:
    """Print a figure as it is measured (configs left out)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "config"}
        return value

    print(name, json.dumps(strip(result), default=str), flush=True)


def upstream_process(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.sync_upstream", "--port", str(port)], cwd=ROOT
    )


async def one_run(args: argparse.Namespace, versions: list[Version], tmp: Path) -> dict[str, Any]:
    only = set(args.only.split(",")) if args.only else None

    def wanted(name: str) -> bool:
        return only is None or name in only

    up_port = free_port()
    upstream = upstream_process(up_port)
    results: dict[str, Any] = {}
    try:
        await wait_http(f"http://127.0.0.1:{up_port}/stats")

        async def redis_down_all() -> dict[str, Any]:
            return {v.name: await redis_down(v, tmp, args.outage) for v in versions}

        stage: dict[str, Any] = {}
        if wanted("slow_header"):
            stage["slow_header"] = asyncio.gather(
                *(slow_header_one(v, tmp, up_port, args.slow_cap) for v in versions)
            )
        if wanted("redis_down"):
            stage["redis_down"] = redis_down_all()
        for name, value in zip(stage, await asyncio.gather(*stage.values()), strict=True):
            results[name] = (
                dict(zip((v.name for v in versions), value, strict=True))
                if isinstance(value, list)
                else value
            )
            progress(name, results[name])

        if wanted("big_events"):
            server = RedisServer().start()
            try:
                rss = await asyncio.gather(
                    *(big_events(v, tmp, server.url, args.events, args.ttl_wait) for v in versions)
                )
            finally:
                server.close()
            results["big_events"] = {v.name: x for v, x in zip(versions, rss, strict=True)}
            progress("big_events", results["big_events"])

        if wanted("slow_header_flood"):
            flood: dict[str, Any] = {}
            for nofile in (1024, None):
                for v in versions:
                    key = f"{v.name}@nofile={nofile or 'inherited'}"
                    flood[key] = await slow_header_flood(
                        v, tmp, up_port, args.flood, args.flood_seconds, nofile, args.keep
                    )
                    progress(f"flood {key}", flood[key])
            results["slow_header_flood"] = flood

        if wanted("dead_endpoints"):
            results["dead_endpoints"] = {}
            for v in versions:
                results["dead_endpoints"][v.name] = await tenants_dead_endpoints(
                    v, tmp, args.redis_url, up_port, args.delivery_cap
                )
                progress(f"dead_endpoints {v.name}", results["dead_endpoints"][v.name])

        if wanted("backlog"):
            results["backlog"] = {}
            for v in versions:
                results["backlog"][v.name] = await tenants_backlog(
                    v, tmp, args.redis_url, up_port, args.backlog, args.delivery_cap
                )
                progress(f"backlog {v.name}", results["backlog"][v.name])
    finally:
        upstream.terminate()
        try:
            upstream.wait(10)
        except subprocess.TimeoutExpired:
            upstream.kill()
    return results


SUMMARY: dict[str, Callable[[dict[str, Any]], Any]] = {
    "slow_header.closed_after_s": lambda r: r["slow_header"]["closed_after_s"],
    "slow_header.status": lambda r: r["slow_header"]["answer"]["status"],
    "redis_down.log_lines_per_s": lambda r: r["redis_down"]["log_lines_per_s"],
    "redis_down.redis_up_changes_while_down": lambda r: r["redis_down"][
        "redis_up_changes_while_down"
    ],
    "redis_down.connected_lines_after_restart": lambda r: r["redis_down"][
        "connected_lines_after_restart"
    ],
    "big_events.rss_before_mib": lambda r: r["big_events"]["rss_before_mib"],
    "big_events.rss_peak_mib": lambda r: r["big_events"]["rss_peak_mib"],
    "big_events.rss_after_read_mib": lambda r: r["big_events"]["rss_after_read_mib"],
    "dead_endpoints.baseline_delay_s": lambda r: max(r["dead_endpoints"]["baseline_delay_s"]),
    "dead_endpoints.b_delay_s": lambda r: r["dead_endpoints"]["b_delay_s"],
    "backlog.b_delay_s": lambda r: r["backlog"]["b_delay_s"],
}


def per_version(run: dict[str, Any], version: str) -> dict[str, Any]:
    return {
        fig: data[version]
        for fig, data in run.items()
        if isinstance(data, dict) and version in data
    }


def summarise(runs: list[dict[str, Any]], versions: list[Version]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in versions:
        for key, pick in SUMMARY.items():
            values = []
            for run in runs:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    values.append(pick(per_version(run, v.name)))
            if values:
                out.setdefault(key, {})[v.name] = values
        for run in runs:
            for key, flood in run.get("slow_header_flood", {}).items():
                if key.startswith(v.name + "@"):
                    row = out.setdefault(f"slow_header_flood.{key.split('@', 1)[1]}", {})
                    row.setdefault(v.name, []).append(
                        {
                            "outcomes": flood["client_outcomes"],
                            "fds_peak": flood["sidecar_fds_peak"],
                            "held_peak": flood["sidecar_connections_held_peak"],
                            "log_lines_per_s": flood["log_lines_per_s"],
                            "log_bytes": flood["log_bytes"],
                            "accept_errors": flood["log_accept_errors"],
                        }
                    )
    return out


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, default=str) + "\n")


def describe(args: argparse.Namespace) -> dict[str, Any]:
    """What the results were measured with (before the event loop starts)."""
    commits = {}
    for name in ("before", "after"):
        commits[name] = subprocess.run(
            ["git", "-C", getattr(args, name), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()[:100]
    return {
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"aiohttp {aiohttp.__version__}",
        "versions": commits,
        "redis": f"figures 1 and 4 on {args.redis_url}; 2 and 3 on throwaway redis-servers",
    }


async def main_async(args: argparse.Namespace) -> int:
    limit = raise_open_files_limit()
    versions = [Version("before", Path(args.before)), Version("after", Path(args.after))]
    for v in versions:
        if not v.sidecar.exists():
            raise SystemExit(f"{v.sidecar} is missing: run `make install` in {v.root}")
    if not answers(args.redis_url):
        raise SystemExit(f"no Redis answers at {args.redis_url}")
    meta = {**args.meta, "bench_open_files_limit": limit}
    out = Path(args.out)
    runs: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-trust-"))
    ok = False
    try:
        for i in range(args.repeat):
            print(f"# run {i + 1}/{args.repeat}", flush=True)
            runs.append(await one_run(args, versions, tmp))
            if args.write:
                document = {"meta": meta, "summary": summarise(runs, versions), "runs": runs}
                await asyncio.to_thread(write_json, out, document)
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"configs and logs kept in {tmp}", file=sys.stderr)
    print(json.dumps(summarise(runs, versions), indent=1, default=str))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="checkout of the old code (with .venv)")
    parser.add_argument("--after", required=True, help="checkout of the new code (with .venv)")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only",
        help="comma-separated: slow_header,redis_down,big_events,"
        "slow_header_flood,dead_endpoints,backlog",
    )
    parser.add_argument("--slow-cap", type=float, default=200.0, help="longest trickle (s)")
    parser.add_argument("--flood", type=int, default=1100, help="trickling connections at once")
    parser.add_argument("--flood-seconds", type=float, default=60.0)
    parser.add_argument("--outage", type=float, default=20.0, help="Redis down for (s)")
    parser.add_argument("--events", type=int, default=300, help="1 MB events")
    parser.add_argument("--ttl-wait", type=float, default=65.0, help="RSS again this long after")
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--delivery-cap", type=float, default=120.0)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "trust.json"))
    parser.add_argument("--no-write", dest="write", action="store_false")
    parser.add_argument("--keep", action="store_true", help="keep configs and logs")
    args = parser.parse_args()
    args.meta = describe(args)
    raise SystemExit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
