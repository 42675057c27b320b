"""The bus against the real embedded broker: round trip, trace continuity,
dead-letter path, retries, and commit-after-effect."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlbus.bus import Consumer, Publisher, Received, RetryPolicy, ensure_topics, raw_decoder
from mlbus.config import KafkaSettings
from mlbus.errors import InvalidInput, RetryableError
from mlbus.events import DEAD_LETTERED, Event, MessageDeadLettered, TrainingRequested

pytestmark = pytest.mark.integration


@pytest.fixture
async def publisher(kafka: KafkaSettings) -> AsyncIterator[Publisher]:
    async with Publisher(kafka, source="tests") as pub:
        yield pub


async def run_until(
    consumer: Consumer[object], done: Callable[[], bool], timeout_s: float = 45
) -> None:
    """Run `consumer` until `done()` holds, then stop it cleanly."""
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(timeout_s):
            while not done():
                if task.done():
                    task.result()  # surface the consumer's own failure
                await asyncio.sleep(0.05)
    finally:
        consumer.stop()
        await task


async def read_topic(kafka: KafkaSettings, topic: str, count: int, timeout_s: float = 30):
    """Every record of `topic` from the start, until `count` were read."""
    reader = AIOKafkaConsumer(
        topic, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
    )
    await reader.start()
    records = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(records) < count:
                for batch in (await reader.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await reader.stop()
    return records


def training_request(model: str) -> TrainingRequested:
    return TrainingRequested(model=model, reason="manual")


async def test_round_trip_keeps_event_key_and_cloudevents_headers(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    topic = f"t.roundtrip.{unique}"
    await ensure_topics(kafka, [topic])
    sent = [training_request(f"model-{i}") for i in range(20)]
    for event in sent:
        await publisher.send(event, key=event.model, topic=topic)
    await publisher.flush()

    got: list[Received[Event]] = []

    async def handle(msg: Received[Event]) -> None:
        got.append(msg)

    consumer = Consumer.of_events(
        kafka,
        types=[TrainingRequested],
        group_id=f"g-{unique}",
        handler=handle,
        publisher=publisher,
        topics=[topic],
    )
    await run_until(consumer, lambda: len(got) >= len(sent))

    assert sorted(m.payload.event_id for m in got) == sorted(e.event_id for e in sent)
    by_id = {e.event_id: e for e in sent}
    for msg in got:
        assert msg.payload == by_id[msg.payload.event_id]
        assert msg.key == by_id[msg.payload.event_id].model.encode()
        headers = dict(msg.headers)
        assert headers["ce_specversion"] == b"1.0"
        assert headers["ce_type"] == b"mlbus.training.requested.v1"
        assert headers["ce_id"] == msg.payload.event_id.encode()
        assert headers["ce_source"] == b"/mlbus/tests"
        assert headers["content-type"] == b"application/json"
        assert msg.event_id == msg.payload.event_id
    assert consumer.stats.processed == len(sent)
    assert sum(consumer.stats.committed.values()) == len(sent)


async def test_consumer_span_continues_the_producer_trace(
    kafka: KafkaSettings, unique: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    topic = f"t.trace.{unique}"
    await ensure_topics(kafka, [topic])

    # The bus uses the global tracer provider; install ours for this test only.
    from mlbus.bus import _consumer, _publisher

    saved = (_publisher._tracer, _consumer._tracer)
    _publisher._tracer = _consumer._tracer = provider.get_tracer("mlbus.bus")
    try:
        seen: list[str] = []

        async def handle(msg: Received[Event]) -> None:
            seen.append(format(trace.get_current_span().get_span_context().trace_id, "032x"))

        async with Publisher(kafka, source="tests") as pub:
            with tracer.start_as_current_span("producer-request") as root:
                await pub.publish(training_request("traced"), key="traced", topic=topic)
            consumer = Consumer.of_events(
                kafka,
                types=[TrainingRequested],
                group_id=f"g-{unique}",
                handler=handle,
                publisher=pub,
                topics=[topic],
            )
            await run_until(consumer, lambda: len(seen) == 1)
    finally:
        _publisher._tracer, _consumer._tracer = saved

    trace_id = format(root.get_span_context().trace_id, "032x")
    assert seen == [trace_id]
    spans = {s.name: s for s in exporter.get_finished_spans()}
    publish, process = spans[f"{topic} publish"], spans[f"{topic} process"]
    assert publish.parent is not None
    assert publish.parent.span_id == root.get_span_context().span_id
    assert process.parent is not None
    assert process.parent.span_id == publish.context.span_id
    assert process.context.trace_id == root.get_span_context().trace_id
    provider.shutdown()


async def test_malformed_bytes_go_to_the_dead_letter_topic_and_the_consumer_keeps_going(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    topic, dlq = f"t.dlq.{unique}", f"t.dlq.{unique}.dead"
    await ensure_topics(kafka, [topic, dlq], partitions=1)
    good_before, good_after = training_request("before"), training_request("after")
    await publisher.publish(good_before, key="k", topic=topic)
    bad_values = [b"\xff\xfe not json", b'{"model": 1}', b"[]"]
    for value in bad_values:
        await (
            await publisher.send_raw(
                topic, value, key="k", headers=[("ce_type", b"mlbus.training.requested.v1")]
            )
        )
    await (await publisher.send_raw(topic, b"{}", key="k", headers=[("ce_type", b"evil.type")]))
    await publisher.publish(good_after, key="k", topic=topic)

    handled: list[str] = []

    async def handle(msg: Received[Event]) -> None:
        assert isinstance(msg.payload, TrainingRequested)
        handled.append(msg.payload.model)

    consumer = Consumer.of_events(
        kafka,
        types=[TrainingRequested],
        group_id=f"g-{unique}",
        handler=handle,
        publisher=publisher,
        dead_letter_topic=dlq,
        topics=[topic],
    )
    await run_until(consumer, lambda: len(handled) == 2 and consumer.stats.dead_lettered == 4)

    assert handled == ["before", "after"]  # order kept, nothing skipped
    dead = [
        MessageDeadLettered.model_validate_json(r.value) for r in await read_topic(kafka, dlq, 4)
    ]
    assert [base64.b64decode(d.value_b64 or "") for d in dead] == [*bad_values, b"{}"]
    for d in dead:
        assert d.source_topic == topic
        assert d.source_partition == 0
        assert d.consumer_group == f"g-{unique}"
        assert d.error_type == "InvalidInput"
        assert d.reason
    assert [d.source_offset for d in dead] == [1, 2, 3, 4]
    assert "failed its schema" in dead[1].reason
    assert "model" in dead[1].reason
    assert "unexpected event type 'evil.type'" in dead[3].reason


async def test_permanent_handler_error_is_dead_lettered_with_its_reason(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    topic, dlq = f"t.perm.{unique}", f"t.perm.{unique}.dead"
    await ensure_topics(kafka, [topic, dlq], partitions=1)
    await (await publisher.send_raw(topic, b"payload-1", key="a"))

    async def handle(msg: Received[bytes | None]) -> None:
        raise InvalidInput("amount: must be >= 0 (got -3)")

    consumer: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=f"g-{unique}",
        handler=handle,
        decoder=raw_decoder,
        publisher=publisher,
        dead_letter_topic=dlq,
    )
    await run_until(consumer, lambda: consumer.stats.dead_lettered == 1)
    (record,) = await read_topic(kafka, dlq, 1)
    dead = json.loads(record.value)
    assert dead["reason"] == "amount: must be >= 0 (got -3)"
    assert base64.b64decode(dead["value_b64"]) == b"payload-1"
    assert base64.b64decode(dead["key_b64"]) == b"a"
    assert dict(record.headers)["ce_type"] == DEAD_LETTERED.encode()


async def test_retryable_errors_are_retried_until_the_effect_happens(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    topic = f"t.retry.{unique}"
    await ensure_topics(kafka, [topic], partitions=1)
    for i in range(3):
        await (await publisher.send_raw(topic, f"v{i}".encode()))
    failures_left = {"v1": 4}
    effects: list[bytes | None] = []

    async def handle(msg: Received[bytes | None]) -> None:
        name = (msg.payload or b"").decode()
        if failures_left.get(name, 0) > 0:
            failures_left[name] -= 1
            raise RetryableError("redis is down")
        effects.append(msg.payload)

    consumer: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=f"g-{unique}",
        handler=handle,
        decoder=raw_decoder,
        publisher=publisher,
        retry=RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05),
    )
    await run_until(consumer, lambda: len(effects) == 3)
    assert effects == [b"v0", b"v1", b"v2"]
    assert consumer.stats.retries == 4
    assert consumer.stats.dead_lettered == 0


async def test_stop_during_retries_leaves_the_record_uncommitted(
    kafka: KafkaSettings, publisher: Publisher, unique: str
) -> None:
    topic, group = f"t.stopretry.{unique}", f"g-{unique}"
    await ensure_topics(kafka, [topic], partitions=1)
    await (await publisher.send_raw(topic, b"only"))
    attempts = 0

    async def always_down(msg: Received[bytes | None]) -> None:
        nonlocal attempts
        attempts += 1
        raise RetryableError("dependency down")

    first: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=group,
        handler=always_down,
        decoder=raw_decoder,
        publisher=publisher,
        retry=RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.02),
    )
    await run_until(first, lambda: attempts >= 3)
    assert first.stats.committed == {}

    effects: list[bytes | None] = []

    async def healthy(msg: Received[bytes | None]) -> None:
        effects.append(msg.payload)

    second: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=group,
        handler=healthy,
        decoder=raw_decoder,
        publisher=publisher,
    )
    await run_until(second, lambda: effects == [b"only"])
    assert second.stats.committed == {f"{topic}[0]": 1}


async def test_a_consumer_killed_after_its_effect_but_before_commit_gets_the_record_again(
    kafka: KafkaSettings, publisher: Publisher, unique: str, tmp_path: Path
) -> None:
    topic, group = f"t.kill.{unique}", f"g-{unique}"
    await ensure_topics(kafka, [topic], partitions=1)
    values = [b"m0", b"m1", b"hang", b"m3"]
    for value in values:
        await publisher.send_raw(topic, value)
    await publisher.flush()

    effects = tmp_path / "effects.log"
    script = Path(__file__).with_name("_killable_consumer.py")
    child = subprocess.Popen(  # noqa: ASYNC220 - a real process, killed for real
        [sys.executable, str(script), kafka.require_bootstrap(), topic, group, str(effects)]
    )
    try:
        async with asyncio.timeout(60):
            while b"hang" not in (effects.read_bytes() if effects.exists() else b""):
                assert child.poll() is None, "the consumer process died on its own"
                await asyncio.sleep(0.05)
    finally:
        child.kill()  # SIGKILL: no commit, no leave-group
        child.wait()
    assert effects.read_bytes().split() == [b"m0", b"m1", b"hang"]

    redelivered: list[bytes | None] = []

    async def handle(msg: Received[bytes | None]) -> None:
        redelivered.append(msg.payload)

    survivor: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=group,
        handler=handle,
        decoder=raw_decoder,
        publisher=publisher,
    )
    await run_until(survivor, lambda: b"m3" in redelivered, timeout_s=60)
    # Nothing was committed before the kill: the whole batch comes again, in order,
    # including the record whose effect happened just before the kill.
    assert redelivered == values


POLL_S = 0.2  # the consume loop's `getmany` timeout (`Consumer._loop`)


async def test_wait_assigned_waits_for_the_first_offset_lookup(
    kafka: KafkaSettings, publisher: Publisher, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broadcast consumer starts at the end of its topic. Between the assignment and the
    answer to its first offset lookup, a record published would fall before the start
    offset and be skipped: `wait_assigned` must not return inside that window. The real
    broker answers the lookup; the test only holds the answer back until it says so."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.consumer.fetcher import Fetcher

    topic = f"t.window.{unique}"
    await ensure_topics(kafka, [topic], partitions=1)
    lookup_held = asyncio.Event()
    release = asyncio.Event()
    proc_offset_request = Fetcher._proc_offset_request

    async def held_offset_request(self: Fetcher, node_id: int, topic_data: object) -> object:
        lookup_held.set()
        await release.wait()
        return await proc_offset_request(self, node_id, topic_data)

    monkeypatch.setattr(Fetcher, "_proc_offset_request", held_offset_request)
    received: list[bytes] = []

    async def handle(record: Received[bytes | None]) -> None:
        received.append(record.payload or b"")

    consumer: Consumer[bytes | None] = Consumer(
        kafka,
        topics=[topic],
        group_id=None,  # broadcast: starts at the end of the topic
        handler=handle,
        decoder=raw_decoder,
        publisher=publisher,
    )
    running = asyncio.create_task(consumer.run())
    producer = AIOKafkaProducer(**kafka.client_kwargs())
    await producer.start()
    try:
        async with asyncio.timeout(30):
            await lookup_held.wait()  # assigned; the first offset lookup is in flight
        assigned = asyncio.create_task(consumer.wait_assigned(30))
        # A quiet window, the only way to see that something does not happen: three polls
        # of the consume loop, each of which would have let the old check (assignment
        # only) mark the consumer assigned.
        await asyncio.wait({assigned}, timeout=3 * POLL_S)
        returned_early = assigned.done()
        if returned_early:  # the bug: a record published now is lost
            await producer.send_and_wait(topic, b"in the window")
        release.set()
        await assigned
        await producer.send_and_wait(topic, b"after wait_assigned")
        async with asyncio.timeout(30):
            while b"after wait_assigned" not in received:  # noqa: ASYNC110 - polling the handler's list
                await asyncio.sleep(0.05)
    finally:
        release.set()
        await producer.stop()
        consumer.stop()
        await running
    assert not returned_early, f"returned before the start offset was known: {received}"
    assert received == [b"after wait_assigned"]
