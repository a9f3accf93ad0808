"""What invented tenants and slow clients can cost a real one, for this checkout and another
(run: `.venv/bin/python -m bench.trust [--other PATH]`, or `make bench-trust BENCH_ARGS=...`).

Without `tenancy.verify` any credential is a client, so anyone who can reach the admin API can
invent as many tenants as they like. Three rows measure what that costs:

1. fairness: 400 invented tenants each subscribe an endpoint that accepts the connection and
   never answers (a tarpit; `webhooks.timeout` stays 15 s) and send it 10 test messages; then a
   real tenant, subscribed to a receiver that answers at once, sends one test message: the time
   from its send to its delivery (capped at `--cap`, 120 s). Test-send quotas are raised where
   the checkout knows them, so this measures delivery, not quotas. The real tenant's delay
   without the load is measured first, on the same sidecar.
2. Redis bytes: 30 invented tenants each send 10 test messages of 1 MiB of data (or the most the
   checkout accepts, found first on a sidecar of its own by the operator, whom no quota counts):
   Redis `used_memory` before, after the sends and once they are delivered, and how many sends
   were accepted and refused (413, 429).
3. many subscriptions: 30,000 subscriptions of 30,000 invented tenants, created through the
   admin API; the sidecar's RSS and CPU and a pass-through GET's p50/p99 (open loop, 200 req/s
   for 30 s, `bench/sync_upstream.py` upstream) against the same before any subscription exists,
   and how long the operator's first page of the message log and of the event catalog takes.

Each side (this checkout, and `--other PATH`: a checkout with its own `.venv`, e.g. a `git
worktree` of an earlier commit) gets its own throwaway `redis-server` and its own sidecar
process (`PATH/.venv/bin/sidecar run -c <config>`), started afresh for every row and repeat, with
a config written for it: keys a checkout does not know (read from its `sidecar schema`) are left
out, and the JSON says which. Everything is driven through HTTP only: the admin API (clients with
their credential in `Authorization`, the operator with `Bearer <admin_token>`) and the proxy.
Row 1 runs both sides at once (its figures are seconds, not milliseconds); rows 2 and 3 run one
side after the other, in alternating order from one repeat to the next. Every wait is bounded;
every process started is stopped. Results: `--out` (docs/bench/trust-rows.json, every run and
config) and a table printed and written beside it (`.md`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import redis.asyncio as aioredis
import yaml
from aiohttp import web

from devtools.redis_server import RedisServer, free_port

from .harness import ROOT, percentile, raise_open_files_limit, stop_process, wait_http

ROUTE, EVENT = "trust-jobs", "trust.done"
MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# The two sides: checkouts, their configs, their processes
# --------------------------------------------------------------------------------------------


@dataclass
class Side:
    """One checkout under test, with its own `.venv`."""

    label: str  # "this" or "other"
    root: Path
    webhook_keys: set[str] = field(default_factory=set)
    commit: str = ""

    @property
    def sidecar(self) -> Path:
        return self.root / ".venv" / "bin" / "sidecar"

    @property
    def name(self) -> str:
        return f"{self.label} ({self.root.name}@{self.commit.split(' ', 1)[0]})"

    def inspect(self) -> None:
        """The webhook keys this checkout's config knows, and its commit."""
        if not self.sidecar.exists():
            raise SystemExit(
                f"{self.sidecar} is missing: create the checkout's venv first "
                f"(cd {self.root} && python3 -m venv .venv && .venv/bin/pip install -q -e .)"
            )
        schema = json.loads(
            subprocess.run(
                [str(self.sidecar), "schema"], capture_output=True, check=True, timeout=60
            ).stdout
        )
        self.webhook_keys = set(schema.get("$defs", {}).get("Webhooks", {}).get("properties", {}))
        described = subprocess.run(
            ["git", "-C", str(self.root), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(self.root), "status", "--porcelain", "--", "sidecar"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        self.commit = (described or "unknown")[:100] + (" (sidecar/ modified)" if dirty else "")


def side_config(
    side: Side, *, port: int, admin: int, upstream: str, redis_url: str, webhooks: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the config for `side`, the webhook keys left out because it does not know them)."""
    known = {k: v for k, v in webhooks.items() if k in side.webhook_keys}
    unknown = {k: v for k, v in webhooks.items() if k not in side.webhook_keys}
    cfg: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin}",
        "upstream": upstream,
        "redis_url": redis_url,
        "key_prefix": "trust",
        "admin_token": "op-" + secrets.token_hex(8),
        "shutdown_grace": "2s",
        "log": {"level": "warning", "format": "json"},
        "routes": [
            {
                "name": ROUTE,
                "method": "POST",
                "path": "/jobs",
                "budget": "10s",
                "wait": {"stream": {"key": "trust:events", "success": ["Done"]}},
                "webhook_events": {"success": EVENT, "failure": "trust.failed"},
            }
        ],
        "webhooks": {"allow_private_targets": True, **known},
    }
    return cfg, unknown


def child_env(tmp: Path) -> dict[str, str]:
    """No SIDECAR_* overrides of ours reach a sidecar; its bytecode stays out of the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return env


class Stack:
    """One side's throwaway redis-server and sidecar process, for one row."""

    def __init__(self, side: Side, upstream: str, webhooks: dict[str, Any]) -> None:
        self.side = side
        self.tmp = Path(tempfile.mkdtemp(prefix=f"trust-{side.label}-"))
        self.redis = RedisServer(port=free_port())
        self.cfg, self.unknown = side_config(
            side,
            port=free_port(),
            admin=free_port(),
            upstream=upstream,
            redis_url=self.redis.url,
            webhooks=webhooks,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = "http://" + self.cfg["listen"]
        self.api = "http://" + self.cfg["admin_listen"] + "/admin/api"
        self.operator = {"Authorization": "Bearer " + self.cfg["admin_token"]}
        self.log_path = self.tmp / "sidecar.log"

    def start_processes(self) -> None:
        self.redis.start()
        path = self.tmp / "sidecar.yaml"
        path.write_text(yaml.safe_dump(self.cfg, sort_keys=False))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(self.side.sidecar), "run", "-c", str(path)],
                cwd=self.tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(self.tmp),
            )

    def stop_processes(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15)
        self.redis.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 8) -> list[str]:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return []

    def rss_mib(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / MIB

    def cpu_s(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system

    async def used_memory(self) -> int:
        r = aioredis.Redis.from_url(self.redis.url)
        try:
            return int((await r.info("memory"))["used_memory"])
        finally:
            await r.aclose()


@contextlib.asynccontextmanager
async def running(side: Side, upstream: str, webhooks: dict[str, Any]) -> AsyncIterator[Stack]:
    """A fresh redis-server and sidecar for `side`, stopped (and removed) on exit; an error
    while the sidecar has died carries the end of its log."""
    stack = Stack(side, upstream, webhooks)
    try:
        await asyncio.to_thread(stack.start_processes)
        try:
            await wait_http(stack.api.rsplit("/admin/api", 1)[0] + "/readyz", timeout_s=60)
        except RuntimeError:
            raise RuntimeError(
                f"the sidecar did not become ready: {' | '.join(stack.log_tail())}"
            ) from None
        try:
            yield stack
        except Exception as exc:
            if stack.alive():
                raise
            code = stack.proc.returncode if stack.proc else None
            tail = " | ".join(stack.log_tail())
            raise RuntimeError(f"{exc!r}; the sidecar exited ({code}): {tail}") from exc
    finally:
        await asyncio.to_thread(stack.stop_processes)


# --------------------------------------------------------------------------------------------
# The bench's own servers: a receiver that answers at once, a tarpit that never answers
# --------------------------------------------------------------------------------------------


class Receiver:
    """Answers 204 at once and notes when each `webhook-id` arrived (first arrival only)."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.bytes = 0
        self.count = 0
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.waiters: dict[str, asyncio.Event] = {}

    async def handle(self, request: web.Request) -> web.Response:
        async for chunk in request.content.iter_chunked(1 << 16):
            self.bytes += len(chunk)
        self.count += 1
        mid = request.headers.get("webhook-id", "")
        if mid not in self.arrivals:
            self.arrivals[mid] = time.perf_counter()
            waiter = self.waiters.get(mid)
            if waiter is not None:
                waiter.set()
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def arrival(self, message_id: str, timeout_s: float) -> float | None:
        """perf_counter of the message's arrival, or None after `timeout_s`."""
        if message_id not in self.arrivals:
            waiter = self.waiters.setdefault(message_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), timeout_s)
        return self.arrivals.get(message_id)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class Tarpit:
    """Accepts every connection, reads and discards what it is sent, never answers."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        self.peak = max(self.peak, self.open)
        self.writers.add(writer)
        try:
            while await reader.read(1 << 16):
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()

    async def start(self) -> None:
        self.port = free_port()
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port, backlog=4096)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 5)


# --------------------------------------------------------------------------------------------
# The admin API, as clients and as the operator
# --------------------------------------------------------------------------------------------


def client_credential(row: int, n: int) -> dict[str, str]:
    """An invented tenant: any string is a client without `tenancy.verify`."""
    return {"Authorization": f"Bearer invented-{row}-{n}-{secrets.token_hex(4)}"}


async def subscribe(
    http: aiohttp.ClientSession, stack: Stack, who: dict[str, str], url: str
) -> tuple[int, str | None]:
    """(status, subscription id) of `POST /subscriptions` by `who`."""
    async with http.post(
        f"{stack.api}/subscriptions", json={"url": url, "events": ["*"]}, headers=who
    ) as resp:
        body = await resp.read()
        if resp.status == 201:
            return resp.status, json.loads(body)["id"]
        return resp.status, None


async def send_test(
    http: aiohttp.ClientSession,
    stack: Stack,
    who: dict[str, str],
    sub: str,
    body: bytes | None = None,
) -> tuple[int, str | None]:
    """(status, message id) of `POST /subscriptions/{sub}/test` by `who`."""
    headers = {**who, "Content-Type": "application/json"} if body is not None else who
    async with http.post(
        f"{stack.api}/subscriptions/{sub}/test", data=body, headers=headers
    ) as resp:
        answer = await resp.read()
        if resp.status == 202:
            return resp.status, json.loads(answer)["message_id"]
        return resp.status, None


async def bounded(items: list[Any], limit: int, one: Callable[[Any], Awaitable[Any]]) -> list[Any]:
    """`one(item)` for every item, at most `limit` at a time, results in order."""
    gate = asyncio.Semaphore(limit)

    async def guarded(item: Any) -> Any:
        async with gate:
            return await one(item)

    return list(await asyncio.gather(*(guarded(i) for i in items)))


def session(limit: int = 64, total_s: float = 120) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=total_s),
    )


# --------------------------------------------------------------------------------------------
# Row 1: the real tenant's delivery delay behind 400 invented tarpit tenants
# --------------------------------------------------------------------------------------------


ROW1_WEBHOOKS = {  # quotas out of the way: the row is about delivery, not refusals
    "test_sends_per_minute": 100_000,
    "test_sends_per_minute_total": 1_000_000,
    "test_data_per_hour": 1 << 40,
}


async def real_delay(
    http: aiohttp.ClientSession,
    stack: Stack,
    receiver: Receiver,
    who: dict[str, str],
    sub: str,
    cap_s: float,
) -> dict[str, Any]:
    """One test message of the real tenant: seconds from just before its send to its arrival."""
    started = time.perf_counter()
    status, mid = await send_test(http, stack, who, sub)
    if mid is None:
        return {"status": status, "delay_s": None}
    arrived = await receiver.arrival(mid, cap_s - (time.perf_counter() - started))
    return {
        "status": status,
        "delay_s": None if arrived is None else round(arrived - started, 4),
        "capped_at_s": cap_s,
    }


async def row1_side(
    args: argparse.Namespace, side: Side, receiver: Receiver, out: dict[str, Any]
) -> None:
    tarpit = Tarpit()
    await tarpit.start()
    try:
        async with running(side, args.upstream, ROW1_WEBHOOKS) as stack, session() as http:
            out["left_out"] = stack.unknown
            real = client_credential(1, -1)
            status, real_sub = await subscribe(http, stack, real, receiver.url(f"{side.label}/r1"))
            if real_sub is None:
                raise RuntimeError(f"the real tenant's subscription was refused: {status}")
            out["unloaded"] = await real_delay(http, stack, receiver, real, real_sub, 10)
            t0 = time.perf_counter()
            tenants = [client_credential(1, n) for n in range(args.tenants)]
            made = await bounded(
                list(enumerate(tenants)),
                32,
                lambda nt: subscribe(http, stack, nt[1], tarpit.url(f"t/{nt[0]}")),
            )
            out["subscriptions"] = dict(Counter(str(s) for s, _ in made))
            pairs = [(t, sub) for t, (_, sub) in zip(tenants, made, strict=True) if sub]
            # each tenant's sends, round by round: every tenant's first, then every second, ...
            sends = [p for _ in range(args.sends) for p in pairs]
            sent = await bounded(sends, 32, lambda p: send_test(http, stack, p[0], p[1]))
            out["test_sends"] = dict(Counter(str(s) for s, _ in sent))
            out["setup_s"] = round(time.perf_counter() - t0, 1)
            out["tarpit_open_at_send"] = tarpit.open
            out["loaded"] = await real_delay(http, stack, receiver, real, real_sub, args.cap)
            out["tarpit_peak_open"] = tarpit.peak
            out["tarpit_connections"] = tarpit.accepted
            out["sidecar_alive"] = stack.alive()
            if not stack.alive():
                out["log_tail"] = stack.log_tail()
    finally:
        await tarpit.stop()


async def row1(args: argparse.Namespace, sides: list[Side], receiver: Receiver) -> list[Any]:
    runs = []
    for rep in range(args.repeat):
        print(f"row 1, run {rep + 1}/{args.repeat}: both sides at once", flush=True)
        results = await asyncio.gather(*(guard(row1_side, args, s, receiver) for s in sides))
        runs.append({s.label: r for s, r in zip(sides, results, strict=True)})
        for s, r in zip(sides, results, strict=True):
            print(f"  {s.name}: {brief1(r)}", flush=True)
    return runs


def brief1(r: dict[str, Any]) -> str:
    if "error" in r:
        return "error: " + r["error"]
    return (
        f"unloaded {fmt_delay(r['unloaded'])}, behind the invented tenants "
        f"{fmt_delay(r['loaded'])} (sends {r['test_sends']}, setup {r['setup_s']} s, "
        f"tarpit connections open at the send {r['tarpit_open_at_send']})"
    )


def fmt_delay(d: dict[str, Any]) -> str:
    if d.get("delay_s") is None:
        if d.get("status") != 202:
            return f"send refused ({d.get('status')})"
        return f"> {d['capped_at_s']:.0f} s"
    s = d["delay_s"]
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


# --------------------------------------------------------------------------------------------
# Row 2: Redis bytes after a test-data flood
# --------------------------------------------------------------------------------------------


def test_body(size: int) -> bytes:
    """A test message whose `data` is a string of `size` bytes."""
    return b'{"data": "' + b"x" * size + b'"}'


async def largest_accepted(args: argparse.Namespace, side: Side, receiver: Receiver) -> int:
    """The largest `data` (bytes, at most 1 MiB) the side accepts in a test message, found by
    the operator (no quota counts it) on a sidecar and Redis of its own, to 1 KiB."""
    async with running(side, args.upstream, {}) as stack, session(8) as http:
        _, sub = await subscribe(http, stack, stack.operator, receiver.url(f"{side.label}/probe"))
        assert sub is not None

        async def ok(size: int) -> bool:
            status, _ = await send_test(http, stack, stack.operator, sub, test_body(size))
            if status not in (202, 413):
                raise RuntimeError(f"a probe test send answered {status}")
            return status == 202

        if await ok(args.data):
            return int(args.data)
        lo, hi = 0, int(args.data)  # lo accepted, hi refused
        while hi - lo > 1024:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if await ok(mid) else (lo, mid)
        return lo


async def row2_side(
    args: argparse.Namespace, side: Side, receiver: Receiver, out: dict[str, Any]
) -> None:
    size = out["data_bytes"] = await largest_accepted(args, side, receiver)
    async with running(side, args.upstream, {}) as stack, session(64, 300) as http:
        out["left_out"] = stack.unknown
        tenants = [client_credential(2, n) for n in range(args.flood_tenants)]
        made = await bounded(
            list(enumerate(tenants)),
            32,
            lambda nt: subscribe(http, stack, nt[1], receiver.url(f"{side.label}/f{nt[0]}")),
        )
        pairs = [(t, sub) for t, (_, sub) in zip(tenants, made, strict=True) if sub]
        out["subscriptions"] = len(pairs)
        await asyncio.sleep(1)
        out["used_memory_before"] = await stack.used_memory()
        body = test_body(size)
        statuses: Counter[str] = Counter()
        accepted: list[str] = []

        async def tenant(pair: tuple[dict[str, str], str]) -> None:
            for _ in range(args.flood_sends):
                status, mid = await send_test(http, stack, pair[0], pair[1], body)
                statuses[str(status)] += 1
                if mid:
                    accepted.append(mid)

        t0 = time.perf_counter()
        await asyncio.gather(*(tenant(p) for p in pairs))
        out["send_s"] = round(time.perf_counter() - t0, 1)
        out["sends"] = dict(statuses)
        out["accepted"] = len(accepted)
        out["refused"] = sum(n for s, n in statuses.items() if s in ("413", "429"))
        out["used_memory_after_sends"] = await stack.used_memory()
        deadline = time.perf_counter() + 60
        for mid in accepted:
            await receiver.arrival(mid, max(0.0, deadline - time.perf_counter()))
        out["delivered"] = sum(1 for m in accepted if m in receiver.arrivals)
        await asyncio.sleep(1)
        out["used_memory_after_delivery"] = await stack.used_memory()
        out["sidecar_rss_mib"] = round(stack.rss_mib(), 1)
        out["sidecar_alive"] = stack.alive()


# --------------------------------------------------------------------------------------------
# Row 3: RSS, pass-through latency and the operator's pages with 30,000 subscriptions
# --------------------------------------------------------------------------------------------


async def paced_gets(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """Open loop: one GET every 1/rate s for `seconds` (each started on time whatever the
    others do); latency = from its start to its whole answer."""
    lat: list[float] = []
    errors: Counter[str] = Counter()
    n = int(rate * seconds)
    async with session(200, 30) as http:

        async def one() -> None:
            t = time.perf_counter()
            try:
                async with http.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors[str(resp.status)] += 1
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                return
            lat.append((time.perf_counter() - t) * 1000)

        tasks = []
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return {
        "requests": n,
        "answered": len(lat),
        "errors": dict(errors),
        "p50_ms": round(percentile(lat, 0.5), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "max_ms": round(max(lat, default=float("nan")), 1),
    }


PAGE_TIMEOUT_S = 120.0


async def timed_get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> list[Any]:
    """[status, ms]; [None, None] when no answer came within PAGE_TIMEOUT_S."""
    t = time.perf_counter()
    try:
        async with http.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=PAGE_TIMEOUT_S)
        ) as resp:
            await resp.read()
            return [resp.status, round((time.perf_counter() - t) * 1000, 1)]
    except TimeoutError:
        return [None, None]


async def pages(http: aiohttp.ClientSession, stack: Stack, times: int = 2) -> dict[str, Any]:
    """The operator's first page of the message log and of the event catalog, `times` each
    (the first is what an operator opening the portal waits), once only when it took 10 s."""
    out: dict[str, Any] = {}
    for name, path in (("messages", "/messages"), ("event_types", "/event-types")):
        out[name] = [await timed_get(http, stack.api + path, stack.operator)]
        while len(out[name]) < times and (out[name][0][1] or 1e9) < 10_000:  # not when slow
            out[name].append(await timed_get(http, stack.api + path, stack.operator))
    return out


async def state(stack: Stack, args: argparse.Namespace, http: aiohttp.ClientSession) -> Any:
    """Idle CPU, RSS, the operator's pages and the pass-through under load, in that order."""
    cpu0, t0 = stack.cpu_s(), time.perf_counter()
    await asyncio.sleep(args.idle)
    idle_cpu = (stack.cpu_s() - cpu0) / (time.perf_counter() - t0)
    out: dict[str, Any] = {"rss_mib": round(stack.rss_mib(), 1), "idle_cpu": round(idle_cpu, 3)}
    out["redis_used_memory_mib"] = round(await stack.used_memory() / MIB, 1)
    out["pages"] = await pages(http, stack)
    loads = []
    for _ in range(args.windows):
        cpu0, t0 = stack.cpu_s(), time.perf_counter()
        load = await paced_gets(f"{stack.base}/pass", args.rate, args.seconds)
        load["sidecar_cpu"] = round((stack.cpu_s() - cpu0) / (time.perf_counter() - t0), 3)
        loads.append(load)
    out["load"] = loads
    out["rss_after_load_mib"] = round(stack.rss_mib(), 1)
    return out


ROW3_WEBHOOKS = {"max_subscriptions": 0}  # 0: no bound on every client's together


async def row3_side(
    args: argparse.Namespace, side: Side, receiver: Receiver, out: dict[str, Any]
) -> None:
    async with running(side, args.upstream, ROW3_WEBHOOKS) as stack, session(64, 300) as http:
        out.update(left_out=stack.unknown, created_through="admin API")
        out["none"] = await state(stack, args, http)
        t0 = time.perf_counter()
        statuses: Counter[str] = Counter()

        async def make(n: int) -> None:
            who = client_credential(3, n)
            status, _ = await subscribe(http, stack, who, receiver.url(f"{side.label}/s{n}"))
            statuses[str(status)] += 1

        await bounded(list(range(args.subscriptions)), 48, make)
        out["create_s"] = round(time.perf_counter() - t0, 1)
        out["creates"] = dict(statuses)
        out["with_subscriptions"] = await state(stack, args, http)
        out["sidecar_alive"] = stack.alive()


# --------------------------------------------------------------------------------------------
# Running it all
# --------------------------------------------------------------------------------------------


Work = Callable[[argparse.Namespace, Side, Receiver, dict[str, Any]], Awaitable[None]]


async def guard(work: Work, args: argparse.Namespace, side: Side, receiver: Receiver) -> Any:
    """One side's run of a row: what it measured, and its error when it failed (the run goes
    on with the next)."""
    out: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        await work(args, side, receiver, out)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"[:600]
    out["took_s"] = round(time.perf_counter() - started, 1)
    return out


async def one_at_a_time(
    args: argparse.Namespace,
    sides: list[Side],
    receiver: Receiver,
    name: str,
    work: Work,
    repeat: int,
) -> list[Any]:
    runs = []
    for rep in range(repeat):
        order = sides if rep % 2 == 0 else sides[::-1]
        run: dict[str, Any] = {}
        for s in order:
            print(f"{name}, run {rep + 1}/{repeat}: {s.name}", flush=True)
            run[s.label] = await guard(work, args, s, receiver)
            print(f"  {json.dumps(run[s.label])[:900]}", flush=True)
        runs.append(run)
    return runs


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.sync_upstream", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sides: list[Side] = args.sides
    raise_open_files_limit()
    upstream_port = free_port()
    args.upstream = f"http://127.0.0.1:{upstream_port}"
    upstream = start_upstream(upstream_port)
    receiver = Receiver()
    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, "
            f"aiohttp {aiohttp.__version__}",
            "sides": {s.label: {"root": str(s.root), "commit": s.commit} for s in sides},
            "args": {k: v for k, v in vars(args).items() if k not in ("upstream", "sides")},
        },
        "rows": {},
    }
    try:
        await wait_http(f"{args.upstream}/stats", timeout_s=30)
        await receiver.start()
        rows: dict[int, Callable[[], Awaitable[list[Any]]]] = {
            1: lambda: row1(args, sides, receiver),
            2: lambda: one_at_a_time(args, sides, receiver, "row 2", row2_side, args.repeat),
            3: lambda: one_at_a_time(args, sides, receiver, "row 3", row3_side, args.repeat3),
        }
        for number in args.rows:
            started = time.perf_counter()
            runs = await rows[number]()
            results["rows"][str(number)] = {
                "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "sides": {s.label: s.commit for s in sides},
                "took_s": round(time.perf_counter() - started, 1),
                "config": row_config(number, args),
                "runs": runs,
            }
    finally:
        await receiver.stop()
        stop_process(upstream)
    return results


def row_config(number: int, args: argparse.Namespace) -> dict[str, Any]:
    common = "each side: fresh redis-server + sidecar, log warning, allow_private_targets"
    if number == 1:
        return {
            "common": common,
            "webhooks": ROW1_WEBHOOKS,
            "tenants": args.tenants,
            "sends_per_tenant": args.sends,
            "cap_s": args.cap,
        }
    if number == 2:
        return {
            "common": common,
            "webhooks": {},
            "tenants": args.flood_tenants,
            "sends_per_tenant": args.flood_sends,
            "data_bytes_asked": args.data,
        }
    return {
        "common": common,
        "webhooks": ROW3_WEBHOOKS,
        "subscriptions": args.subscriptions,
        "rate": args.rate,
        "seconds": args.seconds,
        "windows": args.windows,
        "idle_s": args.idle,
    }


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


DASH = "\u2013"  # an en dash, for ranges


def span(values: list[float | None], unit: str = "", digits: int = 1, cap: str = "") -> str:
    """ "lo-hi unit" over the runs (or the one value); `cap` stands for a None (not in time)."""
    if not values:
        return DASH
    done = [v for v in values if v is not None]
    missed = len(values) - len(done)
    parts = []
    if done:
        lo, hi = (f"{v:,.{digits}f}" for v in (min(done), max(done)))
        parts.append((lo if lo == hi else f"{lo}{DASH}{hi}") + unit)
    if missed:
        parts.append(f"{cap} ({missed} of {len(values)})" if cap else f"none in {missed}")
    return "; ".join(parts)


def delay_cell(delays: list[dict[str, Any]]) -> str:
    """Delays in ms when all are under a second, else in s; misses as "> cap"."""
    values = [d.get("delay_s") for d in delays]
    done = [v for v in values if v is not None]
    cap = f"> {delays[0].get('capped_at_s', 120):.0f} s" if delays else ""
    if done and max(done) < 1:
        return span([None if v is None else v * 1000 for v in values], " ms", 0, cap)
    return span(values, " s", 1, cap)


Runs = list[dict[str, Any]]
Cells = list[tuple[str, Callable[[], str]]]


def row1_cells(ok: Runs) -> Cells:
    def delays(key: str) -> Callable[[], str]:
        return lambda: delay_cell([m[key] for m in ok if key in m])

    def counts(key: str) -> list[float | None]:
        return [m[key] for m in ok if key in m]

    return [
        ("real tenant's test send to its delivery, no load", delays("unloaded")),
        ("... behind the invented tarpit tenants' test messages", delays("loaded")),
        (
            "invented tenants' test sends accepted",
            lambda: span([m["test_sends"].get("202", 0) for m in ok if "test_sends" in m], "", 0),
        ),
        (
            "tarpit connections open at the real send / at most",
            lambda: (
                span(counts("tarpit_open_at_send"), "", 0)
                + " / "
                + span(counts("tarpit_peak_open"), "", 0)
            ),
        ),
        (
            "tarpit connections made until the real delivery (or the cap)",
            lambda: span(counts("tarpit_connections"), "", 0),
        ),
    ]


def row2_cells(ok: Runs) -> Cells:
    done = [m for m in ok if "used_memory_after_delivery" in m]

    def memory() -> str:
        pairs = [(m["used_memory_before"], m["used_memory_after_sends"]) for m in done]
        return "; ".join(f"{a / MIB:.1f} -> {b / MIB:.1f}" for a, b in pairs) + " MiB"

    return [
        (
            "data per test message (the most accepted, up to 1 MiB)",
            lambda: span([m["data_bytes"] / 1024 for m in ok if "data_bytes" in m], " KiB", 0),
        ),
        (
            "sends accepted / refused (413 or 429)",
            lambda: "; ".join(sorted({f"{m['accepted']} / {m['refused']}" for m in done})),
        ),
        ("Redis used_memory before -> after the sends", memory),
        (
            "Redis growth, once delivered",
            lambda: span(
                [(m["used_memory_after_delivery"] - m["used_memory_before"]) / MIB for m in done],
                " MiB",
            ),
        ),
    ]


def row3_cells(ok: Runs) -> Cells:
    cap = f"> {PAGE_TIMEOUT_S:.0f} s"
    cells: Cells = []
    for key, label in (("none", "no subscriptions"), ("with_subscriptions", "with them")):
        runs = [m[key] for m in ok if key in m]
        loads = [w for r in runs for w in r["load"]]

        def page(name: str, runs: Runs = runs) -> str:
            first = [r["pages"][name][0][1] for r in runs]
            later = [t[1] for r in runs for t in r["pages"][name][1:]]
            return span(first, " ms", 0, cap) + " / " + span(later, " ms", 0, cap)

        cells += [
            (
                f"sidecar RSS / after the pages and the load, {label}",
                lambda runs=runs: (
                    span([r["rss_mib"] for r in runs], "", 0)
                    + " / "
                    + span([r["rss_after_load_mib"] for r in runs], " MiB", 0)
                ),
            ),
            (
                f"pass-through p50 / p99, {label}",
                lambda loads=loads: (
                    span([w["p50_ms"] for w in loads], "", 2)
                    + " / "
                    + span([w["p99_ms"] for w in loads], " ms")
                ),
            ),
            (
                f"sidecar CPU idle / under the load, {label}",
                lambda runs=runs, loads=loads: (
                    span([r["idle_cpu"] * 100 for r in runs], " %", 0)
                    + " / "
                    + span([w["sidecar_cpu"] * 100 for w in loads], " %", 0)
                ),
            ),
            (f"operator's GET /messages, first / next, {label}", partial(page, "messages")),
            (f"operator's GET /event-types, first / next, {label}", partial(page, "event_types")),
        ]
    cells.append(
        (
            "time to create the subscriptions (admin API)",
            lambda: span([m["create_s"] for m in ok if "create_s" in m], " s"),
        )
    )
    return cells


def table(results: dict[str, Any], sides: list[Side]) -> str:
    """The markdown table: one line per measure, one column per side, ranges over the runs
    (a run that failed part-way counts for what it measured)."""
    lines = [
        "| row | measure | " + " | ".join(s.name for s in sides) + " |",
        "|---|---|" + "---|" * len(sides),
    ]
    makers = {"1": row1_cells, "2": row2_cells, "3": row3_cells}
    for number, row in sorted(results["rows"].items()):
        columns: list[tuple[dict[str, str], str]] = []
        for s in sides:
            mine = [r[s.label] for r in row["runs"] if s.label in r]
            errors = [m["error"] for m in mine if "error" in m]
            values: dict[str, str] = {}
            for name, cell in makers[number](mine):
                try:
                    values[name] = cell()
                except (KeyError, IndexError, TypeError, ValueError):
                    values[name] = DASH
            note = f" ({len(errors)} of {len(mine)} failed: {errors[0][:100]})" if errors else ""
            columns.append((values, note))
        names = list(dict.fromkeys(k for values, _ in columns for k in values))
        for name in names:
            cells = [values.get(name, DASH) for values, _ in columns]
            lines.append(f"| {number} | {name} | " + " | ".join(cells) + " |")
        notes = [f"{s.name}: {note.strip()}" for s, (_, note) in zip(sides, columns, strict=True)]
        lines += (
            [f"| {number} | failures | " + "; ".join(notes) + " |"]
            if any(n for _, n in columns)
            else []
        )
    took = ", ".join(f"row {n}: {r['took_s']:.0f} s" for n, r in sorted(results["rows"].items()))
    return "\n".join(lines) + f"\n\nWall time: {took}.\n"


def merged(out: Path, results: dict[str, Any]) -> dict[str, Any]:
    """`results` with the rows of an earlier run in `out` that this run did not make (when
    both measured the same checkouts), so one row can be run again on its own."""
    with contextlib.suppress(OSError, ValueError):
        earlier = json.loads(out.read_text())
        same = {k: v["root"] for k, v in earlier["meta"]["sides"].items()} == {
            k: v["root"] for k, v in results["meta"]["sides"].items()
        }
        if same:
            for number, row in earlier.get("rows", {}).items():
                results["rows"].setdefault(number, row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", metavar="PATH", help="another checkout with its own .venv")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    parser.add_argument("--repeat", type=int, default=3, help="runs of rows 1 and 2 per side")
    parser.add_argument("--repeat3", type=int, default=1, help="runs of row 3 per side")
    parser.add_argument("--tenants", type=int, default=400, help="row 1: invented tenants")
    parser.add_argument("--sends", type=int, default=10, help="row 1: test sends per tenant")
    parser.add_argument("--cap", type=float, default=120, help="row 1: longest wait (s)")
    parser.add_argument("--flood-tenants", type=int, default=30, help="row 2")
    parser.add_argument("--flood-sends", type=int, default=10, help="row 2: per tenant")
    parser.add_argument("--data", type=int, default=MIB, help="row 2: bytes of data asked")
    parser.add_argument("--subscriptions", type=int, default=30_000, help="row 3")
    parser.add_argument("--rate", type=float, default=200, help="row 3: pass-through GETs/s")
    parser.add_argument("--seconds", type=float, default=30, help="row 3: per load window")
    parser.add_argument("--windows", type=int, default=1, help="row 3: load windows per state")
    parser.add_argument("--idle", type=float, default=5, help="row 3: idle seconds per state")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small numbers")
    parser.add_argument(
        "--report", action="store_true", help="measure nothing: the table of --out written again"
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "trust-rows.json"))
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.repeat3, args.tenants, args.sends, args.cap = 1, 1, 40, 2, 20
        args.flood_tenants, args.flood_sends, args.subscriptions = 3, 2, 500
        args.seconds, args.idle, args.windows = 5, 1, 1
    args.sides = [Side("this", ROOT)]
    if args.other:
        args.sides.append(Side("other", Path(args.other).resolve()))
    for side in args.sides:
        side.inspect()
    out = Path(args.out)
    if args.report:
        results = json.loads(out.read_text())
        results["table"] = table(results, args.sides)
        out.write_text(json.dumps(results, indent=1) + "\n")
        out.with_suffix(".md").write_text(results["table"])
        print(results["table"])
        return
    results = merged(out, asyncio.run(run(args)))
    results["table"] = table(results, args.sides)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(results["table"])
    print("\n" + results["table"])
    print(f"written: {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
