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
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mlbus.bus import header
from mlbus.config import KafkaSettings
from mlbus.events import INGEST_VALIDATED
from mlbus.ingestion import IngestionService
from mlbus.spec import load_spec
from tests.integration.test_ingestion import (
    encode,
    recent_events,
    service_settings,
    write_spec,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

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
        await service.wait_ready()
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
