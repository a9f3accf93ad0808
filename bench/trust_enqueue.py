"""Put N webhook messages for one subscription straight into a sidecar's outbox.

Run by the interpreter of the sidecar version under test (its own venv), so the messages are
written by that version's `sidecar.webhooks.outbox.Outbox.enqueue_many`, in that version's key
layout: the older outbox takes `Outbox(redis, prefix, maxlen)` and messages without an owner,
the newer one `Outbox(redis, prefix)` and messages with their `owner`. Used by
`bench.trust_bench` to build a backlog far faster than test sends could. Prints one JSON
line: {"enqueued": n, "seconds": s}.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
import json
import time
from typing import Any

from redis.asyncio import Redis

from sidecar.webhooks.outbox import Message, Outbox, message_id_for


async def enqueue(args: argparse.Namespace) -> dict[str, Any]:
    redis = Redis.from_url(args.redis_url)
    has_owner = "owner" in {f.name for f in dataclasses.fields(Message)}
    takes_maxlen = "maxlen" in inspect.signature(Outbox).parameters
    outbox: Any = (
        Outbox(redis, args.prefix, args.maxlen) if takes_maxlen else Outbox(redis, args.prefix)
    )
    start = time.perf_counter()
    new = 0
    try:
        for first in range(0, args.count, args.batch):
            now = time.time()
            batch = []
            for i in range(first, min(args.count, first + args.batch)):
                cid = f"backlog-{i}"
                body = json.dumps(
                    {
                        "type": "webhook.test",
                        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                        "data": {"n": i},
                        "correlation_id": cid,
                        "route": None,
                        "location": None,
                        "status": "test",
                    }
                ).encode()
                fields: dict[str, Any] = {
                    "message_id": message_id_for(cid, "trust-bench", args.sub),
                    "sub_id": args.sub,
                    "event_type": "webhook.test",
                    "body": body,
                    "created_ms": int(now * 1000),
                    "trigger": "scheduled",
                }
                if has_owner:
                    fields["owner"] = args.owner
                batch.append(Message(**fields))
            new += await outbox.enqueue_many(batch)
    finally:
        await redis.aclose()
    return {"enqueued": new, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--sub", required=True, help="subscription id")
    parser.add_argument("--owner", required=True, help="its owner (t_… hash), newer outbox only")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--maxlen", type=int, default=100_000, help="older outbox only")
    print(json.dumps(asyncio.run(enqueue(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
