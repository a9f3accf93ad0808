"""One soak run: start the stack, subscribe the clients, send the load while faults are injected,
let deliveries drain (bounded), then read the end state and write the ledger.

`soak(options)` is the library entry (the test suite's short variant uses it); `python -m
bench.soak` (`make soak`) is the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from devtools.redis_server import free_port

from . import ledger as book
from .faults import FULL, SHORT, Faults
from .load import Completions, Load
from .receiver import Receiver
from .stack import EVENT_FAILURE, EVENT_SUCCESS, ROOT, Checkout, Stack

SCRAPE_EVERY_S = 2.0


def say(began: float, what: str) -> None:
    """One progress line on stderr: seconds since the run began, and what happened."""
    print(f"soak +{time.monotonic() - began:5.1f}s: {what}", file=sys.stderr, flush=True)


@dataclass
class Options:
    """Everything a run can be told; durations in seconds."""

    minutes: float = 10.0
    replicas: int = 3
    sentinel: bool = False
    checkout: Path = ROOT
    clients: int = 4
    rate: float = 50.0
    burst_factor: float = 5.0
    burst_every_s: float = 60.0
    burst_for_s: float = 3.0
    async_share: float = 0.2
    fail_ratio: float = 0.03
    hang_ratio: float = 0.01
    faults: str = "full"  # full, short, none
    drain_s: float = 90.0
    restart_after_s: float = 2.0  # a killed replica or Redis is started again this much later
    stop_for_s: float = 15.0  # a SIGSTOPped replica is resumed this much later
    fsync: str = "everysec"
    seed: int = 22
    label: str = ""
    workdir: Path | None = None  # configs and logs (default: a new temporary directory)
    webhooks: dict[str, Any] = field(
        default_factory=lambda: {
            "timeout": "3s",
            "claim_after": "8s",
            "schedule": ["1s", "2s", "5s", "10s", "20s", "30s"],
        }
    )

    @property
    def hang_s(self) -> float:
        """How long a hung delivery is held: past the attempt timeout."""
        return float(str(self.webhooks.get("timeout", "15s")).removesuffix("s")) + 2.0


@dataclass
class Watch:
    """What the harness samples while the run goes on."""

    metrics: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)
    memory_rows: list[list[float | None]] = field(default_factory=list)


async def subscribe(
    http: aiohttp.ClientSession, stack: Stack, receiver: Receiver, hooks_url: str, clients: int
) -> None:
    """One subscription per client (with its credential) and one of the operator's, through the
    admin API as a tenant and an operator would."""
    admin = f"{stack.replicas[0].admin_url}/admin/api/subscriptions"
    owners = {f"client-{n}": f"Bearer soak-client-{n}" for n in range(clients)}
    owners[book.OPERATOR] = f"Bearer {stack.admin_token}"
    for name, credential in owners.items():
        body = {"url": f"{hooks_url}/{name}", "events": [EVENT_SUCCESS, EVENT_FAILURE]}
        async with http.post(admin, json=body, headers={"Authorization": credential}) as resp:
            created = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"subscribing {name}: {resp.status} {created}")
        receiver.secrets[name] = created["secret"]


async def scrape(http: aiohttp.ClientSession, stack: Stack, watch: Watch) -> None:
    """Every live replica's metrics every `SCRAPE_EVERY_S`, kept per incarnation (a killed
    replica's counters are its last scrape)."""
    timeout = aiohttp.ClientTimeout(total=1.0)

    async def one(index: int) -> None:
        replica = stack.replicas[index]
        if not replica.alive() or replica.stopped:
            return
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"{replica.admin_url}/metrics", timeout=timeout) as resp:
                parsed = book.parse_metrics(await resp.text())
            watch.metrics[(index, replica.incarnation)] = parsed

    while True:
        await asyncio.gather(*(one(n) for n in range(len(stack.replicas))))
        await asyncio.sleep(SCRAPE_EVERY_S)


async def used_memory(url: str) -> int | None:
    client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)
    try:
        info: Any = await client.info("memory")
        return int(info["used_memory"])
    except (RedisError, OSError):
        return None
    finally:
        await client.aclose()


async def sample_memory(stack: Stack, watch: Watch, started: float, every_s: float) -> None:
    """RSS of each replica and Redis `used_memory` (MiB) every `every_s`."""
    while True:
        row: list[float | None] = [time.monotonic() - started]
        for replica in stack.replicas:
            rss = replica.rss_bytes()
            row.append(round(rss / 2**20, 1) if rss is not None else None)
        used = await used_memory(stack.redis.url)
        row.append(round(used / 2**20, 1) if used is not None else None)
        watch.memory_rows.append(row)
        await asyncio.sleep(every_s)


async def end_state(stack: Stack, watch: Watch) -> dict[str, Any]:
    """What the sidecar's metrics and Redis say once the run has drained."""
    totals: dict[str, float] = {}
    gauges: dict[str, float] = {}
    for (index, incarnation), samples in sorted(watch.metrics.items()):
        latest = stack.replicas[index].incarnation == incarnation
        for name, value in samples.items():
            if not name.startswith(book.GAUGES):
                totals[name] = totals.get(name, 0.0) + value
            elif latest:  # a gauge of the replica as it is now (the queues are shared: max)
                gauges[name] = max(gauges.get(name, 0.0), value)
    state: dict[str, Any] = {}
    for name in sorted(totals):
        if name.startswith("sidecar_webhook_attempts_total"):
            result = name.partition('result="')[2].partition('"')[0]
            key = f"webhook attempts: {result}"
            state[key] = state.get(key, 0) + int(totals[name])
        else:
            state[name] = int(totals[name])
    state.update({name: int(v) for name, v in sorted(gauges.items())})
    state.update(await redis_state(stack))
    return state


async def redis_state(stack: Stack) -> dict[str, Any]:
    """Message records by state (and those without a body: dead-lettered, or stuck), dead
    letters, consumers."""
    client = aioredis.Redis.from_url(stack.redis.url, socket_timeout=10)
    states: Counter[str] = Counter()
    try:
        keys = [
            key
            async for key in client.scan_iter(match=f"{stack.prefix}:wh:*:msg:*", count=1000)
            if not key.endswith(b":log")
        ]
        for start in range(0, len(keys), 500):
            pipe = client.pipeline(transaction=False)
            for key in keys[start : start + 500]:
                pipe.hmget(key, "state", "body")
            for msg_state, body in await pipe.execute():
                states[(msg_state or b"?").decode()] += 1
                if body is None:  # dead-lettered with its reason, or stuck (retried for ever)
                    label = "dead-lettered" if msg_state == b"dead" else "stuck"
                    states[f"no body ({label})"] += 1
        dead = await client.xlen(f"{stack.prefix}:wh:dead")
        groups: Any = await client.xinfo_groups(stack.events_stream)
        consumers = sum(
            int(g["consumers"]) for g in groups if g["name"].decode().startswith(stack.prefix)
        )
    except (RedisError, OSError) as exc:
        return {"redis": f"unreadable at the end: {exc}"}
    finally:
        await client.aclose()
    found = {f"message records: {k}": v for k, v in sorted(states.items())}
    return {
        **found,
        "dead-letter stream entries": dead,
        f"stream consumers listed (live replicas: {len(stack.replicas)})": consumers,
    }


async def drain(load: Load, completions: Completions, receiver: Receiver, bound_s: float) -> float:
    """Wait until every expected delivery has arrived, or `bound_s`; the time waited."""
    began = time.monotonic()
    while time.monotonic() - began < bound_s:
        if not book.undelivered(load, completions, receiver):
            break
        receiver.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver.changed.wait(), timeout=1.0)
    return time.monotonic() - began


def configuration(options: Options, stack: Stack, duration_s: float) -> dict[str, Any]:
    """The ledger's configuration block: what ran, where, and on what machine."""
    cfg: dict[str, Any] = {
        "label": options.label or stack.checkout.root.name,
        "checkout": f"{stack.checkout.root} ({stack.checkout.commit})",
        "replicas": options.replicas,
        "redis": (
            "Sentinel set: primary + replica + 3 sentinels" if options.sentinel else "one server"
        )
        + f", AOF appendfsync {options.fsync}",
        "load": f"{options.rate:g} calls/s, x{options.burst_factor:g} for {options.burst_for_s:g}s "
        f"every {options.burst_every_s:g}s, {duration_s:.0f}s, {options.clients} clients, "
        f"{options.async_share:.0%} respond-async",
        "receiver": f"fails {options.fail_ratio:.0%}, hangs {options.hang_ratio:.0%} "
        f"({options.hang_s:g}s), verifies every signature",
        "webhooks config": json.dumps(options.webhooks),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other work "
        f"(load average at start {os.getloadavg()[0]:.1f})",
    }
    if stack.left_out:
        cfg["left out (unknown to this checkout)"] = json.dumps(stack.left_out)
    return cfg


async def soak(options: Options) -> dict[str, Any]:
    """Run one soak and return its ledger (a dict, JSON-ready)."""
    began = time.monotonic()
    checkout = Checkout(options.checkout.resolve())
    await asyncio.to_thread(checkout.inspect)
    say(began, f"measuring {checkout.root} ({checkout.commit})")
    stack = Stack(
        checkout,
        replicas=options.replicas,
        with_sentinel=options.sentinel,
        fsync=options.fsync,
        webhooks=options.webhooks,
        workdir=options.workdir,
    )
    receiver = Receiver(options.fail_ratio, options.hang_ratio, options.hang_s, options.seed)
    runner = web.AppRunner(receiver.app(), shutdown_timeout=1.0)
    tasks: list[asyncio.Task[Any]] = []
    duration_s = options.minutes * 60
    schedule = {"full": FULL, "short": SHORT, "none": []}[options.faults]
    try:
        await stack.start()
        say(began, f"Redis, the API and {options.replicas} replicas ready")
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        timeout = aiohttp.ClientTimeout(total=10.0)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            hooks = f"http://127.0.0.1:{port}/hooks"
            await subscribe(http, stack, receiver, hooks, options.clients)
            load = Load(
                stack.replicas,
                options.clients,
                options.rate,
                options.burst_factor,
                options.burst_every_s,
                options.burst_for_s,
                options.async_share,
                options.seed,
            )
            completions = Completions(stack.api_redis.url, stack.redis.url, stack.events_stream)
            watch = Watch()
            faults = Faults(stack, schedule, options.restart_after_s, options.stop_for_s)
            started = time.monotonic()
            tasks += [
                asyncio.create_task(load.probe(http)),
                asyncio.create_task(completions.follow()),
                asyncio.create_task(scrape(http, stack, watch)),
                asyncio.create_task(
                    sample_memory(stack, watch, started, max(10.0, duration_s / 6))
                ),
            ]
            await asyncio.sleep(0.5)  # the load balancer's first probes
            started = time.monotonic()
            fault_task = asyncio.create_task(faults.run(started, duration_s))
            tasks.append(fault_task)
            say(began, f"load for {duration_s:.0f}s, faults: {options.faults}")
            await load.run(http, duration_s)
            await asyncio.wait([fault_task], timeout=60)
            say(began, f"load done: {len(load.calls)} calls; draining (<= {options.drain_s:g}s)")
            drained_s = await drain(load, completions, receiver, options.drain_s)
            say(began, f"drained in {drained_s:.1f}s; reading the end state")
            await asyncio.sleep(SCRAPE_EVERY_S + 0.5)  # one more scrape of the final counters
            state = await end_state(stack, watch)
            used = await used_memory(stack.redis.url)
            if used is not None and load.calls:
                state["Redis used_memory per call sent (KiB)"] = round(
                    used / len(load.calls) / 1024, 2
                )
            dead = int(state.get("dead-letter stream entries", 0))
            lost: set[str] = set()
            with contextlib.suppress(RedisError, OSError):
                lost = await completions.gone(book.undelivered(load, completions, receiver))
            result = {
                "configuration": configuration(options, stack, duration_s),
                "calls": book.calls_summary(load.calls),
                "load_balancer": dict(load.lb),
                "first_body_by_status": load.bodies,
                "readiness": {
                    "none_ready_s": round(load.readiness.none_ready_s, 1),
                    "transitions": load.readiness.transitions,
                },
                "completions": {
                    "published": len(completions.seen),
                    "relay write retries (shared Redis away)": completions.write_retries,
                },
                "deliveries": book.deliveries(load, completions, receiver, dead, lost),
                "drained_s": round(drained_s, 1),
                "receiver": dict(receiver.outcomes),
                "end_state": state,
                "logs": book.log_counts([p for r in stack.replicas for p in r.log_paths]),
                "memory": {
                    "columns": [f"replica {r.index} RSS (MiB)" for r in stack.replicas]
                    + ["Redis used_memory (MiB)"],
                    "rows": watch.memory_rows,
                },
                "faults": [asdict(f) for f in faults.done],
                "logs_directory": str(stack.tmp),
            }
            say(began, "ledger ready")
            return result
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        await stack.close()
