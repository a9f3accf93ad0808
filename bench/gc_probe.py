"""Runs the sidecar with its cyclic garbage collector timed: for the benchmarks only.

    python -m bench.gc_probe OUT.json [--threshold G0,G1,G2] [--freeze] -- run -c CONFIG

`gc.callbacks` add up the collections and the seconds spent in them per generation; SIGUSR1
writes the totals so far to OUT.json (the benchmark reads them before and after a phase).
`--threshold` and `--freeze` change the collector before the sidecar starts, to see what a
setting would save; nothing of this is in the sidecar itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from sidecar.cli import main as sidecar_main

TOTALS: dict[str, Any] = {"collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0]}
_started = [0.0]


def _timed(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    generation = info["generation"]
    TOTALS["collections"][generation] += 1
    TOTALS["seconds"][generation] += time.perf_counter() - _started[0]


def main() -> None:
    """Parse our options, set the collector up, then run `sidecar` with the rest."""
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="gc_probe")
    parser.add_argument("out", type=Path)
    parser.add_argument("--threshold", help="gc.set_threshold(G0, G1, G2)")
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() after the imports")
    args = parser.parse_args(argv[:split])
    if args.threshold:
        gc.set_threshold(*(int(x) for x in args.threshold.split(",")))
    if args.freeze:
        gc.freeze()

    def dump(signum: int, frame: FrameType | None) -> None:
        data = {**TOTALS, "threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
        args.out.write_text(json.dumps(data))

    signal.signal(signal.SIGUSR1, dump)
    gc.callbacks.append(_timed)
    raise SystemExit(sidecar_main(argv[split + 1 :]))


if __name__ == "__main__":
    main()
