"""A webhook receiver for the sidecar: verify the signature, drop duplicates, answer fast.

    pip install 'sidecar[receiver]'        # the receiver needs the standardwebhooks package
    sidecar receiver --port 9100 --secret whsec_...
    WEBHOOK_SECRET=whsec_... sidecar receiver --port 9100

Every POST (any path) is checked with the `standardwebhooks` library against the subscription's
secret (`webhook-id`, `webhook-timestamp`, `webhook-signature`; a timestamp more than 5 minutes
off is refused too) and answered at once:

    204  verified and queued, or a `webhook-id` already seen (the sidecar delivers at least once)
    400  missing headers, bad signature, stale timestamp, or a body that is not a JSON object
    429  the work queue is full: the sidecar retries later (and slows down on 429)

`GET /healthz` answers 200 once it listens (for whoever started it and waits until it is ready).

The work itself (here: printing one line per event) runs in a background task, after the answer,
so a slow handler never makes the sidecar time out and retry. Duplicates are recognised in memory
among the last `SEEN_MAX` ids: enough for trying webhooks out or as a starting point; a real
receiver records ids where it stores its results (a unique key), so a restart forgets nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook, WebhookVerificationError

SEEN_MAX = 10_000  # webhook ids remembered for deduplication
QUEUE_MAX = 1_000  # events accepted but not yet processed; past it the sender is told 429
RETRY_AFTER_S = 30  # asked of the sender when the queue is full
DRAIN_S = 5.0  # on shutdown, accepted events get this long to be processed


class SeenIds:
    """The most recent `limit` webhook ids; the oldest is forgotten first."""

    def __init__(self, limit: int = SEEN_MAX) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_id: str) -> None:
        """Remember `message_id`, forgetting the oldest id past the limit."""
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)


class Receiver:
    """Verifies and deduplicates deliveries; `work` processes the accepted ones in order."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)  # raises on an empty or undecodable secret
        self.seen = SeenIds()
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(QUEUE_MAX)
        self.processed = 0  # events handled
        self.duplicates = 0  # deliveries answered 204 without processing them again
        self.rejected = 0  # deliveries answered 400

    async def work(self) -> None:
        """Process accepted events one by one, forever."""
        while True:
            message_id, event = await self.queue.get()
            try:
                self.handle(message_id, event)
            finally:
                self.queue.task_done()

    def handle(self, message_id: str, event: dict[str, Any]) -> None:
        """Your business logic goes here; this example prints the event."""
        self.processed += 1
        data = json.dumps(event.get("data"), separators=(",", ":"))
        print(
            f"{message_id} {event.get('type')} status={event.get('status')} "
            f"route={event.get('route')} correlation_id={event.get('correlation_id')} "
            f"location={event.get('location')} data={data}",
            flush=True,
        )


RECEIVER = web.AppKey("receiver", Receiver)


async def receive(request: web.Request) -> web.Response:
    """Verify one delivery and queue it; answer before any work is done."""
    receiver = request.app[RECEIVER]
    body = await request.read()
    try:
        event = receiver.webhook.verify(body, dict(request.headers))
    except (WebhookVerificationError, ValueError) as exc:  # ValueError: undecodable parts
        receiver.rejected += 1
        return web.Response(status=400, text=f"invalid webhook: {exc}\n")
    if not isinstance(event, dict):
        receiver.rejected += 1
        return web.Response(status=400, text="invalid webhook: not a JSON object\n")
    message_id = request.headers["webhook-id"]
    if message_id in receiver.seen:
        receiver.duplicates += 1
        return web.Response(status=204)
    try:
        receiver.queue.put_nowait((message_id, event))
    except asyncio.QueueFull:
        return web.Response(status=429, headers={"Retry-After": str(RETRY_AFTER_S)})
    receiver.seen.add(message_id)  # only once accepted: a 429'd delivery is processed later
    return web.Response(status=204)


async def worker_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the worker; on shutdown let it finish what was accepted (bounded), then stop it."""
    receiver = app[RECEIVER]
    task = asyncio.create_task(receiver.work())
    yield
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            await receiver.queue.join()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def healthz(request: web.Request) -> web.Response:
    """200: listening (for whoever started it and waits until it is ready)."""
    return web.json_response({"status": "ok"})


def create_app(secret: str) -> web.Application:
    """The receiver app for one subscription's `whsec_...` secret."""
    app = web.Application()
    app[RECEIVER] = Receiver(secret)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/{tail:.*}", receive)
    app.cleanup_ctx.append(worker_ctx)
    return app


def main(argv: list[str] | None = None, prog: str = "sidecar receiver") -> None:
    """`sidecar receiver`: receive webhooks until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Receive, verify and print the sidecar's webhooks."
    )
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="default 9100")
    parser.add_argument(
        "--secret",
        default=os.environ.get("WEBHOOK_SECRET"),
        help="the subscription's whsec_... secret (default: $WEBHOOK_SECRET)",
    )
    args = parser.parse_args(argv)
    if not args.secret:
        parser.error("give the subscription's secret with --secret or $WEBHOOK_SECRET")
    try:
        app = create_app(args.secret)
    except (EmptyWebhookSecretError, ValueError) as exc:
        parser.error(f"unusable secret: {exc}")
    print(f"receiving webhooks on http://{args.host}:{args.port}/", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
