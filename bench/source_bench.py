"""Benchmark of the completion sources side by side (run: `.venv/bin/python -m bench.source_bench`).

Starts, as separate processes on 127.0.0.1: Redis (the one at $REDIS_URL if it answers, else a
throwaway one), Tansu (a Kafka-protocol broker), `nats-server -js`, RabbitMQ (the one on 5672 if
it answers, else a node of its own), the minimal async API (`bench.sync_upstream`), and for each
source in turn the real sidecar (`sidecar run`) with one route waiting on that source. Then,
per source, in one run so the figures compare:

1. wake-ups: W calls held, then their W completions published as fast as the publisher goes;
   completions woken per second (wall clock, first publish to last answer) and the sidecar's
   CPU time per woken call (its one process: reading, decoding, waking, answering).
2. event → answer with 1,000 calls held: their completions published at a fixed rate; latency
   = the client has its answer minus just before the publish (which waits for the broker's
   acknowledgement: a Redis XADD reply, a Kafka produce ack, an AMQP confirm, a JetStream ack).

The message is the same everywhere: type `Done`, the id, a small JSON result (Redis: fields
`correlation_id`, `type`, `payload`; brokers: a JSON body with an `x-correlation-id` header).
Every loop is bounded; the script stops everything it started on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import redis.asyncio as aioredis

from devtools.brokers import (
    AmqpPublisher,
    KafkaPublisher,
    NatsPublisher,
    NatsServer,
    RabbitServer,
    TansuServer,
    amqp_answers,
)
from devtools.redis_server import RedisServer, answers, free_port

from .harness import (
    ROOT,
    cpu_seconds,
    hold,
    percentile,
    processes,
    raise_open_files_limit,
    spawn,
    wait_http,
)

KINDS = ("redis", "kafka", "amqp", "nats")
Publish = Callable[[str], Awaitable[None]]


class Target:
    """One source under test: its `sources:` entry and route, and how to publish to it."""

    def __init__(self, kind: str, url: str, key: str, publisher: Any = None) -> None:
        self.kind, self.url, self.key, self.publisher = kind, url, key, publisher

    def config(self) -> str:
        if self.kind == "redis":
            return f"      stream: {{key: '{self.key}', success: [Done], failure: [Failed]}}"
        return (
            f"      stream: {{source: bus, key: '{self.key}', id_field: x-correlation-id, "
            "type_field: /type, data_field: /result, success: [Done], failure: [Failed]}"
        )

    def sources(self) -> str:
        if self.kind == "redis":
            return ""
        return f"sources: {{bus: {{kind: {self.kind}, url: '{self.url}'}}}}\n"


def write_config(path: Path, target: Target, ports: dict[str, int], redis_url: str) -> None:
    path.write_text(
        f"""
listen: 127.0.0.1:{ports["proxy"]}
admin_listen: 127.0.0.1:{ports["admin"]}
upstream: http://127.0.0.1:{ports["upstream"]}
redis_url: {redis_url}
key_prefix: bench-{uuid.uuid4().hex[:8]}
log: {{level: warning}}
stream_reader: {{block: 1s, count: 1000}}
{target.sources()}routes:
  - name: bench-stream
    method: POST
    path: /jobs
    budget: 120s
    max_waiting: 100000
    wait:
{target.config()}
"""
    )


def body(cid: str) -> bytes:
    return orjson.dumps({"type": "Done", "result": {"ok": True, "id": cid}})


async def publisher_for(target: Target, r: aioredis.Redis) -> Publish:
    """One completion published and acknowledged by the broker."""
    if target.kind == "redis":

        async def xadd(cid: str) -> None:
            await r.xadd(
                target.key, {"correlation_id": cid, "type": "Done", "payload": '{"ok":true}'}
            )

        return xadd

    async def publish(cid: str) -> None:
        await target.publisher.publish(target.key, body(cid), {"x-correlation-id": cid})

    return publish


async def publish_fast(publish: Publish, cids: list[str], window: int = 200) -> None:
    """Every completion, `window` of them in flight at once."""
    for i in range(0, len(cids), window):
        await asyncio.gather(*(publish(cid) for cid in cids[i : i + window]))


async def wakeups(
    session: aiohttp.ClientSession, base: str, admin: str, publish: Publish, pid: int, n: int
) -> dict[str, float]:
    cids = [f"w-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    done: dict[str, float] = {}
    tasks = await hold(session, base, admin, cids, done)
    cpu_before = cpu_seconds(pid)
    start = time.perf_counter()
    await publish_fast(publish, cids)
    statuses = await asyncio.gather(*tasks)
    elapsed = max(done.values()) - start
    cpu = cpu_seconds(pid) - cpu_before
    return {
        "calls": n,
        "ok": sum(s == 200 for s in statuses),
        "wakeups_per_s": n / elapsed,
        "cpu_us_per_wakeup": cpu / n * 1e6,
    }


async def latency(
    session: aiohttp.ClientSession, base: str, admin: str, publish: Publish, n: int, rate: float
) -> dict[str, float]:
    cids = [f"l-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    done: dict[str, float] = {}
    tasks = await hold(session, base, admin, cids, done)
    published: dict[str, float] = {}
    start = time.perf_counter()

    async def one(i: int, cid: str) -> None:
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        published[cid] = time.perf_counter()
        await publish(cid)

    await asyncio.gather(*(one(i, cid) for i, cid in enumerate(cids)))
    statuses = await asyncio.gather(*tasks)
    lat_ms = [(done[c] - published[c]) * 1000 for c in cids]
    return {
        "held": n,
        "rate": rate,
        "ok": sum(s == 200 for s in statuses),
        "p50_ms": percentile(lat_ms, 0.5),
        "p99_ms": percentile(lat_ms, 0.99),
        "max_ms": max(lat_ms),
    }


async def measure(
    target: Target, args: argparse.Namespace, redis_url: str, r: aioredis.Redis, upstream: int
) -> dict[str, Any]:
    """Start a sidecar on `target`, measure, stop it."""
    ports = {"proxy": free_port(), "admin": free_port(), "upstream": upstream}
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-source-bench-"))
    config = tmp / "sidecar.yaml"
    write_config(config, target, ports, redis_url)
    base, admin = f"http://127.0.0.1:{ports['proxy']}", f"http://127.0.0.1:{ports['admin']}"
    try:
        return await measure_in(target, args, r, config, tmp, base, admin)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def measure_in(
    target: Target,
    args: argparse.Namespace,
    r: aioredis.Redis,
    config: Path,
    tmp: Path,
    base: str,
    admin: str,
) -> dict[str, Any]:
    """The measurements of one sidecar (its config and log in `tmp`)."""
    with processes() as procs, (tmp / "sidecar.log").open("wb") as log:
        procs.append(
            spawn(
                [sys.executable, "-m", "sidecar.cli", "run", "-c", str(config)],
                cwd=ROOT,
                stderr=log,
            )
        )
        await wait_http(f"{admin}/readyz", 60.0)
        async with aiohttp.ClientSession() as probe:
            for _ in range(600):  # readyz answers below 500 while not ready: wait for 200
                async with probe.get(f"{admin}/readyz") as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.05)
        publish = await publisher_for(target, r)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            pid = procs[0].pid
            result: dict[str, Any] = {"kind": target.kind}
            result["wakeups"] = await wakeups(session, base, admin, publish, pid, args.wake)
            result["latency"] = await latency(session, base, admin, publish, args.held, args.rate)
            result["rss_mib"] = psutil.Process(pid).memory_info().rss / 2**20
    print(target.kind, result, flush=True)
    return result


async def run(args: argparse.Namespace) -> None:
    raise_open_files_limit()
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    own_redis = None if answers(redis_url) else RedisServer().start()
    if own_redis is not None:
        redis_url = own_redis.url
    tansu, nats = TansuServer().start(), NatsServer().start()
    rabbit = None if amqp_answers() else RabbitServer().start()
    amqp_url = rabbit.url if rabbit else "amqp://guest:guest@127.0.0.1:5672/"
    suffix = uuid.uuid4().hex[:8]
    targets = {
        "redis": Target("redis", redis_url, f"bench-{suffix}:events"),
        "kafka": Target("kafka", tansu.url, f"bench.{suffix}", KafkaPublisher(tansu.bootstrap)),
        "amqp": Target("amqp", amqp_url, f"bench.{suffix}", AmqpPublisher(amqp_url)),
        "nats": Target("nats", nats.url, f"bench.{suffix}", NatsPublisher(nats.url)),
    }
    r = aioredis.Redis.from_url(redis_url)
    up_port = free_port()
    results = []
    try:
        for target in targets.values():
            if target.publisher is not None:
                await target.publisher.create(target.key)
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
                    ],
                    cwd=ROOT,
                )
            )
            await wait_http(f"http://127.0.0.1:{up_port}/stats")
            print(f"# machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
            for kind in args.kinds:
                results.append(await measure(targets[kind], args, redis_url, r, up_port))
        print_table(results, args)
    finally:
        for target in targets.values():
            if target.publisher is not None:
                await target.publisher.close()
        await r.delete(targets["redis"].key)
        await r.aclose()
        tansu.close()
        nats.close()
        if rabbit is not None:
            rabbit.close()
        if own_redis is not None:
            own_redis.close()


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\n| source | wake-ups/s ({args.wake} held, published at once) | sidecar CPU per "
        f"wake-up | event→answer p50 / p99 ({args.held} held, {args.rate:g}/s) |\n|---|---|---|---|"
    )
    for res in results:
        w, lat = res["wakeups"], res["latency"]
        print(
            f"| {res['kind']} | {w['wakeups_per_s']:,.0f} | {w['cpu_us_per_wakeup']:.0f} µs | "
            f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--wake", type=int, default=5000, help="held calls woken at once")
    parser.add_argument("--held", type=int, default=1000, help="held calls for the latency")
    parser.add_argument("--rate", type=float, default=500.0, help="completions/s for latency")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
