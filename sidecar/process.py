"""What `sidecar run` sets for the whole process at start, once, before it serves: things a
library must not do behind its embedder's back, so the app itself (`create_app`) never does them.

    open files      the soft limit raised to the hard one, and a warning when even that cannot
                    hold `clients.max_connections` plus the upstream pool
    memory          glibc's mmap threshold fixed, so a burst of large events is given back
    collector       once started, what startup made is frozen out of the collector's way and
                    the youngest generation is collected less often (`settle_memory`)
    Redis commands  encoded by hiredis's C packer instead of redis-py's Python one (the same
                    bytes, about half the client CPU of a burst of tracking writes); redis-py's
                    asyncio connections have no such option, so this replaces their packer for
                    the whole process: an embedder that wants it calls `pack_with_hiredis()`
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import resource
import sys
from typing import Any

from redis.asyncio.connection import AbstractConnection

from .config import Settings

logger = logging.getLogger("sidecar.server")

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


python_pack_command = AbstractConnection.pack_command  # redis-py's own (kept for comparison)


def pack_with_hiredis() -> bool:
    """Encode commands with hiredis's C packer instead of redis-py's Python one (its asyncio
    connections have no such option; its sync ones use hiredis when installed). The bytes are
    the same; a burst of calls spends about half as much CPU on Redis commands. Applies to
    every asyncio connection class (plain, TLS, unix, Sentinel-managed, cluster nodes); False
    when hiredis (or its packer) is missing, and redis-py's own packer stays."""
    try:
        from hiredis import pack_command
    except ImportError:
        return False

    def packed(self: AbstractConnection, *args: Any) -> list[bytes]:
        first = args[0]
        # Like redis-py: a command name with a space ("XINFO CONSUMERS") is sent as words.
        if (isinstance(first, str) and " " in first) or (
            isinstance(first, bytes) and b" " in first
        ):
            args = (*first.split(), *args[1:])
        return [pack_command(args)]

    AbstractConnection.pack_command = packed  # type: ignore[method-assign]
    return True
