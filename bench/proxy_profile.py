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
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from devtools.redis_server import free_port

from . import loadgen
from .flame import write_profile
from .harness import ROOT, cpu_seconds, pinned, python_command, spawn, stop_process, wait_http
from .proxy_rig import (
    DOCS,
    Background,
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
        self.started = time.monotonic()

    async def stop(self) -> Path:
        """Stop sampling (py-spy writes its file on SIGINT)."""
        self.proc.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(self.proc.communicate, None, 60)
        if not self.path.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode()[-500:]}")
        said = err.decode().strip().splitlines()
        elapsed = time.monotonic() - self.started
        print(f"py-spy sampled for {elapsed:.1f} s: {said[-1] if said else ''}", flush=True)
        return self.path


async def passthrough_load(env: Env, sc: Sidecar, seconds: float) -> None:
    """What is sampled for (a)."""
    await loadgen.closed_loop(
        f"{sc.base}/pass", connections=50, seconds=seconds, cores=env.load_cores, workdir=env.tmp
    )


_OPEN: dict[int, Background] = {}  # a sidecar's held background calls, by its pid


async def intake_load(
    env: Env, sc: Sidecar, session: aiohttp.ClientSession, n: int, close: bool = True
) -> None:
    """What is sampled for (b): `n` calls opened, until all are held (then hung up, or left
    for `sc_background_close`)."""
    background = await open_background(env, sc, session, n)
    try:
        await until_held(session, sc, n, timeout_s=180)
    finally:
        if close:
            await background.close()
        else:
            _OPEN[sc.pid] = background


async def sc_background_close(sc: Sidecar) -> None:
    """Hang up the calls `intake_load(close=False)` left held."""
    background = _OPEN.pop(sc.pid, None)
    if background is not None:
        await background.close()


async def profile(args: argparse.Namespace) -> int:
    """Record both profiles; print the tables."""
    use_pyspy = py_spy() is not None
    async with environment(args) as (env, r):
        clients = env.optional_keys.get("clients", "")
        titles = {
            "passthrough": f"sidecar pass-through, wrk -c50 for {args.seconds:g} s",
            "sync-intake": f"sidecar synchronised intake: {args.intake:,} calls, 500 connections "
            "at a time, until all are held",
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
        if use_pyspy:
            name, title = (
                f"passthrough-minimal{suffix}",
                (f"minimal aiohttp proxy, the same pass-through load{suffix}"),
            )
            print(f"\n# {title}\n{await profile_minimal(env, args, name, title)}", flush=True)
        if not args.native:
            print("\n# the cyclic garbage collector (gc.callbacks timing, no sampling)\n")
            table = await gc_experiment(env, r, args)
            (OUT / "gc.md").write_text(table)
            print(table)
    print(f"profiles written to {OUT}")
    return 0


async def profile_minimal(env: Env, args: argparse.Namespace, name: str, title: str) -> str:
    """The minimal proxy under the same pass-through load: the baseline to diff against."""
    port = free_port()
    command = python_command(
        "-m", "bench.minimal_proxy", "--port", str(port), "--upstream", env.upstream
    )
    with (env.tmp / "minimal-profile.log").open("wb") as log:
        proc = spawn(pinned(command, env.proxy_cores), cwd=ROOT, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}/pass"
        await wait_http(url)
        await loadgen.closed_loop(
            url, connections=50, seconds=1, cores=env.load_cores, workdir=env.tmp
        )
        recorder = Recorder(env, proc.pid, name, args.native)
        await asyncio.sleep(0.5)
        await loadgen.closed_loop(
            url, connections=50, seconds=args.seconds, cores=env.load_cores, workdir=env.tmp
        )
        return write_profile(await recorder.stop(), OUT, name, title)
    finally:
        stop_process(proc)


# What-if settings of the collector: bench/gc_probe.py replaces the thresholds the sidecar sets
# once started (`process.GC_THRESHOLDS`).
GC_SETTINGS: tuple[tuple[str, list[str]], ...] = (
    ("the sidecar's thresholds (50000, 20, 100)", []),
    ("CPython's default thresholds (700, 10, 10)", ["--sidecar-threshold", "700,10,10"]),
    ("thresholds (5000, 10, 100)", ["--sidecar-threshold", "5000,10,100"]),
)


def _load_totals(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or half written
        return None
    return data


def _ask_totals(pid: int, path: Path) -> None:
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)


async def read_gc(pid: int, path: Path) -> dict[str, Any]:
    """The probe's totals now (SIGUSR1 makes it write them)."""
    _ask_totals(pid, path)
    for _ in range(100):
        data = _load_totals(path)
        if data is not None:
            return data
        await asyncio.sleep(0.02)
    raise RuntimeError("the GC probe did not answer")


async def gc_experiment(env: Env, r: aioredis.Redis, args: argparse.Namespace) -> str:
    """Per collector setting: GC share of the sidecar's CPU and CPU per request / per held call,
    in the pass-through (wrk -c50) and the intake (`--intake` calls until held)."""
    rows = [
        "| collector | pass-through: CPU per request, of which GC | intake: CPU per held call, "
        "of which GC | collections (gen 0/1/2) during the intake |",
        "|---|---|---|---|",
    ]
    for label, options in GC_SETTINGS:
        out = env.tmp / f"gc-{len(rows)}.json"
        clients = env.optional_keys.get("clients", "")
        sidecar = Sidecar(env, env.proxy_cores, clients, gc_probe=[str(out), *options])
        timeout = aiohttp.ClientTimeout(total=600)
        async with (
            running(sidecar) as sc,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=timeout
            ) as session,
        ):
            await passthrough_load(env, sc, 1)
            g0, cpu0 = await read_gc(sc.pid, out), cpu_seconds(sc.pid)
            load = await loadgen.closed_loop(
                f"{sc.base}/pass",
                connections=50,
                seconds=args.seconds,
                cores=env.load_cores,
                workdir=env.tmp,
            )
            g1, cpu1 = await read_gc(sc.pid, out), cpu_seconds(sc.pid)
            pt_cpu = (cpu1 - cpu0) / load.requests * 1e6
            pt_gc = (sum(g1["seconds"]) - sum(g0["seconds"])) / load.requests * 1e6
            await latency_point(session, r, sc, env, 0, 50, args.rate)
            g2, cpu2 = await read_gc(sc.pid, out), cpu_seconds(sc.pid)
            await intake_load(env, sc, session, args.intake, close=False)
            g3, cpu3 = await read_gc(sc.pid, out), cpu_seconds(sc.pid)
            await sc_background_close(sc)
            await until_held_zero(session, sc)
        n = args.intake
        in_cpu = (cpu3 - cpu2) / n * 1e6
        in_gc = (sum(g3["seconds"]) - sum(g2["seconds"])) / n * 1e6
        counts = "/".join(
            str(b - a) for a, b in zip(g2["collections"], g3["collections"], strict=True)
        )
        rows.append(
            f"| {label} | {pt_cpu:.0f} µs, GC {pt_gc:.1f} µs ({pt_gc / pt_cpu:.0%}) | "
            f"{in_cpu:.0f} µs, GC {in_gc:.0f} µs ({in_gc / in_cpu:.0%}) | {counts} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows) + "\n"


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
