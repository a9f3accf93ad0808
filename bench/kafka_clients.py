"""The measurement behind the Kafka client library (run: `.venv/bin/python -m bench.kafka_clients`;
needs the `bench` extra for confluent-kafka).

On one throwaway Kafka-protocol broker (Tansu), for aiokafka and for confluent-kafka's asyncio
consumer (`confluent_kafka.aio.AIOConsumer`, librdkafka under a thread pool), in one run:

1. throughput: N small records (a JSON completion and a header, as the sidecar reads them)
   consumed by a consumer with no group, partitions assigned by hand: records per second and
   the CPU time of this process per record;
2. latency: one record produced at a time while the consumer waits; produce → delivered to
   the asyncio code, p50/p99.

Every loop is bounded; the broker is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import orjson

from devtools.brokers import KafkaPublisher, TansuServer

from .harness import percentile

PARTITIONS = 3


def record(i: int) -> bytes:
    return orjson.dumps({"type": "Done", "result": {"i": i, "ok": True}})


async def fill(publisher: KafkaPublisher, topic: str, n: int) -> None:
    await publisher.publish_many(topic, [record(i) for i in range(n)])


async def aiokafka_throughput(bootstrap: str, topic: str, n: int) -> dict[str, float]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        cpu, start, got = time.process_time(), time.perf_counter(), 0
        while got < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batches.values():
                for r in records:
                    got += 1
                    _ = (r.value, r.headers)
        return {
            "records_per_s": n / (time.perf_counter() - start),
            "cpu_us_per_record": (time.process_time() - cpu) / n * 1e6,
        }
    finally:
        await consumer.stop()


async def confluent_throughput(bootstrap: str, topic: str, n: int) -> dict[str, float]:
    from confluent_kafka import TopicPartition
    from confluent_kafka.aio import AIOConsumer

    consumer = AIOConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"b-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    try:
        await consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        cpu, start, got = time.process_time(), time.perf_counter(), 0
        while got < n:
            for msg in await consumer.consume(num_messages=500, timeout=1.0):
                if msg.error() is None:
                    got += 1
                    _ = (msg.value(), msg.headers())
        return {
            "records_per_s": n / (time.perf_counter() - start),
            "cpu_us_per_record": (time.process_time() - cpu) / n * 1e6,
        }
    finally:
        await consumer.close()


async def latency(
    kind: str, bootstrap: str, publisher: KafkaPublisher, topic: str, n: int
) -> dict[str, float]:
    """Produce one record at a time; time until the consumer hands it over."""
    received: asyncio.Queue[float] = asyncio.Queue()
    stop = asyncio.Event()
    if kind == "aiokafka":
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer: Any = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=50)
        await consumer.start()
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)

        async def read() -> None:
            while not stop.is_set():
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for _ in records:
                        received.put_nowait(time.perf_counter())
    else:
        from confluent_kafka import OFFSET_END
        from confluent_kafka import TopicPartition as Tp
        from confluent_kafka.aio import AIOConsumer

        consumer = AIOConsumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"l-{uuid.uuid4().hex[:6]}",
                "fetch.wait.max.ms": 50,
            }
        )
        await consumer.assign([Tp(topic, p, OFFSET_END) for p in range(PARTITIONS)])

        async def read() -> None:
            # poll (one message), not consume(n): consume waits for n messages or its timeout.
            while not stop.is_set():
                msg = await consumer.poll(timeout=0.2)
                if msg is not None and msg.error() is None:
                    received.put_nowait(time.perf_counter())

    reader = asyncio.create_task(read())
    await asyncio.sleep(1.0)  # both place their fetch position first
    lat = []
    for i in range(n):
        sent = time.perf_counter()
        await publisher.publish(topic, record(i))
        lat.append((await asyncio.wait_for(received.get(), 5.0) - sent) * 1000)
    stop.set()
    await reader
    if kind == "aiokafka":
        await consumer.stop()
    else:
        await consumer.close()
    return {"p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99)}


async def run(args: argparse.Namespace) -> None:
    server = TansuServer().start()
    publisher = KafkaPublisher(server.bootstrap)
    try:
        topic = f"bench.{uuid.uuid4().hex[:8]}"
        await publisher.create(topic, PARTITIONS)
        await fill(publisher, topic, args.records)
        rows = {
            "aiokafka": await aiokafka_throughput(server.bootstrap, topic, args.records),
            "confluent-kafka": await confluent_throughput(server.bootstrap, topic, args.records),
        }
        late = f"{topic}.latency"
        await publisher.create(late, PARTITIONS)
        for kind, name in (("aiokafka", "aiokafka"), ("confluent", "confluent-kafka")):
            rows[name].update(await latency(kind, server.bootstrap, publisher, late, args.latency))
        print("\n| client | records/s | CPU per record | produce→consume p50 / p99 |")
        print("|---|---|---|---|")
        for name, row in rows.items():
            print(
                f"| {name} | {row['records_per_s']:,.0f} | {row['cpu_us_per_record']:.1f} µs | "
                f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f} ms |"
            )
    finally:
        await publisher.close()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--latency", type=int, default=200)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
