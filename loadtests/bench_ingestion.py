"""Ingestion throughput: validated events per second against a raw consume→produce loop.

Same embedded broker, same run, same records (the fraud example's payments,
≈250 B of JSON each, unkeyed as `kcat -P` would send them), interleaved in
every repeat:

- raw passthrough (the issue's baseline): an aiokafka group consumer that
  forwards every record's bytes to another topic with `producer.send` and
  commits after each batch's sends are acknowledged (at-least-once, like the
  service) — no parsing at all;
- raw batch passthrough (for reference, not a goal): the same loop appending
  to closed per-partition record batches (`create_batch`/`send_batch`), the
  producer API the service's flush uses;
- ingestion: the service's own run loop (`IngestionService`), in process:
  validation against the contract, de-duplication in Redis (one lookup and
  one "remember" script call per batch), `ingest.validated` events with
  CloudEvents headers, metrics, trace sampling (the telemetry SDK installed).

Each is timed from partition assignment to the last record's output being
acknowledged. Besides events/s, the CPU time this process spent per event is
reported: on a shared machine it moves less than wall time. The issue's goal:
ingestion ≥ 0.5 × raw passthrough.

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
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from _harness import Benchmark, console
from mlbus.bus import ensure_topics
from mlbus.config import KafkaSettings, MlbusSettings, RedisSettings
from mlbus.example import fraud_spec_path, generate
from mlbus.ingestion import IngestionService, IngestionSettings
from mlbus.runtime import EmbeddedBroker, EmbeddedRedis
from mlbus.spec import load_spec

RAW = "raw passthrough"
RAW_BATCH = "raw batch passthrough"
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


class Timing:
    """Wall and process CPU time from `start()` to `stop(count)`."""

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self, count: int) -> tuple[float, float]:
        """(events per second, CPU microseconds per event)."""
        wall, cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu
        return count / wall, cpu / count * 1e6


async def raw_passthrough(
    kafka: KafkaSettings, source: str, sink: str, count: int, max_batch: int, *, batched: bool
) -> tuple[float, float]:
    """Consume, forward the bytes, await acks, commit; per batch."""
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
    timing = Timing()
    try:
        while not consumer.assignment():  # noqa: ASYNC110 - aiokafka offers no event for it
            await asyncio.sleep(0.01)
        timing.start()
        done = 0
        while done < count:
            batch = await consumer.getmany(timeout_ms=200, max_records=max_batch)
            if batched:
                futures, forwarded = await send_as_batches(producer, sink, batch)
            else:
                futures = [
                    await producer.send(sink, record.value, key=record.key)
                    for records in batch.values()
                    for record in records
                ]
                forwarded = len(futures)
            await asyncio.gather(*futures)
            if forwarded:
                await consumer.commit()
            done += forwarded
        return timing.stop(count)
    finally:
        await producer.stop()
        await consumer.stop()


async def send_as_batches(
    producer: AIOKafkaProducer, sink: str, fetched: dict[Any, list[Any]]
) -> tuple[list[asyncio.Future[Any]], int]:
    """Each source partition's records into one closed batch for the same sink partition
    (unkeyed, as forwarded), split where a batch fills up."""
    futures, forwarded = [], 0
    for tp, records in fetched.items():
        batch = producer.create_batch()
        for record in records:
            if batch.append(timestamp=None, key=record.key, value=record.value) is None:
                batch.close()
                futures.append(await producer.send_batch(batch, sink, partition=tp.partition))
                batch = producer.create_batch()
                batch.append(timestamp=None, key=record.key, value=record.value)
        batch.close()
        futures.append(await producer.send_batch(batch, sink, partition=tp.partition))
        forwarded += len(records)
    return futures, forwarded


async def ingestion(
    kafka: KafkaSettings, redis_url: str, data_dir: Path, source: str, count: int, max_batch: int
) -> tuple[float, float]:
    """Validated events through the service's run loop."""
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
    timing = Timing()
    try:
        await service.wait_started()
        timing.start()
        while service.stats.accepted + service.stats.rejected < count:
            if task.done():
                task.result()
            await asyncio.sleep(0.002)
        measured = timing.stop(count)
        if service.stats.rejected or service.stats.accepted != count:
            raise RuntimeError(
                f"expected {count} accepted bench events, got {service.stats.accepted} "
                f"({service.stats.rejected} rejected)"
            )
        return measured
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
        # A Redis of its own: every run starts empty, and nothing is left in a shared one.
        with EmbeddedBroker(root / "logs") as broker, EmbeddedRedis(root / "logs") as redis:
            redis_url = redis.url
            kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, session_timeout_s=6.0)
            for run in range(repeats):
                names = ("raw-in", "raw-out", "batch-in", "batch-out", "ingest-in")
                raw_in, raw_out, batch_in, batch_out, ing_in = (
                    f"bench.{name}.{run}" for name in names
                )
                await ensure_topics(
                    kafka, [raw_in, raw_out, batch_in, batch_out, ing_in], partitions=3
                )
                for topic in (raw_in, batch_in, ing_in):
                    await preload(kafka, topic, values)
                count = len(values)
                results = {
                    RAW: await raw_passthrough(
                        kafka, raw_in, raw_out, count, max_batch, batched=False
                    ),
                    INGESTION: await ingestion(kafka, redis_url, root, ing_in, count, max_batch),
                    RAW_BATCH: await raw_passthrough(
                        kafka, batch_in, batch_out, count, max_batch, batched=True
                    ),
                }
                for variant, (per_s, cpu_us) in results.items():
                    bench.record(variant, "throughput", per_s, "events/s", higher_is_better=True)
                    bench.record(variant, "cpu per event", cpu_us, "µs", higher_is_better=False)
                ratio = results[INGESTION][0] / results[RAW][0]
                bench.record(INGESTION, "run ratio to raw", ratio, "×", higher_is_better=True)
                console.print(
                    f"run {run + 1}/{repeats}: "
                    + ", ".join(
                        f"{v} {per_s:,.0f}/s ({cpu_us:.1f} µs CPU)"
                        for v, (per_s, cpu_us) in results.items()
                    )
                    + f"; ingestion/raw {ratio:.3f}"
                )
        telemetry.shutdown()
    bench.goal("ingestion vs raw consume→produce", INGESTION, RAW, "throughput", ">=", 0.5)
    ratios = bench.metrics[(INGESTION, "run ratio to raw")].values
    bench.notes.append(
        f"per-repeat ingestion/raw ratios: {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"vs the raw batch passthrough (reference only): "
        f"{bench.ratio(INGESTION, RAW_BATCH, 'throughput'):.3f}; CPU per event in this "
        f"process, ingestion/raw: {bench.ratio(INGESTION, RAW, 'cpu per event'):.2f}×"
    )
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
