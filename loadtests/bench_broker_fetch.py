"""What one fetch costs the embedded broker, by how many batches its partition holds.

The soak's broker CPU grows through a run at steady rates (ADR 0003, addendum 2):
Tansu's memory engine keeps every batch (no retention, no DeleteRecords) and a
fetch that returns data costs it CPU in proportion to the partition's stored
batches. This measures that, in one run on one broker:

- the baseline: a consumer fetches the newest record again and again from a
  partition of 1,000 one-record batches; the broker's CPU seconds per fetch
  (from /proc) and the fetches per second;
- the same partition grown to 5,000, 20,000 and 40,000 batches: the ratio of
  each to the baseline;
- 40,000 records in 400 batches of 100 (another partition): records are not what
  it counts, batches are.

    python loadtests/bench_broker_fetch.py [--seconds 5]

Measurement only (no goal): it explains a cost of the embedded broker that
mlbus works around (background consumers pace their polls) but cannot remove.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from _harness import Benchmark, console
from mlbus.runtime import EmbeddedBroker
from mlbus.soak._cpu import parse_stat

SIZES = (1_000, 5_000, 20_000, 40_000)
BATCHED = (40_000, 100)  # records, records per batch
VALUE = b"x" * 100


def cpu_seconds(pid: int) -> float:
    return parse_stat(Path(f"/proc/{pid}/stat").read_text())[1]


async def fill(producer: AIOKafkaProducer, topic: str, records: int, per_batch: int) -> None:
    """`records` records in batches of `per_batch`: each batch is sent and acknowledged
    before the next, so the broker stores exactly one batch per send."""
    for _ in range(records // per_batch):
        batch = producer.create_batch()
        for _ in range(per_batch):
            batch.append(key=None, value=VALUE, timestamp=None)
        await (await producer.send_batch(batch, topic, partition=0))


async def fetch_newest(bootstrap: str, topic: str, pid: int, seconds: float) -> tuple[float, float]:
    """(broker CPU ms per fetch, fetches per second) while re-reading the newest record."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        fetches = 0
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        while time.monotonic() - started < seconds:
            consumer.seek(tp, end - 1)
            got = await consumer.getmany(tp, timeout_ms=5_000, max_records=1)
            if not got.get(tp):
                raise RuntimeError(f"no record at offset {end - 1} of {topic}")
            fetches += 1
        elapsed = time.monotonic() - started
        return (cpu_seconds(pid) - cpu_before) / fetches * 1000, fetches / elapsed
    finally:
        await consumer.stop()


async def measure(
    bench: Benchmark, broker: EmbeddedBroker, topic: str, variant: str, seconds: float
) -> None:
    """Fetch the newest record of `topic` for `seconds`; record it as `variant`."""
    assert broker.pid is not None
    ms, rate = await fetch_newest(broker.bootstrap_servers, topic, broker.pid, seconds)
    bench.record(variant, "broker CPU per fetch", ms, "ms", higher_is_better=False)
    bench.record(variant, "fetches", rate, "1/s", higher_is_better=True)
    console.print(f"{variant}: {ms:.3f} ms of broker CPU per fetch, {rate:,.0f}/s")


async def run(seconds: float) -> Benchmark:
    bench = Benchmark(
        "bench_broker_fetch",
        "embedded broker CPU per data fetch by the partition's stored batches",
        seconds=seconds,
        sizes=list(SIZES),
        batched=list(BATCHED),
    )
    records, per_batch = BATCHED
    variants = [f"{size:,} batches of 1" for size in SIZES]
    batched = f"{records // per_batch:,} batches of {per_batch}"
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "logs") as broker:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=0)
        await producer.start()
        try:
            stored = 0
            for size, variant in zip(SIZES, variants, strict=True):
                await fill(producer, "one-record-batches", size - stored, 1)
                stored = size
                await measure(bench, broker, "one-record-batches", variant, seconds)
            await fill(producer, "hundred-record-batches", records, per_batch)
            await measure(bench, broker, "hundred-record-batches", batched, seconds)
        finally:
            await producer.stop()
    baseline = variants[0]
    for variant in [*variants[1:], batched]:
        ratio = bench.ratio(variant, baseline, "broker CPU per fetch")
        bench.notes.append(f"{variant} / {baseline}: broker CPU per fetch {ratio:.2f}x")
    return bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="fetching per size")
    args = parser.parse_args()
    bench = asyncio.run(run(args.seconds))
    return 0 if bench.report(measurement_only=True) else 1


if __name__ == "__main__":
    sys.exit(main())
