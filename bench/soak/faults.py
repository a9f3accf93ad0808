"""The faults of a soak run, on a schedule spread over its duration, and the record of each.

- `replica-kill`: SIGKILL one replica; a new one on the same ports `restart_after_s` later.
- `replica-stop`: SIGSTOP one replica; SIGCONT `stop_for_s` later (longer than `claim_after`,
  so its attempts are taken over while it is frozen).
- `redis-term`: SIGTERM the (primary) Redis, a clean shutdown with the AOF written; started
  again `restart_after_s` later (with Sentinel: once the sentinels have promoted the replica,
  so it returns as a replica, as an operator would bring it back).
- `redis-kill`: SIGKILL the (primary) Redis, keeping what the AOF had on disk; started again
  as above.
- `failover`: Sentinel variant only: `SENTINEL FAILOVER`, the replica promoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass, field

from .stack import Stack

REDIS_START_S = 90.0  # a restarted Redis loads its AOF first: seconds on a busy machine
KINDS = ("replica-kill", "replica-stop", "redis-term", "redis-kill", "failover")

# The full schedule, as fractions of the load's duration; `short` is the test suite's.
FULL = [
    (0.08, "replica-kill"),
    (0.18, "redis-term"),
    (0.30, "replica-stop"),
    (0.42, "redis-kill"),
    (0.54, "failover"),
    (0.62, "replica-kill"),
    (0.72, "redis-kill"),
    (0.82, "replica-stop"),
    (0.90, "failover"),
]
SHORT = [(0.15, "replica-kill"), (0.40, "redis-term"), (0.65, "replica-stop")]


@dataclass
class Fault:
    """One fault injected: when (seconds into the load), what, on what, and how it ended."""

    at_s: float
    kind: str
    target: str = ""
    took_s: float = 0.0
    note: str = ""


@dataclass
class Faults:
    """Injects a schedule of faults into a stack and records them."""

    stack: Stack
    schedule: list[tuple[float, str]]
    restart_after_s: float = 2.0
    stop_for_s: float = 15.0
    done: list[Fault] = field(default_factory=list)
    _turn: int = 0

    def plan(self, duration_s: float) -> list[tuple[float, str]]:
        """The schedule in seconds, without what this stack cannot do (failovers without
        Sentinel)."""
        sentinel = self.stack.redis.sentinels is not None
        return [
            (fraction * duration_s, kind)
            for fraction, kind in self.schedule
            if kind != "failover" or sentinel
        ]

    async def run(self, started: float, duration_s: float) -> None:
        """Inject each planned fault at its time; a fault that fails is recorded, not raised."""
        for at_s, kind in self.plan(duration_s):
            await asyncio.sleep(max(0.0, started + at_s - time.monotonic()))
            fault = Fault(round(time.monotonic() - started, 1), kind)
            began = time.monotonic()
            try:
                await self.inject(fault)
            except Exception as exc:  # a fault that could not be made is part of the record
                fault.note = f"could not: {exc.__class__.__name__}: {exc}"
            fault.took_s = round(time.monotonic() - began, 1)
            self.done.append(fault)

    def next_replica(self) -> int:
        self._turn += 1
        return self._turn % len(self.stack.replicas)

    async def inject(self, fault: Fault) -> None:
        stack = self.stack
        if fault.kind == "replica-kill":
            replica = stack.replicas[self.next_replica()]
            fault.target = f"replica {replica.index}"
            assert replica.proc is not None
            replica.proc.kill()
            await asyncio.to_thread(replica.proc.wait)
            await asyncio.sleep(self.restart_after_s)
            await stack.start_replica(replica)
            fault.note = f"restarted after {self.restart_after_s:g}s"
        elif fault.kind == "replica-stop":
            replica = stack.replicas[self.next_replica()]
            fault.target = f"replica {replica.index}"
            assert replica.proc is not None
            replica.proc.send_signal(signal.SIGSTOP)
            replica.stopped = True
            try:
                await asyncio.sleep(self.stop_for_s)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    replica.proc.send_signal(signal.SIGCONT)
                replica.stopped = False
            fault.note = f"SIGCONT after {self.stop_for_s:g}s"
        elif fault.kind in ("redis-term", "redis-kill"):
            began = time.monotonic()
            server = await asyncio.to_thread(stack.redis.primary)
            fault.target = f"redis :{server.port}"
            if fault.kind == "redis-kill":
                await asyncio.to_thread(server.kill)
            else:
                await asyncio.to_thread(server.stop)
            await asyncio.sleep(self.restart_after_s)
            sentinels = stack.redis.sentinels
            if sentinels is not None:  # back as a replica once another is primary, as it would
                fault.note = await self.promoted(server.port)
            await asyncio.to_thread(server.start, REDIS_START_S)
            fault.note += f"started again after {time.monotonic() - began:.0f}s (AOF)"
        elif fault.kind == "failover":
            sentinels = stack.redis.sentinels
            assert sentinels is not None
            before = await asyncio.to_thread(sentinels.primary_port)
            now = await asyncio.to_thread(sentinels.failover)
            fault.target = f"redis :{before} -> :{now}"
        else:
            raise ValueError(f"unknown fault {fault.kind!r}; known: {', '.join(KINDS)}")

    async def promoted(self, old_port: int, timeout_s: float = 30.0) -> str:
        """Wait (bounded) until the sentinels name a primary other than `old_port`."""
        sentinels = self.stack.redis.sentinels
        assert sentinels is not None
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            with contextlib.suppress(Exception):
                now = await asyncio.to_thread(sentinels.primary_port)
                if now != old_port:
                    return f"sentinels promoted :{now} after {time.monotonic() - began:.1f}s; "
            await asyncio.sleep(0.2)
        return f"no promotion within {timeout_s:.0f}s; "
