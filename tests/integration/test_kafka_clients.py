"""Any Kafka client works: confluent-kafka (librdkafka) and kafka-python on the embedded broker.

Each test produces payments into a source topic with the foreign client, with a
W3C `traceparent` header, while the real ingestion service runs; then reads
`mlbus.ingest.validated.v1` back with the same client in a consumer group
(join, fetch, commit), checking the CloudEvents headers and the trace id.

Minimum versions (README "Producing events"): librdkafka 2.0.2 (Debian's kcat)
fails the broker's ApiVersions handshake ("Read underflow"); see the README.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from mlbus.bus import header
from mlbus.config import KafkaSettings
from mlbus.events import INGEST_VALIDATED
from mlbus.example import generate
from mlbus.ingestion import IngestionService
from mlbus.spec import load_spec
from tests.integration.test_ingestion import (
    encode,
    recent_events,
    service_settings,
    write_spec,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    # kafka-python 3.0 loads its protocol schemas with importlib.resources' legacy API
    pytest.mark.filterwarnings("ignore:(read|open)_text is deprecated:DeprecationWarning"),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "produce.py"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01".encode()
EVENTS = 30
READ_TIMEOUT_S = 60.0

Validated = dict[str, tuple[dict[str, bytes], dict[str, Any]]]  # event id → headers, body


@pytest.fixture
async def source_topic(
    kafka: KafkaSettings, redis_url: str, unique: str, tmp_path: Path
) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A running ingestion service on a source topic of its own, and events for it."""
    spec_path, tx, _ = write_spec(tmp_path, unique)
    events = recent_events(load_spec(spec_path), EVENTS, seed=5)["transactions"]
    service = IngestionService(service_settings(spec_path, kafka, redis_url, unique, tmp_path))
    task = asyncio.create_task(service.run())
    try:
        await service.wait_started()
        yield tx, events
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)


def check_validated(found: Validated, events: list[dict[str, Any]]) -> None:
    assert set(found) == {e["transaction_id"] for e in events}
    for event in events:
        headers, body = found[event["transaction_id"]]
        assert body["payload"]["amount"] == event["amount"]
        assert body["entity_id"] == event["card_id"]
        assert headers["ce_type"] == INGEST_VALIDATED.encode()
        assert headers["ce_specversion"] == b"1.0"
        assert headers["ce_id"] == event["transaction_id"].encode()
        assert headers["content-type"] == b"application/json"
        # The producer's trace goes on: same trace id, a new span.
        assert headers["traceparent"].split(b"-")[1] == TRACE_ID.encode()


def wanted(body: dict[str, Any], topic: str) -> bool:
    return bool(body["source_topic"] == topic)


# ── confluent-kafka ──────────────────────────────────────────────────────────


def confluent_produce(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for event in events:
        producer.produce(
            topic,
            value=encode(event),
            key=str(event["card_id"]).encode(),
            headers=[("traceparent", TRACEPARENT)],
            on_delivery=delivered,
        )
    assert producer.flush(30) == 0
    assert errors == []


def confluent_read(bootstrap: str, group: str, topic: str, want: int) -> Validated:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([INGEST_VALIDATED])
    found: Validated = {}
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        while len(found) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            body = json.loads(msg.value())
            if wanted(body, topic):
                found[body["event_id"]] = (dict(msg.headers() or []), body)
        consumer.commit(asynchronous=False)  # the group's offsets are stored by the broker
        committed = consumer.committed(consumer.assignment(), timeout=10)
        assert any(tp.offset > 0 for tp in committed)
    finally:
        consumer.close()
    return found


async def test_confluent_kafka_produces_to_a_source_and_reads_validated_events(
    kafka: KafkaSettings, source_topic: tuple[str, list[dict[str, Any]]], unique: str
) -> None:
    from confluent_kafka import libversion

    assert libversion()[1] >= 0x020200FF  # librdkafka 2.2.0 or newer
    topic, events = source_topic
    bootstrap = kafka.require_bootstrap()
    await asyncio.to_thread(confluent_produce, bootstrap, topic, events)
    found = await asyncio.to_thread(
        confluent_read, bootstrap, f"confluent-{unique}", topic, len(events)
    )
    check_validated(found, events)


# ── kafka-python ─────────────────────────────────────────────────────────────


def kafka_python_produce(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = [
            producer.send(
                topic,
                value=encode(event),
                key=str(event["card_id"]).encode(),
                headers=[("traceparent", TRACEPARENT)],
            )
            for event in events
        ]
        producer.flush(30)
        for future in futures:
            future.get(timeout=10)
    finally:
        producer.close(timeout=10)


def kafka_python_read(bootstrap: str, group: str, topic: str, want: int) -> Validated:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        INGEST_VALIDATED,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    found: Validated = {}
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        while len(found) < want and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    body = json.loads(record.value)
                    if wanted(body, topic):
                        found[body["event_id"]] = (dict(record.headers or []), body)
        consumer.commit()
        assigned = consumer.assignment()
        assert any((consumer.committed(tp) or 0) > 0 for tp in assigned)
    finally:
        consumer.close()
    return found


async def test_kafka_python_produces_to_a_source_and_reads_validated_events(
    kafka: KafkaSettings, source_topic: tuple[str, list[dict[str, Any]]], unique: str
) -> None:
    topic, events = source_topic
    bootstrap = kafka.require_bootstrap()
    await asyncio.to_thread(kafka_python_produce, bootstrap, topic, events)
    found = await asyncio.to_thread(
        kafka_python_read, bootstrap, f"kafka-python-{unique}", topic, len(events)
    )
    check_validated(found, events)


def test_header_helper_reads_foreign_client_headers() -> None:
    """Headers as confluent-kafka and kafka-python hand them over: a list of (str, bytes)."""
    assert header([("traceparent", TRACEPARENT)], "traceparent") == TRACEPARENT.decode()


# ── examples/produce.py ──────────────────────────────────────────────────────


async def test_the_produce_example_sends_each_file_to_its_topic_and_holds_back_future_labels(
    kafka: KafkaSettings, unique: str, tmp_path: Path
) -> None:
    spec_path, tx, cb = write_spec(tmp_path, unique)
    now = datetime.now(UTC)
    data = generate(load_spec(spec_path), 200, seed=2, start=now - timedelta(days=2), days=2)
    folder = tmp_path / "data"
    data.write_jsonl(folder)
    due = now + timedelta(minutes=5)
    late_labels = sum(
        1
        for e in data.sources["chargebacks"].events()
        if datetime.fromisoformat(str(e["ts"])) > due
    )
    assert late_labels > 0  # a chargeback comes days after its payment
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(EXAMPLE), str(folder), "--spec", str(spec_path), "--bootstrap",
         kafka.require_bootstrap()],
        capture_output=True,
        text=True,
        timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"200 events sent to {tx}" in done.stdout
    sent_labels = 200 - late_labels
    assert f"{sent_labels:,} events sent to {cb}, {late_labels:,} dated after now kept back" in (
        done.stdout
    )
    consumer = AIOKafkaConsumer(
        tx, cb, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    counts = {tx: 0, cb: 0}
    try:
        async with asyncio.timeout(30):
            while counts != {tx: 200, cb: sent_labels}:
                for part, records in (await consumer.getmany(timeout_ms=200)).items():
                    counts[part.topic] += len(records)
    finally:
        await consumer.stop()
