"""The soak's clients and what it watches: open-loop calls at a base rate with bursts, through a
load balancer that obeys readiness; readiness probes; the completions the example API publishes.

The load balancer sends each call to the next ready replica (round robin). When no replica is
ready it sends anyway to a live one (fail open, as Envoy's panic threshold does) and counts it;
a refused connection is tried once on the next replica, as a proxy retries a failed connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .stack import Replica

CALL_TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 2000
PROBE_EVERY_S = 0.25


@dataclass
class Call:
    """One call as its client saw it."""

    cid: str
    client: int
    sent_at: float
    status: int | None = None  # None: no answer (see `error`)
    ours: bool = False  # a problem document of the sidecar's own
    error: str = ""
    elapsed_s: float = 0.0
    sent_cid: str = ""  # what the client asked for, when the sidecar answered with another


@dataclass
class Readiness:
    """What the load balancer knows: which replicas answered `/readyz` 200 at the last probe,
    and for how long none did."""

    ready: dict[int, bool] = field(default_factory=dict)
    none_ready_s: float = 0.0
    transitions: list[tuple[float, int, bool]] = field(default_factory=list)


@dataclass
class Load:
    """The calls of one run and the load balancer in front of the replicas."""

    replicas: list[Replica]
    clients: int
    rate: float
    burst_factor: float
    burst_every_s: float
    burst_for_s: float
    async_share: float
    seed: int
    calls: list[Call] = field(default_factory=list)
    readiness: Readiness = field(default_factory=Readiness)
    lb: Counter[str] = field(default_factory=Counter)
    bodies: dict[int, str] = field(default_factory=dict)  # the first body of each status >= 400
    started: float = 0.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._turn = itertools.count()
        self._in_flight: set[asyncio.Task[None]] = set()

    def credential(self, client: int) -> str:
        return f"Bearer soak-client-{client}"

    def rate_at(self, elapsed_s: float) -> float:
        """Calls per second at `elapsed_s`: the base rate, times `burst_factor` for the first
        `burst_for_s` of every `burst_every_s`."""
        in_burst = elapsed_s % self.burst_every_s < self.burst_for_s and elapsed_s > 1
        return self.rate * (self.burst_factor if in_burst else 1.0)

    def pick(self, exclude: Replica | None = None) -> Replica | None:
        """The next ready replica; else (counted) the next live one; None when all are down."""
        n = len(self.replicas)
        start = next(self._turn)
        order = [self.replicas[(start + k) % n] for k in range(n)]
        order = [r for r in order if r is not exclude]
        for replica in order:
            if self.readiness.ready.get(replica.index) and replica.alive():
                return replica
        self.lb["sent with no replica ready"] += 1
        return next((r for r in order if r.alive()), None)

    async def run(self, http: aiohttp.ClientSession, duration_s: float) -> None:
        """Send calls open-loop for `duration_s`, then wait (bounded) for those in flight."""
        self.started = time.monotonic()
        next_at = self.started
        while (now := time.monotonic()) < self.started + duration_s:
            while next_at <= now:
                if len(self._in_flight) >= MAX_IN_FLIGHT:
                    self.lb["not sent: too many in flight"] += 1
                else:
                    task = asyncio.create_task(self.one(http))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
                next_at += 1.0 / self.rate_at(next_at - self.started)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=CALL_TIMEOUT_S * 2 + 5)
        for task in list(self._in_flight):  # none should be left: each call is bounded
            task.cancel()

    async def one(self, http: aiohttp.ClientSession) -> None:
        client = self.rng.randrange(self.clients)
        call = Call(f"soak-{uuid.uuid4().hex[:20]}", client, time.monotonic())
        self.calls.append(call)
        headers = {"Authorization": self.credential(client), "X-Correlation-ID": call.cid}
        if self.rng.random() < self.async_share:
            headers["Prefer"] = "respond-async"
        body = {"username": f"soak-{client}-{len(self.calls)}", "age": 30}
        replica = self.pick()
        for attempt in range(2):
            if replica is None:
                call.error = "no live replica"
                return
            try:
                async with http.post(
                    f"{replica.proxy_url}/api/users", json=body, headers=headers
                ) as resp:
                    text = await resp.text()
                    call.status = resp.status
                    answered_cid = resp.headers.get("X-Correlation-ID", call.cid)
                    if answered_cid != call.cid:  # the sidecar minted one: the client's is this
                        call.sent_cid, call.cid = call.cid, answered_cid
                    call.ours = resp.status >= 500 and "urn:sidecar:problem" in text
                    if resp.status >= 400:
                        self.bodies.setdefault(resp.status, text[:300])
                    break
            except aiohttp.ClientConnectorError:
                call.error = "connection refused"
                if attempt == 0:
                    self.lb["connect retried on the next replica"] += 1
                    replica = self.pick(exclude=replica)
            except TimeoutError:
                call.error = "timeout"
                break
            except aiohttp.ClientError as exc:
                call.error = exc.__class__.__name__
                break
        call.elapsed_s = time.monotonic() - call.sent_at

    async def probe(self, http: aiohttp.ClientSession) -> None:
        """Probe every replica's `/readyz` every `PROBE_EVERY_S` until cancelled."""
        timeout = aiohttp.ClientTimeout(total=PROBE_EVERY_S * 2)
        last = time.monotonic()

        async def one(replica: Replica) -> None:
            ok = False
            if replica.alive():
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{replica.admin_url}/readyz", timeout=timeout) as resp:
                        ok = resp.status == 200
            if self.readiness.ready.get(replica.index) != ok:
                at = time.monotonic() - self.started if self.started else 0.0
                self.readiness.transitions.append((at, replica.index, ok))
            self.readiness.ready[replica.index] = ok

        while True:
            await asyncio.gather(*(one(r) for r in self.replicas))
            now = time.monotonic()
            if self.started and not any(self.readiness.ready.values()):
                self.readiness.none_ready_s += now - last
            last = now
            await asyncio.sleep(PROBE_EVERY_S)


@dataclass
class Completions:
    """The example API's outbox relay: reads the events the API publishes on its own Redis and
    writes each to the shared Redis's stream, in order, retrying through that Redis's faults (as
    a backend's outbox would). What it has written is what was published, by correlation id:
    (event type, when, stream entry id)."""

    source_url: str
    target_url: str
    stream: str
    maxlen: int = 100_000
    seen: dict[str, tuple[str, float, str]] = field(default_factory=dict)
    read_errors: int = 0
    write_retries: int = 0

    async def follow(self) -> None:
        """Relay until cancelled; a failed write is retried (0.2 s apart) before the next."""
        cursor = "0-0"
        source = aioredis.Redis.from_url(self.source_url, socket_timeout=5)
        target = aioredis.Redis.from_url(
            self.target_url, socket_timeout=2, socket_connect_timeout=1
        )
        try:
            while True:
                try:
                    got: Any = await source.xread({self.stream: cursor}, count=500, block=1000)
                except (RedisError, OSError):
                    self.read_errors += 1
                    await asyncio.sleep(0.2)
                    continue
                for _, entries in got or []:
                    for entry_id, fields in entries:
                        await self.publish(target, fields)
                        cursor = entry_id.decode()
        finally:
            await source.aclose()
            await target.aclose()

    async def publish(self, target: aioredis.Redis, fields: dict[bytes, bytes]) -> None:
        while True:
            try:
                entry_id = await target.xadd(
                    self.stream,
                    fields,  # type: ignore[arg-type]
                    maxlen=self.maxlen,
                    approximate=True,
                )
                break
            except (RedisError, OSError):
                self.write_retries += 1
                await asyncio.sleep(0.2)
        cid = fields.get(b"correlation_id", b"").decode()
        kind = fields.get(b"type", b"").decode()
        self.seen.setdefault(cid, (kind, time.monotonic(), entry_id.decode()))

    async def gone(self, cids: list[str]) -> set[str]:
        """Those of `cids` whose stream entry the shared Redis no longer holds (lost to a
        SIGKILL before the AOF was written, or to a failover), read at the end."""
        target = aioredis.Redis.from_url(self.target_url, socket_timeout=10)
        try:
            pipe = target.pipeline(transaction=False)
            for cid in cids:
                entry_id = self.seen[cid][2]
                pipe.xrange(self.stream, entry_id, entry_id)
            found = await pipe.execute()
        finally:
            await target.aclose()
        return {cid for cid, entries in zip(cids, found, strict=True) if not entries}
