"""Profiles of the sidecar under the proxy benchmark's loads (`proxy_bench --profile`).

(a) the pass-through under `wrk -c50`, (b) the synchronised intake (N calls opened at once, until
all are held). py-spy samples the running sidecar from outside (`record --format raw
--function`, 200 Hz, on-CPU samples only); `flame.write_profile` turns each into an SVG flame
graph and tables in `docs/bench/profiles/`. Without py-spy (or when it cannot attach), the sidecar
runs under cProfile instead and only the tables are written.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from . import loadgen
from .flame import write_profile
from .harness import spawn
from .proxy_bench import (
    DOCS,
    Env,
    Sidecar,
    environment,
    latency_point,
    open_background,
    running,
    until_held,
    until_held_zero,
)

OUT = DOCS / "profiles"
RATE_HZ = 200


def py_spy() -> str | None:
    """The py-spy binary (beside this interpreter, or on PATH)."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Recorder:
    """py-spy attached to `pid` until `stop()`, or, with `cprofile`, nothing to do here."""

    def __init__(self, env: Env, pid: int, name: str, native: bool = False) -> None:
        self.path = env.tmp / f"{name}.collapsed"
        binary = py_spy()
        assert binary is not None
        command = [binary, "record", "-p", str(pid), "-r", str(RATE_HZ), "-f", "raw"]
        command += ["--function", "-o", str(self.path), *(["--native"] if native else [])]
        self.proc = spawn(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def stop(self) -> Path:
        """Stop sampling (py-spy writes its file on SIGINT)."""
        self.proc.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(self.proc.communicate, None, 60)
        if not self.path.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode()[-500:]}")
        return self.path


async def passthrough_load(env: Env, sc: Sidecar, seconds: float) -> None:
    """What is sampled for (a)."""
    await loadgen.closed_loop(
        f"{sc.base}/pass", connections=50, seconds=seconds, cores=env.load_cores, workdir=env.tmp
    )


async def intake_load(env: Env, sc: Sidecar, session: aiohttp.ClientSession, n: int) -> None:
    """What is sampled for (b): `n` calls opened at once, until all are held."""
    background = await open_background(env, sc, session, n)
    try:
        await until_held(session, sc, n, timeout_s=180)
    finally:
        await background.close()


async def profile(args: argparse.Namespace) -> int:
    """Record both profiles; print the tables."""
    use_pyspy = py_spy() is not None
    async with environment(args) as (env, r):
        clients = env.optional_keys.get("clients", "")
        titles = {
            "passthrough": f"sidecar pass-through, wrk -c50 for {args.seconds:g} s",
            "sync-intake": f"sidecar synchronised intake: {args.intake:,} calls opened at once, "
            "until all are held",
        }
        suffix = "-native" if args.native else ""
        for name in titles:
            cprofile = None if use_pyspy else env.tmp / f"{name}.pstats"
            timeout = aiohttp.ClientTimeout(total=600)
            async with (
                running(Sidecar(env, env.proxy_cores, clients, cprofile=cprofile)) as sc,
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0), timeout=timeout
                ) as session,
            ):
                # Warm-up outside the samples.
                if name == "passthrough":
                    await passthrough_load(env, sc, 1)
                else:
                    await latency_point(session, r, sc, env, 0, 1000, args.rate)
                recorder = Recorder(env, sc.pid, name, args.native) if use_pyspy else None
                await asyncio.sleep(0.5)  # py-spy attached
                if name == "passthrough":
                    await passthrough_load(env, sc, args.seconds)
                else:
                    await intake_load(env, sc, session, args.intake)
                if recorder is not None:
                    collapsed = await recorder.stop()
                    tables = write_profile(collapsed, OUT, name + suffix, titles[name] + suffix)
                    print(f"\n# {titles[name]}\n{tables}", flush=True)
                if name == "sync-intake":
                    await until_held_zero(session, sc)
            if cprofile is not None:  # the sidecar has exited: its profile is written
                print(f"\n# {titles[name]} (cProfile; py-spy is not installed)\n")
                print(cprofile_tables(cprofile, OUT / f"{name}-top.md", titles[name]))
    print(f"profiles written to {OUT}")
    return 0


def cprofile_tables(path: Path, out: Path, title: str, limit: int = 30) -> str:
    """Top functions by self (tottime) and cumulative time from a cProfile dump."""
    stats = pstats.Stats(str(path))
    total = max(stats.total_tt, 1e-9)  # type: ignore[attr-defined]
    rows = stats.stats  # type: ignore[attr-defined]

    def name(key: tuple[str, int, str]) -> str:
        file, _, func = key
        for marker in ("site-packages/", "/lib/python3.11/", "/wt-bench/"):
            if marker in file:
                file = file.split(marker, 1)[1]
        return f"{file}:{func}"

    by_self = sorted(rows.items(), key=lambda kv: kv[1][2], reverse=True)[:limit]
    by_cum = sorted(rows.items(), key=lambda kv: kv[1][3], reverse=True)[:limit]
    lines = [
        f"# {title} (cProfile, whole process lifetime)\n",
        "| self % | function |",
        "|---:|---|",
    ]
    lines += [f"| {v[2] / total:5.1%} | `{name(k)}` |" for k, v in by_self]
    lines += ["", "| cumulative % | function |", "|---:|---|"]
    lines += [f"| {v[3] / total:5.1%} | `{name(k)}` |" for k, v in by_cum]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text
