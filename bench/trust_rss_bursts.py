"""RSS over repeated bursts of 1 MB completion events (is it bounded, and by what?).

Run: `.venv/bin/python -m bench.trust_rss_bursts --before PATH --after PATH`

A companion of `bench.trust_bench` (figure 3): one sidecar per version, on a throwaway
redis-server, gets `--bursts` bursts of 300 events of 1 MB each (a type its route lists, ids
nobody waits on); after each burst (and 6 s to settle) its RSS and `sidecar_stream_cache_bytes`
are read, and the stream is trimmed so Redis does not keep what was already read. Each version
runs twice: as is, and with glibc's `MALLOC_MMAP_THRESHOLD_=131072` (large blocks mapped and
unmapped one by one), which separates what the process holds from what the allocator keeps
after it was freed. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis

from devtools.redis_server import RedisServer, free_port

from .trust_bench import (
    ROOT,
    Sidecar,
    Version,
    config_for,
    delete_prefix,
    metric,
    new_prefix,
    running,
    scrape,
    wait_group,
)

MIB = 2**20


async def bursts(
    version: Version, tmp: Path, redis_url: str, count: int, size: int, mmap: bool
) -> list[dict[str, Any]]:
    prefix = new_prefix("bursts")
    stream = f"{prefix}:events"
    cfg = config_for(
        version,
        port=free_port(),
        admin=free_port(),
        upstream=9,
        prefix=prefix,
        redis_url=redis_url,
        stream=stream,
        log_level="warning",
    )
    name = f"{version.name}-bursts{'-mmap' if mmap else ''}"
    side = Sidecar(version, tmp, name, cfg)
    if mmap:
        side.extra_env = {"MALLOC_MMAP_THRESHOLD_": "131072"}
    r = aioredis.Redis.from_url(redis_url)
    out: list[dict[str, Any]] = []
    data = orjson.dumps({"blob": "x" * MIB}).decode()
    try:
        with running(side):
            await side.up("/readyz")
            await wait_group(r, stream)
            await asyncio.sleep(3.0)
            ps = side.ps
            out.append({"after": "start", "rss_mib": ps.memory_info().rss // MIB})
            async with aiohttp.ClientSession() as session:
                for burst in range(count):
                    for i in range(size):
                        await r.xadd(
                            stream,
                            {
                                "correlation_id": f"nobody-{burst}-{i}-{uuid.uuid4().hex[:6]}",
                                "type": "Done",
                                "payload": data,
                            },
                        )
                    await asyncio.sleep(6.0)
                    await r.xtrim(stream, maxlen=10)
                    cache = metric(await scrape(session, side.admin), "sidecar_stream_cache_bytes")
                    out.append(
                        {
                            "after": f"burst {burst + 1}",
                            "rss_mib": ps.memory_info().rss // MIB,
                            "cache_mib": None if cache is None else round(cache / MIB, 1),
                        }
                    )
    finally:
        side.stop()
        await delete_prefix(r, prefix)
        await r.aclose()
    return out


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    versions = [Version("before", Path(args.before)), Version("after", Path(args.after))]
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-trust-bursts-"))
    server = RedisServer().start()
    runs: list[dict[str, Any]] = []
    try:
        for run in range(args.repeat):
            results: dict[str, Any] = {}
            for v in versions:
                for mmap in (False, True):
                    key = f"{v.name}{' MALLOC_MMAP_THRESHOLD_=131072' if mmap else ''}"
                    results[key] = await bursts(v, tmp, server.url, args.bursts, args.events, mmap)
                    print(f"run {run + 1}", key, json.dumps(results[key]), flush=True)
            runs.append(results)
    finally:
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--events", type=int, default=300, help="1 MB events per burst")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "trust_rss_bursts.json"))
    args = parser.parse_args()
    runs = asyncio.run(main_async(args))
    Path(args.out).write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
