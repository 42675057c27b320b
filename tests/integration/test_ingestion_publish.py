"""`Publisher.send_batch` and `Publisher.record`, the bus API the ingestion flush publishes
through, against the real embedded broker: partitions as `send_raw` chooses them, order
kept per partition, every record delivered once, oversized records still sent, and the
same trace context `send` would write."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider

from mlbus.bus import OutgoingRecord, Publisher, ensure_topics, event_headers, header
from mlbus.config import KafkaSettings
from mlbus.events import TrainingRequested
from mlbus.ingestion._records import CachedPartitioner

from .test_bus import read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
async def publisher(kafka: KafkaSettings) -> AsyncIterator[Publisher]:
    # A small batch limit, so one call spans several batches and an oversized record.
    small = kafka.model_copy(update={"max_batch_bytes": 4096})
    async with Publisher(small, source="tests", partitioner=CachedPartitioner()) as pub:
        yield pub


def by_partition(records: list[ConsumerRecord[bytes, bytes]]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        out.setdefault(record.partition, []).append(record.value)
    return out


async def test_send_batch_partitions_like_send_raw_and_keeps_order(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    batched, single = f"t.batch.{unique}", f"t.single.{unique}"
    await ensure_topics(kafka, [batched, single], partitions=3)
    keys = [f"card_{i % 17:06d}".encode() for i in range(300)]
    values = [b"%d:" % i + b"x" * (9000 if i in (5, 150) else 40) for i in range(300)]
    futures = await publisher.send_batch(
        [
            OutgoingRecord(batched, v, k, [("n", b"%d" % i)])
            for i, (k, v) in enumerate(zip(keys, values, strict=True))
        ]
    )
    assert len(futures) > 3  # several closed batches per partition, not one future per record
    await asyncio.gather(*futures)
    for k, v in zip(keys, values, strict=True):
        await publisher.send_raw(single, v, k)
    await publisher.flush()

    got = await read_topic(kafka, batched, len(values))
    expected = await read_topic(kafka, single, len(values))
    assert sorted(r.value for r in got) == sorted(values)  # each once, oversized ones too
    assert by_partition(got) == by_partition(expected)  # same partitions, same order
    assert all(r.key == keys[int(r.value.split(b":")[0])] for r in got)
    assert all(header(r.headers, "n") == r.value.split(b":")[0].decode() for r in got)


async def test_record_carries_what_send_would_write(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    topic = f"t.record.{unique}"
    await ensure_topics(kafka, [topic])
    event = TrainingRequested(model="m", reason="manual")  # control plane: always traced
    provider = TracerProvider()
    from mlbus.bus import _publisher

    saved, _publisher._tracer = _publisher._tracer, provider.get_tracer("test")
    try:
        record = publisher.record(event, "m", topic=topic)
    finally:
        _publisher._tracer = saved
        provider.shutdown()
    assert (record.topic, record.key) == (topic, b"m")
    assert record.value == event.model_dump_json().encode()
    names = [name for name, _ in record.headers]
    assert names[: len(event_headers(event, publisher.source))] == [
        name for name, _ in event_headers(event, publisher.source)
    ]
    assert header(record.headers, "traceparent")
    await asyncio.gather(*await publisher.send_batch([record]))
    [stored] = await read_topic(kafka, topic, 1)
    assert stored.value == record.value
    assert header(stored.headers, "traceparent") == header(record.headers, "traceparent")
