"""A minimal asynchronous API for the benchmarks (run as its own process).

POST /jobs, /pjobs  → 202 + Location /jobs/{id} (id = X-Correlation-ID)
GET  /jobs/{id}     → 202 until `--done-after` seconds after creation, then 200 {"id": ...}
POST /plain         → 200 at once (the pass-through baseline)
GET  /pass          → 200 with a 50-byte JSON (the proxy benchmark's pass-through)
GET  /stats         → {"polls": n}
"""

from __future__ import annotations

import argparse
import time

import redis.asyncio as aioredis
from aiohttp import web

CREATED = web.AppKey("created", dict[str, float])
STATS = web.AppKey("stats", dict[str, int])
DONE_AFTER = web.AppKey("done_after", float)
REDIS = web.AppKey("redis", aioredis.Redis)


async def create(request: web.Request) -> web.Response:
    cid = request.headers["X-Correlation-ID"]
    request.app[CREATED][cid] = time.monotonic()
    stream = request.headers.get("X-Bench-Complete")
    if stream:  # the completion is published while the sidecar holds the call, before the 202
        await request.app[REDIS].xadd(
            stream, {"correlation_id": cid, "type": "Done", "payload": "{}"}
        )
    return web.json_response({"id": cid}, status=202, headers={"Location": f"/jobs/{cid}"})


async def status(request: web.Request) -> web.Response:
    request.app[STATS]["polls"] += 1
    cid = request.match_info["id"]
    created = request.app[CREATED].get(cid)
    if created is None or time.monotonic() - created < request.app[DONE_AFTER]:
        return web.json_response({"id": cid, "state": "pending"}, status=202)
    return web.json_response({"id": cid, "state": "done"})


async def plain(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"ok": True})


PASS_BODY = b'{"id":"bench-0001","status":"done","value":123456}'


async def passthrough(request: web.Request) -> web.Response:
    return web.Response(body=PASS_BODY, content_type="application/json")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--done-after", type=float, default=0.3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    app = web.Application()
    app[CREATED] = {}
    app[STATS] = {"polls": 0}
    app[DONE_AFTER] = args.done_after
    app[REDIS] = aioredis.Redis.from_url(args.redis_url)
    app.router.add_post("/jobs", create)
    app.router.add_post("/pjobs", create)
    app.router.add_get("/jobs/{id}", status)
    app.router.add_post("/plain", plain)
    app.router.add_get("/stats", stats)
    app.router.add_get("/pass", passthrough)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, backlog=4096)


if __name__ == "__main__":
    main()
