"""The example orders API (examples/orders/api.py, the API of the compose Kafka variant) behind
the sidecar with the compose example's route, on a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import argparse
import asyncio

import redis.asyncio as aioredis
import yaml

from devtools.brokers import TansuServer
from examples.orders.api import create_app
from sidecar.sources.health import SOURCE_HEALTH

from ..conftest import ROOT, SidecarFactory, Upstream
from .conftest import unique


async def test_the_compose_kafka_route_synchronises_the_orders_api(
    tansu: TansuServer,
    redis: aioredis.Redis,
    start_upstream: Upstream,
    start_sidecar: SidecarFactory,
    redis_url: str,
    key_prefix: str,
) -> None:
    topic = unique("orders.completed")
    api = await start_upstream(
        create_app(argparse.Namespace(bootstrap=tansu.bootstrap, topic=topic, work=0.05))
    )
    example = yaml.safe_load((ROOT / "examples/compose/kafka/sidecar.yaml").read_text())
    [route, get_order] = example["routes"]
    route["wait"]["stream"]["key"] = topic
    source = {
        "kind": "kafka",
        "url": tansu.url,
        "session_timeout": "1s",
        "heartbeat_interval": "200ms",
    }
    sidecar = await start_sidecar(
        api,
        redis_url=redis_url,
        key_prefix=key_prefix,
        sources={route["wait"]["stream"]["source"]: source},
        routes=[route, get_order],
    )
    health = sidecar.app[SOURCE_HEALTH]
    async with asyncio.timeout(20):
        while not health.is_up(route["wait"]["stream"]["source"]):
            await health.changed.wait()
    placed = await sidecar.post("/orders", json={"item": "tea", "qty": 2})
    assert placed.status == 201, await placed.text()
    body = await placed.json()
    assert (body["item"], body["qty"]) == ("tea", 2)
    assert placed.headers["Location"] == f"/orders/{body['id']}"
    rejected = await sidecar.post("/orders", json={"item": "tea", "qty": 50})
    assert rejected.status == 422
    problem = await rejected.json()
    assert problem["detail"] == "at most 10 of an item"
