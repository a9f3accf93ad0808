"""Running the sidecar as a process: set the process up (`process`), listen, drain on
SIGTERM/SIGINT, reload routes on SIGHUP. A listener that cannot bind its address ends the run
with `workers.CannotStart` (no traceback, no restart)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

from .app import client_guard, create_app, split_host_port
from .config import ConfigError, Settings, load_settings
from .config.advice import advice
from .http.listener import GuardedAppRunner
from .logs import setup_logging
from .metrics import METRICS
from .process import (
    give_back_large_blocks,
    pack_with_hiredis,
    raise_open_files_limit,
    settle_memory,
)
from .routing import RUNTIME
from .workers import cannot_listen, die_with_supervisor, in_worker

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


async def serve(settings: Settings, config_path: Path) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight calls within `shutdown_grace`."""
    die_with_supervisor()
    give_back_large_blocks()
    pack_with_hiredis()
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
    try:
        await runner.setup()  # the admin listener binds here
    except OSError as error:
        raise cannot_listen(error, settings.admin_listen) or error from None
    if stop.is_set():  # told to stop while starting up: never listen
        return
    host, port = split_host_port(settings.listen)
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_port=in_worker() or None)
    try:
        await site.start()
    except OSError as error:
        raise cannot_listen(error, settings.listen) or error from None
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
