"""Redis bytes per call: what one synchronised call and its webhook leave in Redis, and for how
long (run: `.venv/bin/python -m bench.storage [--calls N]`; docs/operating.md, sizing).

Starts a throwaway `redis-server` and the real sidecar (`sidecar run`, this checkout) with one
stream route, `bench/sync_upstream.py` as the API and a receiver in this process. `--tenants`
clients each subscribe one endpoint (every event); then `--calls` calls are made through the
proxy (`Prefer: respond-async`: answered 202 at once, tracked), spread over the clients, and
each call's completion is published on the route's stream; the bench waits until every webhook
arrived and the queues are empty. Redis `used_memory` before the calls and after is the
figure, divided by the number of calls; every key is then read with `MEMORY USAGE` and grouped
by its kind (the ids in its name replaced by `*`), with its TTL, so the table says what holds
the bytes and when they go. Results: printed, and `--out` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from devtools.redis_server import free_port

from .harness import ROOT, raise_open_files_limit, stop_process, wait_http
from .trust import (
    EVENT,
    Receiver,
    Side,
    bounded,
    running,
    session,
    start_upstream,
    subscribe,
)

# (kind, what bounds it, regex on the key): the first that matches names a key. What bounds it:
# "message" (retention.messages after the last attempt), "call" (tracking_ttl and
# operations.retention, 24 h by default), "log" (a count per owner, subscription or in all,
# and retention.attempts), "fixed" (subscriptions and indexes: not per call).
PATTERNS = [
    ("message (hash)", "message", r":wh:\{[^}]+\}:msg:[^:]+$"),
    ("message's attempts (list)", "message", r":wh:\{[^}]+\}:msg:[^:]+:log$"),
    ("message owner (string)", "message", r":wh:owner-of:"),
    ("owner's message log (stream)", "log", r":wh:\{[^}]+\}:log$"),
    ("operator's message log (stream)", "log", r":wh:log$"),
    ("subscription's attempts (list)", "log", r":wh:\{[^}]+\}:attempts:"),
    ("subscription queue (stream)", "fixed", r":wh:\{[^}]+\}:q:"),
    ("call record", "call", r":call:"),
    ("call claim", "call", r":claim:"),
    ("call Location", "call", r":loc:"),
    ("operation", "call", r":op:"),
    ("completion stream (the API's)", "log", r":events$"),
]


def kind_of(key: str) -> tuple[str, str]:
    for kind, bound, pattern in PATTERNS:
        if re.search(pattern, key):
            return kind, bound
    return "other: " + re.sub(r"\{[^}]*\}|sub_[0-9a-f]+", "*", key), "fixed"


async def census(url: str) -> dict[str, dict[str, Any]]:
    """Every key's MEMORY USAGE and TTL, grouped by kind."""
    r = aioredis.Redis.from_url(url)
    kinds: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"bound": "", "keys": 0, "bytes": 0, "ttl_s": set()}
    )
    try:
        async for raw in r.scan_iter(count=1000):
            key = raw.decode()
            async with r.pipeline(transaction=False) as pipe:
                pipe.memory_usage(key, samples=0)
                pipe.ttl(key)
                usage, ttl = await pipe.execute()
            kind, bound = kind_of(key)
            row = kinds[kind]
            row["bound"] = bound
            row["keys"] += 1
            row["bytes"] += int(usage or 0)
            row["ttl_s"].add(-1 if ttl < 0 else round(ttl, -2))
    finally:
        await r.aclose()
    return {
        k: {**v, "ttl_s": sorted(v["ttl_s"])[:3]}
        for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]["bytes"])
    }


async def used_memory(url: str) -> int:
    r = aioredis.Redis.from_url(url)
    try:
        return int((await r.info("memory"))["used_memory"])
    finally:
        await r.aclose()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_files_limit()
    side = Side("this", ROOT)
    side.inspect()
    port = free_port()
    upstream_url = f"http://127.0.0.1:{port}"
    upstream = start_upstream(port)
    receiver = Receiver()
    try:
        await wait_http(f"{upstream_url}/stats", timeout_s=30)
        await receiver.start()
        async with running(side, upstream_url, {}) as stack, session() as http:
            redis_url = stack.redis.url
            clients = [
                {"Authorization": f"Bearer storage-{n}-{secrets.token_hex(4)}"}
                for n in range(args.tenants)
            ]
            for n, who in enumerate(clients):
                status, sub = await subscribe(http, stack, who, receiver.url(f"s/{n}"))
                if sub is None:
                    raise RuntimeError(f"subscription refused: {status}")
            before = await used_memory(redis_url)
            r = aioredis.Redis.from_url(redis_url)

            async def call(n: int) -> int:
                cid = f"storage-{n:07d}-{secrets.token_hex(4)}"
                headers = {
                    **clients[n % len(clients)],
                    "X-Correlation-ID": cid,
                    "Prefer": "respond-async",
                    "Content-Type": "application/json",
                }
                async with http.post(stack.base + "/jobs", data=b'{"n": 1}', headers=headers) as a:
                    await a.read()
                    if a.status != 202:
                        return a.status
                await r.xadd(
                    "trust:events",
                    {"correlation_id": cid, "type": "Done", "payload": '{"ok": true}'},
                )
                return 202

            started = time.perf_counter()
            statuses = await bounded(list(range(args.calls)), 32, call)
            deadline = time.monotonic() + args.timeout
            while receiver.count < args.calls and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            took = time.perf_counter() - started
            await r.aclose()
            await asyncio.sleep(2)  # the last outcomes written, the depth sampled
            after = await used_memory(redis_url)
            kinds = await census(redis_url)
    finally:
        await receiver.stop()
        stop_process(upstream)
    delta = after - before
    per_kind = {k: round(v["bytes"] / args.calls) for k, v in kinds.items()}
    per_bound: dict[str, int] = defaultdict(int)
    for v in kinds.values():
        per_bound[v["bound"]] += v["bytes"]
    return {
        "meta": {
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": side.commit,
            "calls": args.calls,
            "tenants": args.tenants,
            "event": EVENT,
            "took_s": round(took, 1),
            "answered_202": statuses.count(202),
            "delivered": receiver.count,
            "bytes_per_webhook_body": round(receiver.bytes / max(receiver.count, 1)),
        },
        "used_memory_delta": delta,
        "bytes_per_call": round(delta / args.calls),
        "memory_usage_by_kind_per_call": per_kind,
        "memory_usage_by_bound_per_call": {
            k: round(v / args.calls) for k, v in sorted(per_bound.items())
        },
        "kinds": kinds,
    }


def sizing(message_b: float, call_b: float) -> str:
    """A sizing table: calls/s x retention.messages -> GB (10^9 bytes), with the call records
    kept 24 h; the logs (bounded by count) come on top."""
    rates = [1, 10, 50, 100, 500]
    days = [1, 3, 7, 14]
    lines = ["| calls/s | " + " | ".join(f"{d} d" for d in days) + " |"]
    lines.append("|---:|" + "---:|" * len(days))
    for rate in rates:
        cells = [f"{rate * (86400 * d * message_b + 86400 * call_b) / 1e9:,.1f}" for d in days]
        lines.append(f"| {rate} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300, help="longest wait for deliveries")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "storage.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    meta = result["meta"]
    print(
        f"{meta['calls']} calls ({meta['answered_202']} answered 202), {meta['delivered']} "
        f"webhooks delivered in {meta['took_s']} s; used_memory +{result['used_memory_delta']:,} "
        f"bytes: {result['bytes_per_call']:,} bytes per call"
    )
    for kind, row in result["kinds"].items():
        print(
            f"  {kind:34} {row['bound']:8} {row['keys']:7} keys "
            f"{row['bytes'] / meta['calls']:8.0f} B/call  TTL {row['ttl_s']}"
        )
    bounds = result["memory_usage_by_bound_per_call"]
    print("MEMORY USAGE per call, by what bounds it:", bounds)
    print(sizing(bounds.get("message", 0), bounds.get("call", 0)))


if __name__ == "__main__":
    main()
