"""Publish+consume throughput through `mlbus.bus` against raw aiokafka loops.

Same embedded broker, same run, same records (≈300 B JSON values with the
CloudEvents + traceparent headers the bus writes), the same producer and
consumer settings and the same consumer-group semantics (manual commit after
each batch). Baselines, measured interleaved with the bus in every repeat:

- raw aiokafka + json: what a hand-written JSON service does at the least,
  `json.dumps` before send and `json.loads` after receive. The issue's goal
  (bus ≥ 0.7 × raw) is measured against this one.
- raw aiokafka, bytes: pre-encoded bytes moved without any parsing; the floor.
- raw, no headers: the same bytes without headers: what the headers cost.

The bus adds per record: pydantic encoding and schema validation on decode,
building headers, trace sampling/propagation (the telemetry SDK installed, as
a service runs), metrics, and its retry/dead-letter bookkeeping.

    python loadtests/bench_bus.py [--messages 20000] [--repeats 5] [--no-telemetry]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from _harness import Benchmark, console
from mlbus.bus import (
    Consumer,
    Publisher,
    Received,
    encode_event,
    ensure_topics,
    event_headers,
)
from mlbus.config import KafkaSettings, MlbusSettings
from mlbus.events import Event, IngestValidated
from mlbus.runtime import EmbeddedBroker

RAW_JSON = "raw aiokafka + json"
RAW_BYTES = "raw aiokafka, bytes"
RAW_BARE = "raw, no headers"
BUS = "mlbus.bus"


def make_event(i: int) -> IngestValidated:
    return IngestValidated(
        source="transactions",
        contract_version=1,
        entity_id=f"card_{i % 5000:05d}",
        event_time=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
        payload={"amount": 12.5 + i % 100, "merchant_category": "grocery", "country": "DE"},
        source_topic="fraud.transactions",
        source_partition=i % 3,
        source_offset=i,
    )


async def raw_loop(
    kafka: KafkaSettings,
    topic: str,
    values: list[bytes] | list[dict[str, object]],
    headers: list[list[tuple[str, bytes]]] | None,
) -> float:
    """Messages per second: aiokafka producer → aiokafka group consumer, commit per batch.

    Given dicts, it does what a hand-written JSON service does at the least:
    `json.dumps` before each send and `json.loads` after each receive.
    """
    as_json = isinstance(values[0], dict)
    consumer = AIOKafkaConsumer(
        topic,
        **kafka.client_kwargs(),
        group_id=f"raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
    )
    await consumer.start()
    producer = AIOKafkaProducer(
        **kafka.client_kwargs(),
        linger_ms=kafka.linger_ms,
        max_batch_size=kafka.max_batch_bytes,
        acks="all",
    )
    await producer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        received = 0

        async def consume() -> None:
            nonlocal received
            while received < len(values):
                batch = await consumer.getmany(timeout_ms=200, max_records=500)
                for records in batch.values():
                    if as_json:
                        for record in records:
                            json.loads(record.value)
                    received += len(records)
                if batch:
                    await consumer.commit()

        started = time.perf_counter()
        consuming = asyncio.create_task(consume())
        futures = [
            await producer.send(
                topic,
                json.dumps(value).encode() if as_json else value,
                key=b"card_%05d" % (i % 5000),
                headers=headers[i] if headers else None,
            )
            for i, value in enumerate(values)
        ]
        await asyncio.gather(*futures)
        await consuming
        return len(values) / (time.perf_counter() - started)
    finally:
        await producer.stop()
        await consumer.stop()


async def bus_loop(kafka: KafkaSettings, topic: str, events: list[Event]) -> float:
    """Messages per second: `Publisher.send` → `Consumer` with a handler that counts."""
    received = 0
    done = asyncio.Event()

    async def handle(msg: Received[Event]) -> None:
        nonlocal received
        received += 1
        if received == len(events):
            done.set()

    async with Publisher(kafka, source="bench") as publisher:
        consumer = Consumer.of_events(
            kafka,
            types=[IngestValidated],
            topics=[topic],
            handler=handle,
            publisher=publisher,
            group_id=f"bus-{uuid.uuid4().hex[:8]}",
        )
        running = asyncio.create_task(consumer.run())
        await consumer.wait_assigned()
        started = time.perf_counter()
        futures = [await publisher.send(e, key=e.entity_id, topic=topic) for e in events]  # type: ignore[attr-defined]
        await asyncio.gather(*futures)
        await done.wait()
        elapsed = time.perf_counter() - started
        consumer.stop()
        await running
    return len(events) / elapsed


def wire_records(events: list[Event]) -> tuple[list[bytes], list[list[tuple[str, bytes]]]]:
    """Exactly the bytes the bus puts on the wire: JSON values and CloudEvents + trace headers."""
    traceparent = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
    return (
        [encode_event(e) for e in events],
        [[*event_headers(e, "/mlbus/bench"), traceparent] for e in events],
    )


async def main(messages: int, repeats: int, telemetry: bool) -> bool:
    events: list[Event] = [make_event(i) for i in range(messages)]
    values, headers = wire_records(events)
    dicts = [e.model_dump(mode="json") for e in events]
    bench = Benchmark(
        "bus_throughput",
        "publish+consume through mlbus.bus vs a raw aiokafka loop",
        messages=messages,
        repeats=repeats,
        value_bytes=round(sum(map(len, values)) / len(values)),
        header_bytes=round(sum(len(k) + len(v) for k, v in headers[0])),
        telemetry_sdk=telemetry,
    )
    with tempfile.TemporaryDirectory() as tmp:
        handle = None
        if telemetry:
            from mlbus.telemetry import setup_telemetry

            settings = MlbusSettings(data_dir=Path(tmp))
            handle = setup_telemetry("bench", settings)
            logging.getLogger("aiokafka").setLevel(logging.WARNING)  # group-join chatter
            bench.parameters["data_sample_ratio"] = settings.telemetry.data_sample_ratio
        with EmbeddedBroker(Path(tmp) / "logs") as broker:
            kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, session_timeout_s=6.0)
            for run in range(repeats):
                topics = [f"bench.{name}.{run}" for name in ("json", "bytes", "bare", "bus")]
                await ensure_topics(kafka, topics, partitions=3)
                results = {
                    RAW_JSON: await raw_loop(kafka, topics[0], dicts, headers),
                    RAW_BYTES: await raw_loop(kafka, topics[1], values, headers),
                    RAW_BARE: await raw_loop(kafka, topics[2], values, None),
                    BUS: await bus_loop(kafka, topics[3], events),
                }
                for variant, value in results.items():
                    bench.record(variant, "throughput", value, "msg/s", higher_is_better=True)
                console.print(
                    f"run {run + 1}/{repeats}: "
                    + ", ".join(f"{variant} {value:,.0f}" for variant, value in results.items())
                    + " msg/s"
                )
        if handle is not None:
            handle.shutdown()
    bench.goal("bus vs a raw aiokafka JSON loop", BUS, RAW_JSON, "throughput", ">=", 0.7)
    for baseline, meaning in (
        (RAW_BYTES, "moving pre-encoded bytes, no parsing at all"),
        (RAW_BARE, "pre-encoded bytes without the CloudEvents and trace headers"),
    ):
        ratio = bench.ratio(BUS, baseline, "throughput")
        bench.notes.append(f"bus / {baseline} = {ratio:.3f} ({meaning})")
    return bench.report()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-telemetry", action="store_true", help="no OpenTelemetry SDK")
    args = parser.parse_args()
    ok = asyncio.run(main(args.messages, args.repeats, telemetry=not args.no_telemetry))
    sys.exit(0 if ok else 1)
