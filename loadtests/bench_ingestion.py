"""Ingestion throughput: validated events per second against a raw consume→produce loop.

Same embedded broker, same run, same records (the fraud example's payments,
≈250 B of JSON each, unkeyed as `kcat -P` would send them), interleaved in
every repeat:

- raw passthrough: an aiokafka group consumer that forwards every record's
  bytes to another topic and commits after each batch's sends are
  acknowledged (at-least-once, like the service) — no parsing at all;
- ingestion: the service's own run loop (`IngestionService`), in process:
  validation against the contract, de-duplication in Redis (one MGET and one
  pipelined SET per batch), `ingest.validated` events with CloudEvents
  headers, metrics, trace sampling (the telemetry SDK installed).

Both are timed from partition assignment to the last record's output being
acknowledged. The issue's goal: ingestion ≥ 0.5 × raw.

    python loadtests/bench_ingestion.py [--events 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from _harness import Benchmark, console
from mlbus.bus import ensure_topics
from mlbus.config import KafkaSettings, MlbusSettings, RedisSettings
from mlbus.example import fraud_spec_path, generate
from mlbus.ingestion import IngestionService, IngestionSettings
from mlbus.runtime import EmbeddedBroker, EmbeddedRedis, local_redis_url
from mlbus.spec import load_spec

RAW = "raw passthrough"
INGESTION = "ingestion"
SOURCE_TOPIC = "payments.transactions.v1"


async def preload(kafka: KafkaSettings, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value) for value in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def raw_passthrough(
    kafka: KafkaSettings, source: str, sink: str, count: int, max_batch: int
) -> float:
    """Records per second: consume, forward the bytes, await acks, commit; per batch."""
    consumer = AIOKafkaConsumer(
        source,
        **kafka.client_kwargs(),
        group_id=f"raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
    )
    producer = AIOKafkaProducer(
        **kafka.client_kwargs(),
        acks="all",
        linger_ms=kafka.linger_ms,
        max_batch_size=kafka.max_batch_bytes,
    )
    await consumer.start()
    await producer.start()
    try:
        while not consumer.assignment():  # noqa: ASYNC110 - aiokafka offers no event for it
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        done = 0
        while done < count:
            batch = await consumer.getmany(timeout_ms=200, max_records=max_batch)
            futures = [
                await producer.send(sink, record.value, key=record.key)
                for records in batch.values()
                for record in records
            ]
            await asyncio.gather(*futures)
            if futures:
                await consumer.commit()
            done += len(futures)
        return count / (time.perf_counter() - started)
    finally:
        await producer.stop()
        await consumer.stop()


async def ingestion(
    kafka: KafkaSettings, redis_url: str, data_dir: Path, source: str, count: int, max_batch: int
) -> float:
    """Validated events per second through the service's run loop."""
    spec_path = data_dir / f"{source}.yaml"
    spec_path.write_text(fraud_spec_path().read_text().replace(SOURCE_TOPIC, source))
    settings = IngestionSettings(
        spec=spec_path,
        data_dir=data_dir,
        kafka=kafka,
        redis=RedisSettings(url=redis_url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}"),
        group_id=f"ingest-{uuid.uuid4().hex[:8]}",
        max_batch=max_batch,
    )
    service = IngestionService(settings)
    task = asyncio.create_task(service.run())
    try:
        await service.wait_ready()
        started = time.perf_counter()
        while service.stats.accepted + service.stats.rejected < count:
            if task.done():
                task.result()
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - started
        if service.stats.rejected:
            raise RuntimeError(f"{service.stats.rejected} bench events were rejected")
        return service.stats.accepted / elapsed
    finally:
        service.stop()
        await task


async def main(events: int, repeats: int, max_batch: int) -> bool:
    spec = load_spec(fraud_spec_path())
    now = datetime.now(UTC)
    data = generate(spec, events, start=now - timedelta(days=3), days=1)
    encode = json.JSONEncoder(separators=(",", ":")).encode
    values = [encode(e).encode() for e in data.sources["transactions"].events()]
    bench = Benchmark(
        "ingestion_throughput",
        "validated events/s through the ingestion service vs a raw consume→produce loop",
        events=events,
        repeats=repeats,
        value_bytes=round(sum(map(len, values)) / len(values)),
        max_batch=max_batch,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from mlbus.telemetry import setup_telemetry

        settings = MlbusSettings(data_dir=root)
        telemetry = setup_telemetry("bench", settings)
        bench.parameters["data_sample_ratio"] = settings.telemetry.data_sample_ratio
        with EmbeddedBroker(root / "logs") as broker:
            redis_url = local_redis_url()
            embedded = None if redis_url else EmbeddedRedis(root / "logs")
            if embedded is not None:
                redis_url = embedded.__enter__().url
            assert redis_url is not None
            try:
                kafka = KafkaSettings(
                    bootstrap_servers=broker.bootstrap_servers, session_timeout_s=6.0
                )
                for run in range(repeats):
                    raw_in, raw_out, ing_in = (
                        f"bench.{name}.{run}" for name in ("raw-in", "raw-out", "ingest-in")
                    )
                    await ensure_topics(kafka, [raw_in, raw_out, ing_in], partitions=3)
                    await preload(kafka, raw_in, values)
                    await preload(kafka, ing_in, values)
                    results = {
                        RAW: await raw_passthrough(kafka, raw_in, raw_out, len(values), max_batch),
                        INGESTION: await ingestion(
                            kafka, redis_url, root, ing_in, len(values), max_batch
                        ),
                    }
                    for variant, value in results.items():
                        bench.record(
                            variant, "throughput", value, "events/s", higher_is_better=True
                        )
                    console.print(
                        f"run {run + 1}/{repeats}: "
                        + ", ".join(f"{v} {x:,.0f}" for v, x in results.items())
                        + " events/s"
                    )
            finally:
                if embedded is not None:
                    embedded.__exit__(None, None, None)
        telemetry.shutdown()
    bench.goal("ingestion vs raw consume→produce", INGESTION, RAW, "throughput", ">=", 0.5)
    return bench.report()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--max-batch",
        type=int,
        default=IngestionSettings().max_batch,
        help="records per fetch, both",
    )
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(main(args.events, args.repeats, args.max_batch)) else 1)
