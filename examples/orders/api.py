"""An asynchronous orders API whose workers announce completions on a Kafka topic: what the
sidecar's Kafka source waits on (examples/compose/kafka/, tests/sources/test_examples.py).

    POST /orders {"item": "tea", "qty": 2}  → 202 + Location /orders/{id}; a worker takes
                                              `--work` seconds, then produces the completion
    GET  /orders/{id}                       → 202 while pending, then 200 (or 422) the order
    GET  /healthz                           → 200

The completion is a record on `--topic`: header `x-correlation-id` (the X-Correlation-ID the
call came with, else the order's id), record key the order's id, body
`{"type": "OrderPlaced" | "OrderRejected", "result": {...}}` (more than 10 of an item is
rejected). The topic is the API's: this process creates it when it is missing.

Run it: `python -m examples.orders.api --port 8000 --bootstrap 127.0.0.1:9092`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

logger = logging.getLogger("orders")

ORDERS = web.AppKey("orders", dict[str, dict[str, Any]])
PRODUCER = web.AppKey("producer", AIOKafkaProducer)
SETTINGS = web.AppKey("settings", argparse.Namespace)
TASKS = web.AppKey("tasks", set[asyncio.Task[None]])
MAX_QTY = 10


async def complete(app: web.Application, order_id: str, cid: str) -> None:
    """The worker: decide, record, announce."""
    await asyncio.sleep(app[SETTINGS].work)
    order = app[ORDERS][order_id]
    placed = order["qty"] <= MAX_QTY
    order["state"] = "placed" if placed else "rejected"
    result = {"id": order_id, "item": order["item"], "qty": order["qty"]}
    if not placed:
        result["reason"] = f"at most {MAX_QTY} of an item"
    event = {"type": "OrderPlaced" if placed else "OrderRejected", "result": result}
    await app[PRODUCER].send_and_wait(
        app[SETTINGS].topic,
        orjson.dumps(event),
        key=order_id.encode(),
        headers=[("x-correlation-id", cid.encode())],
    )


async def create(request: web.Request) -> web.Response:
    try:
        body = orjson.loads(await request.read())
        item, qty = str(body["item"]), int(body.get("qty", 1))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return web.json_response({"error": 'send {"item": ..., "qty": n}'}, status=400)
    order_id = uuid.uuid4().hex[:12]
    cid = request.headers.get("X-Correlation-ID") or order_id
    request.app[ORDERS][order_id] = {"item": item, "qty": qty, "state": "pending"}
    task = asyncio.create_task(complete(request.app, order_id, cid))
    request.app[TASKS].add(task)
    task.add_done_callback(request.app[TASKS].discard)
    return web.json_response(
        {"id": order_id, "state": "pending"},
        status=202,
        headers={"Location": f"/orders/{order_id}"},
    )


async def show(request: web.Request) -> web.Response:
    order = request.app[ORDERS].get(request.match_info["id"])
    if order is None:
        return web.json_response({"error": "no such order"}, status=404)
    status = {"pending": 202, "placed": 200, "rejected": 422}[order["state"]]
    return web.json_response({"id": request.match_info["id"], **order}, status=status)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ensure_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()


async def kafka_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    await ensure_topic(settings.bootstrap, settings.topic)
    app[PRODUCER] = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
    await app[PRODUCER].start()
    yield
    for task in list(app[TASKS]):
        task.cancel()
    await asyncio.gather(*app[TASKS], return_exceptions=True)
    await app[PRODUCER].stop()


def create_app(settings: argparse.Namespace) -> web.Application:
    app = web.Application()
    app[SETTINGS], app[ORDERS], app[TASKS] = settings, {}, set()
    app.router.add_post("/orders", create)
    app.router.add_get("/orders/{id}", show)
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(kafka_ctx)
    return app


def parser() -> argparse.ArgumentParser:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--host", default="127.0.0.1")
    args.add_argument("--port", type=int, default=8000)
    args.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap host:port")
    args.add_argument("--topic", default="orders.completed")
    args.add_argument("--work", type=float, default=0.2, help="seconds a worker takes")
    return args


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    settings = parser().parse_args()
    web.run_app(create_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
