"""Running the sidecar as a process: listen, drain on SIGTERM/SIGINT, reload routes on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import resource
import signal
import sys
from pathlib import Path

from aiohttp import web

from .app import client_guard, create_app, split_host_port
from .config import ConfigError, Settings, load_settings
from .config.advice import advice
from .http.listener import GuardedAppRunner
from .logs import setup_logging
from .metrics import METRICS
from .routing import RUNTIME
from .workers import die_with_supervisor, in_worker

logger = logging.getLogger(__name__)

# What a reload changes; every other key (listeners, connections, limits, webhooks, ...) only
# changes on restart, and a reload that changes one says so.
RELOADABLE = frozenset({"routes", "upstream", "log", "correlation_header"})


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """The keys `new` changes that a reload cannot apply."""
    return [
        key
        for key in type(new).model_fields
        if key not in RELOADABLE and getattr(new, key) != getattr(old, key)
    ]


def reload_config(app: web.Application, path: Path) -> bool:
    """Load `path`; on success swap the live routes, on failure keep the running config."""
    runtime, metrics = app[RUNTIME], app[METRICS]
    try:
        settings = load_settings(path, env=os.environ)
    except ConfigError as error:
        metrics.config_reloads.labels("failed").inc()
        logger.error(
            "config reload refused; keeping the running config",
            extra={"config": str(path), "problems": error.problems},
        )
        return False
    ignored = restart_only_changes(runtime.settings, settings)
    if ignored:
        logger.warning(
            "config reloaded, but these keys change only on restart; still running with the "
            "old values",
            extra={"keys": ignored},
        )
        settings = settings.model_copy(update={k: getattr(runtime.settings, k) for k in ignored})
    if settings.log != runtime.settings.log:
        setup_logging(settings.log.level, settings.log.format)
    runtime.reload(settings)
    metrics.config_reloads.labels("ok").inc()
    logger.info("config reloaded", extra={"config": str(path), "routes": len(settings.routes)})
    return True


SPARE_FILES = 256  # Redis, logs, the admin listener's few clients, the event loop itself


def files_wanted(settings: Settings) -> int:
    """Open files a busy process may need: every client connection the proxy listener admits,
    every pooled upstream connection, and a spare for the rest."""
    return settings.clients.max_connections + settings.proxy.max_connections + SPARE_FILES


def raise_open_files_limit(settings: Settings) -> None:
    """Raise the soft open-files limit to the hard one, and warn when even that is too low for
    `clients.max_connections` (past the limit accept() fails and connections are dropped)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = files_wanted(settings)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        logger.warning(
            "the open-files limit is below what clients.max_connections needs; lower "
            "max_connections or raise the limit (ulimit -n)",
            extra={
                "limit": soft,
                "wanted": wanted,
                "max_connections": settings.clients.max_connections,
            },
        )


# The collector's first generation is collected after this many new objects (CPython's default:
# 700). Each held call leaves a handful of long-lived objects; at the default, the collector
# walked the held calls again and again and took half the CPU of a burst of new calls.
GC_THRESHOLDS = (50_000, 20, 100)


def settle_memory() -> None:
    """Once started: move what startup made out of the collector's way (`gc.freeze`) and
    collect the youngest generation less often; a held call is not garbage."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept instead of raised


def give_back_large_blocks() -> None:
    """glibc serves allocations over its mmap threshold with their own mappings, returned to
    the system when freed, but raises the threshold (up to 32 MiB) each time such a block is
    freed: after a burst of large events or bodies, later ones come from the heap and the
    process keeps hundreds of MiB it no longer uses. Fixing the threshold keeps it lean.
    `MALLOC_MMAP_THRESHOLD_` in the environment overrides this; elsewhere than glibc a no-op."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return
    m_mmap_threshold = -3
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        return  # not glibc (musl, say): its allocator has no such threshold


async def serve(settings: Settings, config_path: Path) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight calls within `shutdown_grace`."""
    die_with_supervisor()
    give_back_large_blocks()
    raise_open_files_limit(settings)
    for said in advice(settings):
        logger.warning(said)
    app = create_app(settings)
    # aiohttp reads a shutdown_timeout of 0 as "no limit"; a grace of 0 means "don't wait".
    grace_s = max(settings.shutdown_grace, 0.001)
    runner = GuardedAppRunner(
        app, guard=client_guard(app, "proxy"), shutdown_timeout=grace_s, access_log=None
    )
    # Handlers first: a signal during startup must not kill the process with its default action.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_config, app, config_path)
    try:
        await _serve_until(stop, runner, settings)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        logger.info("stopped")


async def _serve_until(stop: asyncio.Event, runner: web.AppRunner, settings: Settings) -> None:
    await runner.setup()
    if stop.is_set():  # told to stop while starting up: never listen
        return
    host, port = split_host_port(settings.listen)
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_port=in_worker() or None)
    await site.start()
    logger.info(
        "sidecar listening",
        extra={
            "listen": settings.listen,
            "upstream": settings.upstream,
            "routes": [r.name for r in settings.routes],
        },
    )
    settle_memory()
    await stop.wait()
    logger.info("draining", extra={"grace_s": settings.shutdown_grace})
