"""Benchmark of webhook delivery (run: `.venv/bin/python -m bench.webhook_bench`).

Starts the real sidecar (`sidecar run`) as a separate process, on Redis at $REDIS_URL (default
127.0.0.1:6379; a throwaway redis-server when none answers), with one stream route that publishes
webhooks. The receiver is an aiohttp server in this process (so it never shares the sidecar's
event loop), on 127.0.0.1; it answers 200 at once and notes when each delivery arrived.
Operator-owned subscriptions (`*`) point at it. Every completion is recorded as a tracked call
first (as the proxy does on a 202), so the dispatcher never waits out its grace for untracked calls.

1. latency: completions XADDed at a steady rate (default 100/s for 10 s); latency = time the
   receiver has the POST minus time just before the XADD (p50, p99, max), split into the
   dispatcher's stage (completion entry → first attempt in the outbox stream) and the delivery
   stage (outbox → receiver), both read from stream entry ids (Redis clock, 1 ms resolution).
2. throughput, end to end: N completions (default 2,000) XADDed at once (pipelined); deliveries/s
   from the first XADD until the last delivery arrived; when the last message entered the outbox;
   CPU time of the sidecar, Redis and this process per delivery; outbox entries per delivery
   (above 1.00: attempts deferred by `per_subscription` and re-queued).
3. throughput, delivery workers alone: N messages enqueued straight into the outbox (what the
   dispatcher's fan-out does), so the delivery stage is measured without the dispatcher.

`--profile PATH` runs the sidecar under cProfile (slower; for finding what dominates).
`--instructions` runs the sidecar under `valgrind --tool=callgrind` (about 50x slower) and reports,
instead of the timed phases, the instructions the sidecar executes per delivery in the two
throughput phases (`--completions`, 300 is plenty), less its idle background over the same time:
a cost figure that a busy shared machine does not move, where seconds move by 2x.
`--count-commands` runs the throughput phases under Redis `MONITOR` (`redis-cli`, to a file) and
reports the sidecar's Redis commands per delivery: those it sent (an `EVALSHA` is one) and those its
scripts ran, by command (MONITOR slows Redis: take deliveries/s from a run without it).
Every delivery's Standard Webhooks signature is verified with the `standardwebhooks` library
(after each phase, off the timed path), and its payload checked. Every loop is bounded; the script
stops what it started and deletes its Redis keys on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import ResponseError
from standardwebhooks.webhooks import Webhook

from devtools.redis_server import RedisServer, answers, free_port
from sidecar.config import Route, load_settings
from sidecar.tracking import CallTracker, TrackedCall
from sidecar.webhooks.fanout import payload
from sidecar.webhooks.keys import dispatch_group, queue_key
from sidecar.webhooks.outbox import Outbox, message_id_for
from sidecar.webhooks.store import Subscription, SubscriptionStore

from .call_instructions import TOTALS
from .harness import ROOT, wait_http

ROUTE = "bench-hook"
EVENT = "bench.done"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write_config(
    path: Path,
    *,
    port: int,
    admin: int,
    redis_url: str,
    prefix: str,
    stream: str,
    concurrency: int | None,
    per_subscription: int | None,
) -> None:
    limits = ""
    if concurrency is not None:
        limits += f"\n  concurrency: {concurrency}"
    if per_subscription is not None:
        limits += f"\n  per_subscription: {per_subscription}"
    path.write_text(
        f"""
listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin}
upstream: http://127.0.0.1:9
redis_url: {redis_url}
key_prefix: {prefix}
log: {{level: warning}}
routes:
  - name: {ROUTE}
    method: POST
    path: /jobs
    wait:
      stream: {{key: {stream}, success: [Done], failure: [Failed]}}
    webhook_events: {{success: {EVENT}}}
webhooks:
  allow_private_targets: true{limits}
"""
    )


@dataclass
class Receiver:
    """Records the first arrival of each (subscription, correlation id) and keeps every body."""

    arrivals: dict[tuple[int, str], float] = field(default_factory=dict)  # perf_counter
    wall: dict[tuple[int, str], float] = field(default_factory=dict)  # time.time
    kept: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    duplicates: int = 0
    expected: int = 0
    all_in: asyncio.Event = field(default_factory=asyncio.Event)

    def expect(self, count: int) -> None:
        self.arrivals.clear()
        self.wall.clear()
        self.kept.clear()
        self.duplicates = 0
        self.expected = count
        self.all_in.clear()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now, wall = time.perf_counter(), time.time()
        sub = int(request.match_info["sub"])
        key = (sub, orjson.loads(body)["correlation_id"])
        if key in self.arrivals:
            self.duplicates += 1
        else:
            self.arrivals[key], self.wall[key] = now, wall
            self.kept.append((sub, dict(request.headers), body))
            if len(self.arrivals) >= self.expected:
                self.all_in.set()
        return web.Response()

    def verify(self, subs: list[Subscription]) -> tuple[int, int]:
        """(signatures verified, deliveries) for what arrived since `expect`."""
        hooks = [Webhook(s.secret) for s in subs]
        ok = 0
        for sub, headers, body in self.kept:
            hooks[sub].verify(body, headers)  # raises on a bad signature
            payload = orjson.loads(body)
            assert payload["type"] == EVENT and payload["status"] == "succeeded", payload
            assert payload["route"] == ROUTE, payload
            ok += 1
        return ok, len(self.kept)


def entry_ms(entry_id: bytes | str) -> int:
    """The Redis clock (ms) at which a stream entry was added."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-")[0])


class CommandCount:
    """The sidecar's Redis commands during one phase, from `redis-cli monitor` into a file: a
    line `[db host:port] "CMD" ...` is a command a client sent, `[db lua] "CMD"` one a script ran
    (shown right after the script's own line, so it is the same client's)."""

    def __init__(self, redis_url: str, sidecar: psutil.Process, redis_port: int) -> None:
        self.redis_url, self.sidecar, self.redis_port = redis_url, sidecar, redis_port
        self.path = Path(tempfile.mkstemp(prefix="sidecar-whbench-monitor-")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> None:
        with self.path.open("wb") as out:
            self.proc = subprocess.Popen(["redis-cli", "-u", self.redis_url, "monitor"], stdout=out)

    async def start(self) -> None:
        self._spawn()
        await asyncio.sleep(0.3)  # "OK" once it is attached

    def stop(self, deliveries: int) -> dict[str, Any]:
        assert self.proc is not None
        ports = {
            f"127.0.0.1:{c.laddr.port}"
            for c in self.sidecar.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == self.redis_port
        }
        self.proc.terminate()
        self.proc.wait()
        sent: dict[str, int] = {}
        scripted: dict[str, int] = {}
        ours = False
        with self.path.open("rb") as lines:
            for raw in lines:
                head, _, rest = raw.partition(b"] ")
                client = head.rpartition(b" ")[2].decode(errors="replace")
                command = rest.split(b" ", 1)[0].strip(b'"\n').decode(errors="replace").upper()
                if client == "lua":
                    if ours:
                        scripted[command] = scripted.get(command, 0) + 1
                    continue
                ours = client in ports
                if ours:
                    sent[command] = sent.get(command, 0) + 1
        self.path.unlink(missing_ok=True)
        per = 1 / max(deliveries, 1)
        return {
            "sent_per_delivery": sum(sent.values()) * per,
            "scripted_per_delivery": sum(scripted.values()) * per,
            "sent": {k: round(v * per, 3) for k, v in sorted(sent.items(), key=lambda x: -x[1])},
            "scripted": {
                k: round(v * per, 3) for k, v in sorted(scripted.items(), key=lambda x: -x[1])
            },
        }


class Bench:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        stream: str,
        receiver: Receiver,
        subs: list[Subscription],
        route: Route,
        sidecar: psutil.Process,
        timeout_s: float,
        counter: Callable[[], CommandCount] | None = None,
    ) -> None:
        self.counter = counter
        self.redis, self.prefix, self.stream = redis, prefix, stream
        self.receiver, self.subs, self.route, self.sidecar = receiver, subs, route, sidecar
        self.tracker = CallTracker(redis, prefix, 3600)
        self.outbox = Outbox(redis, prefix)
        self.timeout_s = timeout_s

    async def track(self, cids: list[str]) -> None:
        """Record the calls as the proxy does on a 202 (tenant None: operator subscriptions)."""
        for i in range(0, len(cids), 200):
            await asyncio.gather(
                *(
                    self.tracker.record(
                        TrackedCall(cid, ROUTE, None, f"/jobs/{cid}", None, created_at=time.time())
                    )
                    for cid in cids[i : i + 200]
                )
            )

    def fields(self, cid: str) -> dict[str, str]:
        return {"correlation_id": cid, "type": "Done", "payload": orjson.dumps({"n": cid}).decode()}

    async def wait_all(self) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.receiver.all_in.wait(), self.timeout_s)
        return self.receiver.all_in.is_set()

    async def redis_cpu(self) -> float:
        info = await self.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    async def cpu(self) -> tuple[float, float, float]:
        """CPU seconds so far of (the sidecar, Redis, this process)."""
        side, own = self.sidecar.cpu_times(), os.times()
        return side.user + side.system, await self.redis_cpu(), own.user + own.system

    async def first_attempts(self, since_ms: int) -> dict[tuple[int, str], int]:
        """Not available: a subscription queue's entries are deleted once handled."""
        return {}

    async def queue_stats(self) -> tuple[int, int]:
        """(entries ever added to the subscriptions' queues, Redis ms of the last one)."""
        added, last = 0, 0
        for sub in self.subs:
            with contextlib.suppress(ResponseError):
                info = await self.redis.xinfo_stream(queue_key(self.prefix, sub.owner, sub.id))
                added += int(info["entries-added"])
                last = max(last, entry_ms(info["last-generated-id"]))
        return added, last

    def check(self, n: int) -> dict[str, Any]:
        verified, total = self.receiver.verify(self.subs)
        return {
            "expected": n * len(self.subs),
            "delivered": len(self.receiver.arrivals),
            "duplicates": self.receiver.duplicates,
            "verified": f"{verified}/{total}",
        }

    async def latency(self, rate: int, seconds: float) -> dict[str, Any]:
        """Steady rate; XADD → POST at the receiver, split into dispatcher and delivery stages."""
        n = max(1, int(rate * seconds))
        cids = [f"lat-{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]
        await self.track(cids)
        self.receiver.expect(n * len(self.subs))
        published: dict[str, float] = {}
        completed_ms: dict[str, int] = {}
        start = time.perf_counter()
        for i, cid in enumerate(cids):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            published[cid] = time.perf_counter()
            completed_ms[cid] = entry_ms(await self.redis.xadd(self.stream, self.fields(cid)))
        achieved = n / (time.perf_counter() - start)
        complete = await self.wait_all()
        arrivals = self.receiver.arrivals
        lat_ms = [(t - published[cid]) * 1000 for (_, cid), t in arrivals.items()]
        queued = await self.first_attempts(min(completed_ms.values()))
        dispatch_ms = [float(queued[k] - completed_ms[k[1]]) for k in arrivals if k in queued]
        deliver_ms = [self.receiver.wall[k] * 1000 - queued[k] for k in arrivals if k in queued]
        return {
            "rate": rate,
            "completions": n,
            "achieved_rate": achieved,
            "complete": complete,
            "p50_ms": percentile(lat_ms, 0.50),
            "p99_ms": percentile(lat_ms, 0.99),
            "max_ms": max(lat_ms, default=float("nan")),
            "dispatch_p50_ms": percentile(dispatch_ms, 0.50),
            "dispatch_p99_ms": percentile(dispatch_ms, 0.99),
            "deliver_p50_ms": percentile(deliver_ms, 0.50),
            "deliver_p99_ms": percentile(deliver_ms, 0.99),
            **self.check(n),
        }

    async def burst(self, n: int, publish: Callable[[list[str]], Awaitable[int]]) -> dict[str, Any]:
        """Everything published at once; deliveries/s until the last one arrived."""
        cids = [f"thr-{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]
        await self.track(cids)
        self.receiver.expect(n * len(self.subs))
        outbox0, _ = await self.queue_stats()
        counting = self.counter() if self.counter is not None else None
        if counting is not None:
            await counting.start()
        cpu0 = await self.cpu()
        start = time.perf_counter()
        first_ms = await publish(cids)
        published_s = time.perf_counter() - start
        complete = await self.wait_all()
        commands = counting.stop(len(self.receiver.arrivals)) if counting is not None else None
        times = sorted(self.receiver.arrivals.values())
        elapsed = (times[-1] if times else time.perf_counter()) - start
        cpu1 = await self.cpu()
        added, last_ms = await self.queue_stats()
        outbox_entries = added - outbox0
        got = len(times)
        per = 1e6 / max(got, 1)
        return {
            "completions": n,
            "complete": complete,
            "publish_s": published_s,
            "queued_s": (last_ms - first_ms) / 1000,
            "elapsed_s": elapsed,
            "deliveries_per_s": got / elapsed if elapsed > 0 else float("nan"),
            "outbox_entries_per_delivery": outbox_entries / max(got, 1),
            "sidecar_cpu_us": (cpu1[0] - cpu0[0]) * per,
            "redis_cpu_us": (cpu1[1] - cpu0[1]) * per,
            "bench_cpu_us": (cpu1[2] - cpu0[2]) * per,
            **({"redis_commands": commands} if commands is not None else {}),
            **self.check(n),
        }

    async def throughput(self, n: int) -> dict[str, Any]:
        """End to end: N completions XADDed (pipelined) → dispatcher → outbox → receiver."""

        async def publish(cids: list[str]) -> int:
            ids: list[bytes] = []
            for i in range(0, len(cids), 500):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for cid in cids[i : i + 500]:
                        pipe.xadd(self.stream, self.fields(cid))
                    ids += await pipe.execute()
            return entry_ms(ids[0])

        return await self.burst(n, publish)

    async def delivery_only(self, n: int) -> dict[str, Any]:
        """The delivery workers alone: N messages per subscription put straight into the outbox
        (as the dispatcher's fan-out would), no dispatcher involved."""

        async def publish(cids: list[str]) -> int:
            sec, usec = await self.redis.time()
            first = sec * 1000 + usec // 1000
            for i in range(0, len(cids), 100):
                await asyncio.gather(*(self.enqueue(cid) for cid in cids[i : i + 100]))
            return first

        return await self.burst(n, publish)

    async def enqueue(self, cid: str) -> None:
        now = time.time()
        _, body = payload(self.route, "succeeded", {"n": cid}, cid, f"/jobs/{cid}", now)
        for sub in self.subs:
            message_id = message_id_for(cid, "bench", sub.id)
            await self.outbox.enqueue(message_id, sub.owner, sub.id, EVENT, body, int(now * 1000))


class Instructions:
    """The sidecar under callgrind, collecting only between `--zero` and `--dump`."""

    def __init__(self, tmp: Path) -> None:
        self.out = tmp / "callgrind"
        self.pid = 0

    def wrap(self, command: list[str]) -> list[str]:
        return [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.out}.%p",
            *command,
        ]

    def control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def dumped(self) -> int:
        """Instructions since the last zeroing (dumped now)."""
        before = set(self.out.parent.glob(f"{self.out.name}.*"))
        self.control("--dump")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for path in set(self.out.parent.glob(f"{self.out.name}.*")) - before:
                match = TOTALS.search(path.read_bytes())
                if match:
                    return int(match.group(1))
            time.sleep(0.2)
        raise RuntimeError("callgrind wrote no dump")

    async def per_delivery(self, load: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Run `load` counting; its result with the instructions per delivery (the background
        counted alone, idle, for as long as the load took, taken out)."""
        self.control("--zero")
        started = time.monotonic()
        result = await load()
        took = time.monotonic() - started
        total = self.dumped()
        self.control("--zero")
        await asyncio.sleep(min(took, 30.0))
        idle = self.dumped() * took / min(took, 30.0)
        delivered = max(int(result["delivered"]), 1)
        return result | {
            "instructions": total,
            "background": round(idle),
            "instructions_per_delivery": (total - idle) / delivered,
        }


async def wait_groups(r: aioredis.Redis, stream: str, prefix: str, timeout_s: float = 20) -> None:
    """Until the dispatcher's consumer group exists (it starts at `$`: earlier events are lost)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ResponseError):
            names = [g["name"].decode() for g in await r.xinfo_groups(stream)]
            if dispatch_group(prefix) in names:
                return
        await asyncio.sleep(0.05)
    raise RuntimeError("the dispatcher never created its consumer group")


def sidecar_command(config: Path, profile: str | None) -> list[str]:
    if profile:
        return [
            *(sys.executable, "-m", "cProfile", "-o", profile),
            *("-m", "sidecar.cli", "run", "-c", str(config)),
        ]
    return [sys.executable, "-m", "sidecar.cli", "run", "-c", str(config)]


def spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start the sidecar (Popen returns at once); its stderr goes to `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(command, cwd=ROOT, stderr=log)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the sidecar drains and exits; cProfile then writes its file), SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def run(args: argparse.Namespace) -> int:
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    own: RedisServer | None = None
    if not answers(redis_url):
        own = RedisServer().start()
        redis_url = own.url
    prefix = f"bench-wh-{uuid.uuid4().hex[:8]}"
    stream = f"{prefix}:events"
    port, admin_port, hook_port = free_port(), free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-whbench-"))
    config = tmp / "sidecar.yaml"
    write_config(
        config,
        port=port,
        admin=admin_port,
        redis_url=redis_url,
        prefix=prefix,
        stream=stream,
        concurrency=args.concurrency,
        per_subscription=args.per_subscription,
    )
    settings = load_settings(config, env={})
    hooks = settings.webhooks
    r: aioredis.Redis = aioredis.Redis.from_url(redis_url)
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook/{sub}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()
    log_path = tmp / "sidecar.log"
    proc: subprocess.Popen[bytes] | None = None
    status = 1
    try:
        store = SubscriptionStore(r, prefix)
        subs = [
            await store.create("operator", f"http://127.0.0.1:{hook_port}/hook/{i}", ["*"])
            for i in range(args.subscriptions)
        ]
        counting = Instructions(tmp) if args.instructions else None
        command = sidecar_command(config, args.profile)
        proc = spawn(counting.wrap(command) if counting else command, log_path)
        pid, redis_port = proc.pid, int(r.connection_pool.connection_kwargs.get("port", 6379))
        await wait_http(f"{admin}/readyz", timeout_s=600 if counting else 20)
        await wait_groups(r, stream, prefix, timeout_s=600 if counting else 20)
        bench = Bench(
            r,
            prefix,
            stream,
            receiver,
            subs,
            settings.routes[0],
            psutil.Process(proc.pid),
            args.timeout,
            (
                (lambda: CommandCount(redis_url, psutil.Process(pid), redis_port))
                if args.count_commands
                else None
            ),
        )
        print(
            f"# {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} cores, Python "
            f"{sys.version.split()[0]}, aiohttp {aiohttp.__version__}; webhooks.concurrency "
            f"{hooks.concurrency}, per_subscription {hooks.per_subscription}, timeout "
            f"{hooks.timeout:g}s; {len(subs)} operator subscription(s), receiver in this process",
            flush=True,
        )
        results: dict[str, Any] = {"warmup": await bench.latency(100, args.warmup_s)}
        print("warmup", results["warmup"], flush=True)
        if counting is not None:
            counting.pid = proc.pid
            counting.control("--instr=on")
            for name, load in (
                ("throughput", lambda: bench.throughput(args.completions)),
                ("delivery", lambda: bench.delivery_only(args.completions)),
            ):
                results[name] = await counting.per_delivery(load)
                print(
                    f"| instructions per delivery, {name} ({args.completions} at once) | "
                    f"{results[name]['instructions_per_delivery'] / 1e6:.3f} M "
                    f"(complete: {results[name]['complete']}) |",
                    flush=True,
                )
            phases = (results["throughput"], results["delivery"])
            status = 0 if all(p["complete"] and not p["duplicates"] for p in phases) else 1
            print("OK" if status == 0 else "INCOMPLETE (see above)")
        else:
            config_shown = (hooks.concurrency, hooks.per_subscription, len(subs))
            status = await timed(bench, args, results["warmup"], config_shown)
    finally:
        if proc is not None:
            stop(proc)
            if status != 0:
                print(log_path.read_text()[-3000:], file=sys.stderr)
                print(f"sidecar config and log kept in {tmp}", file=sys.stderr)
        await runner.cleanup()
        keys = [k async for k in r.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await r.delete(*keys)
        await r.aclose()
        if own is not None:
            own.close()
    if status == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.profile:
        print(f"cProfile of the sidecar written to {args.profile}")
    return status


async def timed(
    bench: Bench, args: argparse.Namespace, warmup: dict[str, Any], config: tuple[int, int, int]
) -> int:
    """The timed phases (after the warm-up), printed; 0 when each was complete, once."""
    concurrency, per_sub, subs = config
    results: dict[str, Any] = {}
    results["latency"] = await bench.latency(args.rate, args.seconds)
    print("latency", results["latency"], flush=True)
    results["throughput"] = await bench.throughput(args.completions)
    print("throughput", results["throughput"], flush=True)
    results["delivery"] = await bench.delivery_only(args.completions)
    print("delivery only", results["delivery"], flush=True)
    results["warmup"] = warmup
    print_table(results, concurrency, per_sub, subs)
    phases = (results["latency"], results["throughput"], results["delivery"])
    status = 0 if all(p["complete"] and not p["duplicates"] for p in phases) else 1
    print("OK" if status == 0 else "INCOMPLETE (see above)")
    return status


def print_table(results: dict[str, Any], concurrency: int, per_sub: int, subs: int) -> None:
    lat, thr, dlv = results["latency"], results["throughput"], results["delivery"]
    rows = [
        (
            "config",
            f"webhooks.concurrency {concurrency}, per_subscription {per_sub}, "
            f"{subs} operator subscription(s), receiver answers 200 at once",
        ),
        (
            f"completion→delivery at {lat['rate']}/s ({lat['completions']} completions)",
            f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.0f} ms",
        ),
        (
            "… of which XADD→outbox (dispatcher) / outbox→receiver (delivery)",
            f"p50 {lat['dispatch_p50_ms']:.0f} / {lat['deliver_p50_ms']:.0f} ms, "
            f"p99 {lat['dispatch_p99_ms']:.0f} / {lat['deliver_p99_ms']:.0f} ms (Redis ms clock)",
        ),
    ]
    for name, r in (("end to end", thr), ("delivery workers alone", dlv)):
        rows += [
            (
                f"throughput, {name} ({r['completions']} at once)",
                f"**{r['deliveries_per_s']:.0f} deliveries/s** ({r['delivered']} in "
                f"{r['elapsed_s']:.2f} s; all in the outbox after {r['queued_s']:.2f} s)",
            ),
            (
                f"CPU per delivery, {name}",
                f"sidecar {r['sidecar_cpu_us']:.0f} µs, Redis {r['redis_cpu_us']:.0f} µs, "
                f"bench+receiver {r['bench_cpu_us']:.0f} µs; "
                f"{r['outbox_entries_per_delivery']:.2f} outbox entries per delivery",
            ),
        ]
        if "redis_commands" in r:
            c = r["redis_commands"]
            rows.append(
                (
                    f"sidecar's Redis commands per delivery, {name} (MONITOR)",
                    f"sent {c['sent_per_delivery']:.2f}, run by its scripts "
                    f"{c['scripted_per_delivery']:.2f}; sent: "
                    + ", ".join(f"{k} {v:.2f}" for k, v in list(c["sent"].items())[:8]),
                )
            )
    verified = ", ".join(p["verified"] for p in (lat, thr, dlv))
    dups = sum(p["duplicates"] for p in (lat, thr, dlv))
    rows.append(("signatures verified (standardwebhooks)", f"{verified}; duplicates {dups}"))
    print("\n| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--completions", type=int, default=2000, help="throughput burst size")
    parser.add_argument("--rate", type=int, default=100, help="latency: completions per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency: publishing time")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="warm-up at 100/s first")
    parser.add_argument("--subscriptions", type=int, default=1, help="operator subscriptions")
    parser.add_argument("--concurrency", type=int, help="webhooks.concurrency (default: config's)")
    parser.add_argument(
        "--per-subscription", type=int, help="webhooks.per_subscription (default: config's)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="longest wait per phase")
    parser.add_argument("--profile", metavar="PATH", help="run the sidecar under cProfile")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per delivery under callgrind instead of the timed phases",
    )
    parser.add_argument(
        "--count-commands",
        action="store_true",
        help="count the sidecar's Redis commands per delivery (MONITOR; slows Redis)",
    )
    args = parser.parse_args()
    if args.quick:
        args.completions, args.seconds, args.warmup_s = 300, 2.0, 0.5
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
