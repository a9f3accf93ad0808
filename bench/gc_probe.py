"""Runs the sidecar with its cyclic garbage collector and its event loop timed: for the
benchmarks only.

    python -m bench.gc_probe OUT.json [--threshold G0,G1,G2] [--freeze]
                                      [--sidecar-threshold G0,G1,G2] -- run -c CONFIG

`gc.callbacks` add up the collections and the seconds spent in them per generation, by the
clock and by the process's own CPU time (on a shared machine the clock also counts the time other
processes had the core), and keep the longest pause of each and every pause over `LONG_PAUSE_S`
of CPU; once the sidecar is serving, a
timer asks every `LAG_EVERY_S` to run and records how late it ran (the loop's lag: whatever held
the loop meanwhile, a collection, a large batch of wake-ups, a long callback, or, on a shared
machine, other processes) and how much CPU the process spent since the timer last ran (the
loop's own work between two of its turns, which other processes cannot inflate). SIGUSR1 writes the
totals so far to OUT.json (the benchmark reads them before and after a phase). `--threshold` and
`--freeze` change the collector before the sidecar starts; `--sidecar-threshold` replaces the
thresholds the sidecar sets once started (`process.GC_THRESHOLDS`), to see what a setting would
save; nothing of this is in the sidecar itself.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import sidecar.process
import sidecar.server
from sidecar.cli import main as sidecar_main

LONG_PAUSE_S = 0.002  # collections longer than this are kept one by one (at most MAX_KEPT)
LAG_EVERY_S = 0.005  # the lag sampler's period
MAX_KEPT = 10_000

TOTALS: dict[str, Any] = {
    "collections": [0, 0, 0],
    "seconds": [0.0, 0.0, 0.0],
    "cpu_s": [0.0, 0.0, 0.0],
    "max_s": [0.0, 0.0, 0.0],
    "max_cpu_s": [0.0, 0.0, 0.0],
    "long": [],  # [generation, CPU seconds, collected] of each pause over LONG_PAUSE_S
    "lag": {"samples": 0, "max_s": 0.0, "over_5ms": 0, "over_20ms": 0, "sum_s": 0.0},
    # CPU the loop spent between two turns of the timer: the longest, and how often past 5/20 ms
    "busy": {"max_s": 0.0, "over_5ms": 0, "over_20ms": 0},
}
_started = [0.0, 0.0]


def _timed(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _started[0], _started[1] = time.perf_counter(), time.thread_time()
        return
    generation = info["generation"]
    took, cpu = time.perf_counter() - _started[0], time.thread_time() - _started[1]
    TOTALS["collections"][generation] += 1
    TOTALS["seconds"][generation] += took
    TOTALS["cpu_s"][generation] += cpu
    TOTALS["max_s"][generation] = max(TOTALS["max_s"][generation], took)
    TOTALS["max_cpu_s"][generation] = max(TOTALS["max_cpu_s"][generation], cpu)
    if cpu > LONG_PAUSE_S and len(TOTALS["long"]) < MAX_KEPT:
        TOTALS["long"].append([generation, cpu, info.get("collected", 0)])


def _sample_lag(loop: asyncio.AbstractEventLoop, due: float, cpu_then: float) -> None:
    late = loop.time() - due
    cpu_now = time.thread_time()
    busy, spent = TOTALS["busy"], cpu_now - cpu_then
    busy["max_s"] = max(busy["max_s"], spent)
    busy["over_5ms"] += spent > 0.005
    busy["over_20ms"] += spent > 0.020
    lag = TOTALS["lag"]
    lag["samples"] += 1
    lag["sum_s"] += late
    lag["max_s"] = max(lag["max_s"], late)
    lag["over_5ms"] += late > 0.005
    lag["over_20ms"] += late > 0.020
    next_due = loop.time() + LAG_EVERY_S
    loop.call_at(next_due, _sample_lag, loop, next_due, cpu_now)


def _settle_and_sample() -> None:
    settle = sidecar.process.settle_memory
    settle()
    loop = asyncio.get_running_loop()
    due = loop.time() + LAG_EVERY_S
    loop.call_at(due, _sample_lag, loop, due, time.thread_time())


def main() -> None:
    """Parse our options, set the collector up, then run `sidecar` with the rest."""
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="gc_probe")
    parser.add_argument("out", type=Path)
    parser.add_argument("--threshold", help="gc.set_threshold(G0, G1, G2)")
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() after the imports")
    parser.add_argument("--sidecar-threshold", help="the thresholds the sidecar sets once started")
    args = parser.parse_args(argv[:split])
    if args.threshold:
        gc.set_threshold(*(int(x) for x in args.threshold.split(",")))
    if args.freeze:
        gc.freeze()
    if args.sidecar_threshold:
        thresholds = tuple(int(x) for x in args.sidecar_threshold.split(","))
        sidecar.process.GC_THRESHOLDS = thresholds  # type: ignore[assignment]
    sidecar.server.settle_memory = _settle_and_sample  # type: ignore[attr-defined]

    def dump(signum: int, frame: FrameType | None) -> None:
        data = {**TOTALS, "threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
        args.out.write_text(json.dumps(data))

    signal.signal(signal.SIGUSR1, dump)
    gc.callbacks.append(_timed)
    raise SystemExit(sidecar_main(argv[split + 1 :]))


if __name__ == "__main__":
    main()
