"""What `sidecar run` sets for the whole process at start, once, before it serves: things a
library must not do behind its embedder's back, so the app itself (`create_app`) never does them.

    open files      the soft limit raised to the hard one; `clients.max_connections: auto`
                    derived from it (what the limit holds besides the upstream pool, Redis,
                    webhook deliveries, brokers and the rest) and stated in one line, or a
                    warning when the limit cannot hold an explicit number
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

# What a process needs open besides its clients' connections, by whom (the reserve of
# `clients.max_connections: auto`, and what the warning about an explicit number counts):
SPARE_FILES = 256  # the rest: logs, listening sockets, the admin listener's few clients, DNS,
#                    the event loop itself, the workers' metric files
REDIS_FILES = 80  # one server or a Sentinel-guarded primary: the shared pool
#                   (connections.POOL_SIZE, 64), the blocking readers, the probe, the sentinels
REDIS_CLUSTER_FILES = 800  # `redis_cluster: true`: three primaries, up to 256 pooled connections
#                            to each, and the readers'
SOURCE_FILES = 16  # per broker a route waits on: its two reads, each to a few brokers
UNLIMITED_FILES = 1_048_576  # an unlimited open-files limit counts as Linux's default ceiling


def reserved_files(settings: Settings) -> dict[str, int]:
    """Open files a busy process may need besides its client connections, by what needs
    them: every pooled upstream connection, Redis, webhook deliveries (with Redis), the
    brokers routes wait on, and a spare for the rest."""
    reserve = {"the upstream pool": settings.proxy.max_connections}
    if settings.redis_url is not None:
        reserve["Redis"] = REDIS_CLUSTER_FILES if settings.cluster_mode else REDIS_FILES
        reserve["webhook deliveries"] = settings.webhooks.delivery_connections
    if settings.sources_used:
        reserve["brokers"] = SOURCE_FILES * len(settings.sources_used)
    reserve["the rest"] = SPARE_FILES
    return reserve


def derive_max_connections(limit: int, settings: Settings) -> int:
    """`clients.max_connections: auto` under the open-files `limit`: what the limit holds
    besides `reserved_files`, so accept() never fails for want of a descriptor; at least a
    quarter of the limit when the reserve takes more (a limit too low for the upstream pool
    is warned about at start)."""
    return max(limit - sum(reserved_files(settings).values()), limit // 4, 1)


def open_files_limit() -> int:
    """The process's soft open-files limit now (an unlimited one as `UNLIMITED_FILES`)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED_FILES if soft == resource.RLIM_INFINITY else soft


def raise_to_hard_limit() -> int:
    """Raise the soft open-files limit to the hard one, where the system allows it (macOS
    refuses an unlimited one); the limit then."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return open_files_limit()


def client_connections(settings: Settings, limit: int | None = None) -> int:
    """What `clients.max_connections` comes to in this process: the number given, or `auto`
    derived from `limit` (default: the open-files limit now, which `sidecar run` has raised
    before any listener is made)."""
    given = settings.clients.max_connections
    if given != "auto":
        return given
    return derive_max_connections(open_files_limit() if limit is None else limit, settings)


def raise_open_files_limit(settings: Settings) -> int:
    """At start: raise the soft open-files limit to the hard one, and say what that means for
    client connections: with `auto`, the number it comes to, in one line; a warning when the
    limit cannot hold them beside the reserve (past the limit accept() fails and connections
    are dropped). Returns the connections allowed per listener."""
    limit = raise_to_hard_limit()
    reserve = reserved_files(settings)
    reserved = sum(reserve.values())
    allowed = client_connections(settings, limit)
    auto = settings.clients.max_connections == "auto"
    if auto:
        kept = ", ".join(f"{what} {n}" for what, n in reserve.items())
        logger.info(
            f"clients.max_connections: auto, {allowed} per listener: the open-files limit "
            f"{limit} less {reserved} kept for {kept}",
            extra={"max_connections": allowed, "open_files_limit": limit, "reserved": reserve},
        )
    if allowed + reserved > limit:
        logger.warning(
            "the open-files limit is below what clients.max_connections needs; lower "
            f"{'proxy.' if auto else ''}max_connections or raise the limit (ulimit -n)",
            extra={"limit": limit, "wanted": allowed + reserved, "max_connections": allowed},
        )
    return allowed


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
