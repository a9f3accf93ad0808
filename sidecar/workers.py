"""`workers: N`: N worker processes share the listeners (SO_REUSEPORT, Linux), each with its own
completion reader, webhook services and held calls; a supervisor keeps them running.

The supervisor (the `sidecar run` process itself) starts the workers (`sidecar run` again,
told it is worker i), restarts one that dies (with a growing pause if it keeps dying), passes
SIGHUP on (each worker reloads) and SIGTERM/SIGINT on (each drains within `shutdown_grace`),
then exits. Metrics go through prometheus_client's multiprocess mode: every worker writes its
samples to a shared directory, and `/metrics`, whichever worker answers it, sums them (gauges of
live workers only: held calls, connections).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .config import Settings

logger = logging.getLogger(__name__)

WORKER_ENV = "SIDECAR_WORKER_INDEX"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
STABLE_S = 10.0  # a worker that lived this long restarts at once when it dies


def worker_count(settings: Settings) -> int:
    """How many workers `workers` asks for (`auto`: one per core)."""
    if settings.workers == "auto":
        return max(1, os.cpu_count() or 1)
    return int(settings.workers)


PARENT_ENV = "SIDECAR_SUPERVISOR_PID"


def in_worker() -> bool:
    """True in a worker process started by the supervisor (its listeners share ports)."""
    return WORKER_ENV in os.environ


def die_with_supervisor() -> None:
    """In a worker: be sent SIGTERM (and so drain and exit) when the supervisor dies, however
    it dies, so no worker outlives it holding the ports (Linux; elsewhere a no-op)."""
    if not in_worker() or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != os.environ.get(PARENT_ENV, str(os.getppid())):
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor died before we asked


class Supervisor:
    """Runs and watches the workers."""

    def __init__(self, settings: Settings, config_path: Path, count: int) -> None:
        self.settings = settings
        self.config_path = config_path
        self.count = count
        self.metrics_dir = tempfile.mkdtemp(prefix="sidecar-metrics-")
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False

    def _env(self, index: int) -> dict[str, str]:
        return {
            **os.environ,
            WORKER_ENV: str(index),
            METRICS_ENV: self.metrics_dir,
            PARENT_ENV: str(os.getpid()),
        }

    async def _start(self, index: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar.cli",
            "run",
            "-c",
            str(self.config_path),
            env=self._env(index),
        )
        self.procs[index] = proc
        logger.info("worker started", extra={"worker": index, "pid": proc.pid})
        return proc

    async def _watch(self, index: int) -> None:
        """Keep worker `index` running until the supervisor stops."""
        pause = RESTART_MIN_S
        while not self.stopping:
            started = time.monotonic()
            proc = await self._start(index)
            code = await proc.wait()
            self._forget(proc.pid)
            if self.stopping:
                return
            lived = time.monotonic() - started
            if lived > STABLE_S:
                pause = RESTART_MIN_S
            logger.warning(
                "worker exited; restarting it",
                extra={"worker": index, "pid": proc.pid, "code": code, "in_s": pause},
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_MAX_S)

    def _forget(self, pid: int) -> None:
        """Drop a dead worker's live gauges from the summed metrics (its counters stay)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def _signal(self, sig: signal.Signals) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(sig)

    async def run(self) -> int:
        """Start the workers and supervise them until SIGTERM/SIGINT; 0 when they all stopped."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._signal, signal.SIGHUP)
        logger.info("starting workers", extra={"workers": self.count})
        watchers = [asyncio.create_task(self._watch(i)) for i in range(self.count)]
        try:
            await stop.wait()
        finally:
            self.stopping = True
            logger.info("stopping workers", extra={"grace_s": self.settings.shutdown_grace})
            self._signal(signal.SIGTERM)
            deadline = self.settings.shutdown_grace + 5.0
            try:
                async with asyncio.timeout(deadline):
                    await asyncio.gather(*watchers, return_exceptions=True)
            except TimeoutError:
                logger.error("workers did not stop in time; killing them")
                self._signal(signal.SIGKILL)
                await asyncio.gather(*watchers, return_exceptions=True)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return 0
