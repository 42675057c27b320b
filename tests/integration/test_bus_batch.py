"""The consumer's optional batch mode (`batch_handler`) against the real embedded broker:
order per partition, commits, per-record fallback with dead-lettering, traced records
one by one or (`spans_in_batch`) in the batch with their spans, and the commit interval
(docs/adr/0014-bus-batch-handler.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlbus.bus import (
    Consumer,
    DeadLetter,
    Publisher,
    Received,
    RetryPolicy,
    ensure_topics,
    raw_decoder,
)
from mlbus.config import KafkaSettings
from mlbus.errors import InvalidInput, RetryableError
from mlbus.events import MessageDeadLettered
from mlbus.telemetry._sampling import set_data_sample_ratio

from .test_bus import read_topic, run_until

pytestmark = pytest.mark.integration

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
async def publisher(kafka: KafkaSettings) -> AsyncIterator[Publisher]:
    async with Publisher(kafka, source="tests") as pub:
        yield pub


@pytest.fixture
def untraced_data_plane() -> Iterator[None]:
    """As with the SDK installed at a data ratio of 0: records without a sampled parent
    get no span (without the SDK every record is traced, so nothing would batch)."""
    set_data_sample_ratio(0.0)
    yield
    set_data_sample_ratio(None)


async def produce(
    kafka: KafkaSettings, topic: str, values: list[bytes], traced: set[int] = frozenset()
) -> None:
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                value,
                key=str(i % 3).encode(),
                headers=[("traceparent", TRACEPARENT)] if i in traced else None,
            )
            for i, value in enumerate(values)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@pytest.mark.usefixtures("untraced_data_plane")
async def test_batches_keep_partition_order_and_commit_everything(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    topic = f"t.batch.{unique}"
    await ensure_topics(kafka, [topic], partitions=3)
    values = [b"%d" % i for i in range(600)]
    await produce(kafka, topic, values)
    batches: list[list[Received[bytes | None]]] = []
    single: list[Received[bytes | None]] = []

    async def handle(msg: Received[bytes | None]) -> None:
        single.append(msg)

    async def handle_batch(msgs: list[Received[bytes | None]]) -> None:
        batches.append(msgs)

    consumer: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=f"g-{unique}",
        handler=handle,
        batch_handler=handle_batch,
        decoder=raw_decoder,
        publisher=publisher,
    )
    await run_until(consumer, lambda: sum(map(len, batches)) >= len(values))

    assert not single
    assert any(len(b) > 1 for b in batches)
    got = [m for b in batches for m in b]
    assert sorted(m.payload or b"" for m in got) == sorted(values)
    for batch in batches:
        assert len({m.partition for m in batch}) == 1  # one partition per call
    for partition in range(3):
        offsets = [m.offset for m in got if m.partition == partition]
        assert offsets == sorted(offsets) == list(range(len(offsets)))
    assert all(m.key == b"%d" % (int(m.payload or b"") % 3) for m in got)  # keys kept
    assert consumer.stats.processed == len(values)
    assert sum(consumer.stats.committed.values()) == len(values)


@pytest.mark.usefixtures("untraced_data_plane")
async def test_a_failing_batch_is_handled_record_by_record_and_one_bad_record_dead_letters_alone(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    topic, dead = f"t.batchbad.{unique}", f"t.batchbad.dlq.{unique}"
    await ensure_topics(kafka, [topic, dead], partitions=3)
    values = [json.dumps({"n": i}).encode() for i in range(90)]
    values[41] = b"poison"
    await produce(kafka, topic, values)
    handled: list[bytes] = []
    batch_calls = 0

    def check(value: bytes | None) -> bytes:
        if value == b"poison":
            raise InvalidInput("poison record")
        return value or b""

    async def handle(msg: Received[bytes | None]) -> None:
        handled.append(check(msg.payload))

    async def handle_batch(msgs: list[Received[bytes | None]]) -> None:
        nonlocal batch_calls
        batch_calls += 1
        checked = [check(m.payload) for m in msgs]  # all or nothing: raise before any effect
        handled.extend(checked)

    consumer: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=f"g-{unique}",
        handler=handle,
        batch_handler=handle_batch,
        decoder=raw_decoder,
        publisher=publisher,
        dead_letter_topic=dead,
    )
    await run_until(consumer, lambda: len(handled) + consumer.stats.dead_lettered >= len(values))

    assert batch_calls >= 1
    assert sorted(handled) == sorted(v for v in values if v != b"poison")  # each exactly once
    assert consumer.stats.dead_lettered == 1
    assert sum(consumer.stats.committed.values()) == len(values)
    [record] = await read_topic(kafka, dead, 1)
    letter = MessageDeadLettered.model_validate_json(record.value)
    assert letter.source_topic == topic
    assert letter.error_type == "InvalidInput"
    assert letter.reason == "poison record"
    assert letter.attempts == 1


@pytest.mark.usefixtures("untraced_data_plane")
async def test_traced_records_keep_their_span_and_go_one_by_one_in_order(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    topic = f"t.batchtraced.{unique}"
    await ensure_topics(kafka, [topic], partitions=1)
    values = [b"%d" % i for i in range(60)]
    traced = {0, 17, 18, 59}
    await produce(kafka, topic, values, traced=traced)
    order: list[tuple[str, bytes]] = []

    async def handle(msg: Received[bytes | None]) -> None:
        order.append(("one", msg.payload or b""))

    async def handle_batch(msgs: list[Received[bytes | None]]) -> None:
        order.extend(("batch", m.payload or b"") for m in msgs)

    consumer: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=f"g-{unique}",
        handler=handle,
        batch_handler=handle_batch,
        decoder=raw_decoder,
        publisher=publisher,
    )
    await run_until(consumer, lambda: len(order) >= len(values))

    assert [value for _, value in order] == values  # one partition: the original order
    assert {int(v) for how, v in order if how == "one"} == traced
    assert consumer.stats.processed == len(values)
    assert sum(consumer.stats.committed.values()) == len(values)


@pytest.fixture
def consumer_spans() -> Iterator[InMemorySpanExporter]:
    """The bus consumer's spans, exported in memory (for this test only)."""
    from mlbus.bus import _consumer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    saved = _consumer._tracer
    _consumer._tracer = provider.get_tracer("mlbus.bus")
    yield exporter
    _consumer._tracer = saved


@pytest.mark.usefixtures("untraced_data_plane")
async def test_with_spans_in_batch_traced_records_stay_in_the_batch_each_with_its_span(
    kafka: KafkaSettings,
    publisher: Publisher,
    unique: str,
    consumer_spans: InMemorySpanExporter,
) -> None:
    topic = f"t.batchspans.{unique}"
    await ensure_topics(kafka, [topic], partitions=1)
    values = [b"%d" % i for i in range(60)]
    traced = {0, 17, 18, 59}
    await produce(kafka, topic, values, traced=traced)
    single: list[bytes] = []
    batches: list[list[bytes]] = []

    async def handle(msg: Received[bytes | None]) -> None:
        single.append(msg.payload or b"")

    async def handle_batch(msgs: list[Received[bytes | None]]) -> None:
        batches.append([m.payload or b"" for m in msgs])

    consumer: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=f"g-{unique}",
        handler=handle,
        batch_handler=handle_batch,
        decoder=raw_decoder,
        publisher=publisher,
        spans_in_batch=True,
    )
    await run_until(consumer, lambda: sum(map(len, batches)) >= len(values))

    assert not single  # nobody left the batch
    assert [v for batch in batches for v in batch] == values  # in order
    spans = consumer_spans.get_finished_spans()
    offsets = sorted(s.attributes["messaging.kafka.offset"] for s in spans)  # type: ignore[index]
    assert offsets == sorted(traced)  # one span per traced record, none for the rest
    parent = int(TRACEPARENT.split(b"-")[1], 16)
    assert {s.context.trace_id for s in spans} == {parent}  # each continues its trace
    assert sum(consumer.stats.committed.values()) == len(values)


@pytest.mark.usefixtures("untraced_data_plane")
async def test_a_commit_interval_commits_less_often_and_everything_on_the_way_out(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    topic = f"t.batchinterval.{unique}"
    await ensure_topics(kafka, [topic], partitions=1)
    values = [b"%d" % i for i in range(200)]
    handled = 0
    commits = 0
    all_handled = asyncio.Event()

    async def handle(msg: Received[bytes | None]) -> None:
        raise AssertionError("every record is untraced: batches only")

    async def handle_batch(msgs: list[Received[bytes | None]]) -> None:
        nonlocal handled
        handled += len(msgs)
        if handled >= len(values):
            all_handled.set()

    async def before_commit() -> None:
        nonlocal commits
        commits += 1

    consumer: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=f"g-{unique}",
        handler=handle,
        batch_handler=handle_batch,
        decoder=raw_decoder,
        publisher=publisher,
        max_batch=10,
        before_commit=before_commit,
        commit_interval_s=60.0,
    )
    task = asyncio.create_task(consumer.run())
    try:
        await consumer.wait_assigned()
        await produce(kafka, topic, values)
        await asyncio.wait_for(all_handled.wait(), 45)
        fetches_commits = commits
    finally:
        consumer.stop()
        await task
    # ≥ 20 fetches of at most 10 records; within the interval at most the first commits
    assert fetches_commits <= 1
    assert commits == fetches_commits + 1  # the way out commits what was handled
    assert consumer.stats.committed == {f"{topic}[0]": len(values)}


async def test_commit_time_work_is_retried_until_it_lands_and_never_committed_before(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    """`before_commit` failing with a RetryableError (a dependency down) is retried with
    the policy's backoff; the offsets commit only after it lands, and the records are
    not handled again (ADR 0026)."""
    topic = f"commit-retry-{unique}"
    await ensure_topics(kafka, [topic], partitions=1)
    values = [b"%d" % i for i in range(5)]
    handled: list[bytes | None] = []
    attempts = 0
    landed = asyncio.Event()

    async def handle(msg: Received[bytes | None]) -> None:
        handled.append(msg.payload)

    async def before_commit() -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            raise RetryableError(f"injected: the store is down (attempt {attempts})")
        landed.set()

    consumer: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=f"g-{unique}",
        handler=handle,
        decoder=raw_decoder,
        publisher=publisher,
        retry=RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05),
        before_commit=before_commit,
    )
    task = asyncio.create_task(consumer.run())
    try:
        await consumer.wait_assigned()
        await produce(kafka, topic, values)
        await asyncio.wait_for(landed.wait(), 45)
        await _until(lambda: consumer.stats.committed.get(f"{topic}[0]") == len(values))
    finally:
        consumer.stop()
        await task
    assert consumer.stats.retries >= 3
    assert sorted(handled) == sorted(values)  # handled once: the retry is of the commit only
    assert consumer.stats.committed == {f"{topic}[0]": len(values)}


async def test_commit_time_work_failing_when_stopped_commits_nothing(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    """Stopped while the dependency is down: the run ends with the RetryableError and no
    offset is committed, so a restart consumes the records again."""
    topic = f"commit-stop-{unique}"
    await ensure_topics(kafka, [topic], partitions=1)
    handled = asyncio.Event()

    async def handle(msg: Received[bytes | None]) -> None:
        handled.set()

    async def before_commit() -> None:
        raise RetryableError("injected: the store is down")

    consumer: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=f"g-{unique}",
        handler=handle,
        decoder=raw_decoder,
        publisher=publisher,
        retry=RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05),
        before_commit=before_commit,
    )
    task = asyncio.create_task(consumer.run())
    await consumer.wait_assigned()
    await produce(kafka, topic, [b"x"])
    await asyncio.wait_for(handled.wait(), 45)
    await _until(lambda: consumer.stats.retries >= 2)
    consumer.stop()
    with pytest.raises(RetryableError):
        await task
    assert consumer.stats.committed == {}


async def test_what_the_commit_time_work_cannot_apply_is_dead_lettered_before_the_commit(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    """`before_commit` returns the records it could not apply: the bus writes each to the
    dead-letter topic in the handler path's format (bytes, origin, reason), then commits
    (ADR 0026)."""
    topic, dead = f"commit-dead-{unique}", f"commit-dead.dlq-{unique}"
    await ensure_topics(kafka, [topic, dead], partitions=1)
    values = [b"%d" % i for i in range(5)]
    queued: list[Received[bytes | None]] = []

    async def handle(msg: Received[bytes | None]) -> None:
        queued.append(msg)

    async def before_commit() -> list[DeadLetter[bytes | None]]:
        unapplied = [DeadLetter(m, ValueError("cannot apply 3")) for m in queued if m.offset == 3]
        queued.clear()
        return unapplied

    consumer: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=f"g-{unique}",
        handler=handle,
        decoder=raw_decoder,
        publisher=publisher,
        dead_letter_topic=dead,
        before_commit=before_commit,
    )
    task = asyncio.create_task(consumer.run())
    try:
        await consumer.wait_assigned()
        await produce(kafka, topic, values)
        await _until(lambda: consumer.stats.committed.get(f"{topic}[0]") == len(values))
    finally:
        consumer.stop()
        await task
    assert consumer.stats.dead_lettered == 1
    [record] = await read_topic(kafka, dead, 1)
    letter = MessageDeadLettered.model_validate_json(record.value)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (topic, 0, 3)
    assert (letter.error_type, letter.reason) == ("ValueError", "cannot apply 3")
    assert letter.attempts == 1
    assert letter.consumer_group == f"g-{unique}"
    assert letter.value_b64 == "Mw=="  # b"3", the record's own bytes


async def _until(done: Callable[[], bool], timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not done():  # noqa: ASYNC110 - polling the consumer's stats
            await asyncio.sleep(0.02)
