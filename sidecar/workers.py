"""`workers: N`: N worker processes share the listeners (SO_REUSEPORT, Linux), each with its own
completion reader, webhook services and held calls; a supervisor keeps them running.

The supervisor (the `sidecar run` process itself) starts the workers (`sidecar run` again,
told it is worker i), restarts one that dies (with a growing pause if it keeps dying), passes
SIGHUP on (each worker reloads) and SIGTERM/SIGINT on (each drains within `shutdown_grace`),
then exits. Metrics go through prometheus_client's multiprocess mode: every worker writes its
samples to a shared directory, and `/metrics`, whichever worker answers it, sums them (gauges of
live workers only: held calls, connections). That directory is made fresh in `$TMPDIR` (else the
system's temporary directory), so a read-only root filesystem needs a writable one mounted
there (on Kubernetes, an emptyDir at /tmp).

What no restart can mend ends the run at once, said in one line, with exit code `CANNOT_START`:
a listener's address that cannot be bound (in use, not permitted), checked by the supervisor
before any worker starts and by each worker as it binds; no writable metrics directory.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from .config import Settings

logger = logging.getLogger(__name__)

WORKER_ENV = "SIDECAR_WORKER_INDEX"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CANNOT_START = 78  # sysexits' EX_CONFIG: what a restart cannot mend (a port in use, say)
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


class CannotStart(Exception):
    """Something a restart cannot mend: the process exits with `CANNOT_START`, saying why."""


def cannot_listen(error: OSError, address: str) -> CannotStart | None:
    """`error` from binding `address`, as a `CannotStart` when it is about the address (in
    use, not permitted, not this host's); None for any other OSError."""
    if error.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        return None
    reason = os.strerror(error.errno).lower() if error.errno else str(error)
    return CannotStart(f"cannot listen on {address}: {reason}")


def check_listen(address: str) -> None:
    """Bind `address` as the workers will (SO_REUSEPORT) and let it go: CannotStart when they
    could not."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, int(port)))
        except OSError as error:
            raise cannot_listen(error, address) or error from None


def metrics_directory() -> str:
    """A fresh directory for the workers' metrics, in `$TMPDIR` when set (never another one
    instead), else in the system's temporary directory; CannotStart when none can be made."""
    try:
        return tempfile.mkdtemp(prefix="sidecar-metrics-", dir=os.environ.get("TMPDIR") or None)
    except OSError as error:
        where = os.environ.get("TMPDIR") or "any temporary directory"
        raise CannotStart(
            f"workers need a writable directory for their metrics, and {where} is not "
            f"({error.strerror or error}): mount a writable volume and point TMPDIR at it (on "
            "Kubernetes with readOnlyRootFilesystem, an emptyDir at /tmp)"
        ) from None


class Supervisor:
    """Runs and watches the workers."""

    def __init__(self, settings: Settings, config_path: Path, count: int) -> None:
        self.settings = settings
        self.config_path = config_path
        self.count = count
        self.metrics_dir = ""
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.failed = 0  # the exit code, when a worker could not start at all
        self._stop = asyncio.Event()

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
            if code == CANNOT_START:  # it said why; starting it again would say it again
                logger.error(
                    "a worker cannot start; stopping",
                    extra={"worker": index, "pid": proc.pid, "code": code},
                )
                self.failed = CANNOT_START
                self._stop.set()
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
        """Start the workers and supervise them until SIGTERM/SIGINT; 0 when they all stopped,
        `CANNOT_START` when they could not (the reason logged once)."""
        check_listen(self.settings.listen)
        check_listen(self.settings.admin_listen)
        self.metrics_dir = metrics_directory()
        loop = asyncio.get_running_loop()
        stop = self._stop
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
        return self.failed
