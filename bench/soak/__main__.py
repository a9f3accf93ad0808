"""`python -m bench.soak` (`make soak SOAK_ARGS=...`): run one soak, print the ledger, write it as
JSON and markdown (docs/soak/ by default). Ctrl-C stops every process the run started."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from .ledger import markdown
from .run import Options, soak
from .stack import ROOT


def parse_args(argv: list[str] | None) -> tuple[Options, Path]:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    parser.add_argument("--replicas", type=int, default=3, help="sidecar processes (default 3)")
    parser.add_argument("--sentinel", action="store_true", help="a Sentinel set, with failovers")
    parser.add_argument(
        "--other",
        "--sidecar",
        dest="checkout",
        type=Path,
        default=ROOT,
        help="run the replicas from PATH/.venv/bin/sidecar (default: this checkout)",
    )
    parser.add_argument("--rate", type=float, default=50.0, help="calls/s (default 50)")
    parser.add_argument("--burst", type=float, default=5.0, help="burst factor (default 5)")
    parser.add_argument("--clients", type=int, default=4, help="client tenants (default 4)")
    parser.add_argument("--faults", choices=("full", "short", "none"), default="full")
    parser.add_argument("--fsync", choices=("always", "everysec", "no"), default="everysec")
    parser.add_argument("--drain", type=float, default=90.0, help="seconds to wait at the end")
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--label", default="", help="names the output files and the ledger")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "soak", help="directory")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 120 or not 1 <= args.replicas <= 8 or not 0 < args.rate <= 500:
        parser.error("--minutes in (0, 120], --replicas in [1, 8], --rate in (0, 500]")
    if not 1 <= args.clients <= 50 or not 0 <= args.drain <= 600:
        parser.error("--clients in [1, 50], --drain in [0, 600]")
    options = Options(
        minutes=args.minutes,
        replicas=args.replicas,
        sentinel=args.sentinel,
        checkout=args.checkout,
        clients=args.clients,
        rate=args.rate,
        burst_factor=args.burst,
        faults=args.faults,
        fsync=args.fsync,
        drain_s=args.drain,
        seed=args.seed,
        label=args.label,
    )
    return options, args.out


async def main_async(options: Options) -> dict[str, object]:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C too: the run's finally stops everything
        loop.add_signal_handler(sig, task.cancel)
    return await soak(options)


def main(argv: list[str] | None = None) -> int:
    options, out = parse_args(argv)
    try:
        ledger = asyncio.run(main_async(options))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    text = markdown(ledger)
    print(text)
    name = options.label or ("soak-sentinel" if options.sentinel else "soak")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(ledger, indent=1, default=str) + "\n")
    (out / f"{name}.md").write_text(text)
    print(f"written: {out / name}.json and .md; replica logs in {ledger['logs_directory']}")
    deliveries = ledger["deliveries"]
    assert isinstance(deliveries, dict)
    return 0 if deliveries["missing"] == 0 and deliveries["dropped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
