"""The ingestion service against the real broker and Redis.

- a stream mixing valid, invalid and duplicate events: every input ends in
  exactly one place (validated, rejected, or counted as a duplicate);
- trace continuity from a producer's `traceparent`;
- SIGKILL mid-stream and restart: nothing lost, re-publication bounded by one
  batch, the de-duplication horizon survives the restart.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider

from mlbus.bus import header
from mlbus.config import KafkaSettings, RedisSettings
from mlbus.events import INGEST_REJECTED, INGEST_VALIDATED, IngestRejected, IngestValidated
from mlbus.example import fraud_spec_path, generate
from mlbus.ingestion import IngestionService, IngestionSettings
from mlbus.spec import ProjectSpec, load_spec
from tests.integration._topics import read_to_end

pytestmark = pytest.mark.integration

TX, CB = "payments.transactions.v1", "payments.chargebacks.v1"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def write_spec(tmp_path: Path, unique: str) -> tuple[Path, str, str]:
    """The fraud spec with topics of this test's own."""
    tx, cb = f"tx.{unique}", f"cb.{unique}"
    text = fraud_spec_path().read_text().replace(TX, tx).replace(CB, cb)
    path = tmp_path / "mlbus.yaml"
    path.write_text(text)
    return path, tx, cb


def service_settings(
    spec: Path, kafka: KafkaSettings, redis_url: str, unique: str, tmp_path: Path, **extra: Any
) -> IngestionSettings:
    return IngestionSettings(
        spec=spec,
        data_dir=tmp_path / "data",
        kafka=kafka,
        redis=RedisSettings(url=redis_url, key_prefix=f"t{unique}"),
        group_id=f"ingest-{unique}",
        **extra,
    )


def recent_events(spec: ProjectSpec, n: int, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Generated events placed in the last days, so lateness rules accept them."""
    now = datetime.now(UTC)
    data = generate(spec, n, seed=seed, start=now - timedelta(days=3), days=1)
    out = {name: list(events.events()) for name, events in data.sources.items()}
    cutoff = (now - timedelta(minutes=1)).isoformat()
    out["chargebacks"] = [e for e in out["chargebacks"] if str(e["ts"]) < cutoff]
    return out


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


@pytest.fixture
async def producer(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    """A plain Kafka client: what any producer in any language does (like `kcat -P`)."""
    client = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=1)
    await client.start()
    yield client
    await client.stop()


Sent = tuple[str, int, int]  # topic, partition, offset


async def produce(
    producer: AIOKafkaProducer,
    topic: str,
    values: list[bytes],
    keys: list[bytes | None] | None = None,
    headers: dict[int, list[tuple[str, bytes]]] | None = None,
) -> list[Sent]:
    futures = [
        await producer.send(
            topic,
            value,
            key=keys[i] if keys else None,
            headers=(headers or {}).get(i),
        )
        for i, value in enumerate(values)
    ]
    return [(topic, m.partition, m.offset) for m in await asyncio.gather(*futures)]


class TopicReader:
    """Reads an mlbus output topic from the start, keeping records from our source topics."""

    def __init__(self, kafka: KafkaSettings, topic: str, source_topics: set[str]) -> None:
        self._consumer = AIOKafkaConsumer(
            topic, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
        )
        self._sources = source_topics
        self.records: list[tuple[ConsumerRecord[bytes, bytes], dict[str, Any]]] = []

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> None:
        for batch in (await self._consumer.getmany(timeout_ms=100)).values():
            for record in batch:
                self._keep(record)

    async def read_to_end(self) -> None:
        """Everything the topic holds now: once the writers stopped, all they ever wrote."""
        await read_to_end(self._consumer, self._keep)

    def _keep(self, record: ConsumerRecord[bytes, bytes]) -> None:
        body = json.loads(record.value)
        if body["source_topic"] in self._sources:
            self.records.append((record, body))


async def wait_for(
    condition: Callable[[], bool],
    readers: list[TopicReader],
    timeout_s: float = 40,
    task: asyncio.Task[None] | None = None,
) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            if task is not None and task.done():
                task.result()
            for reader in readers:
                await reader.poll()


def invalid_transactions(valid: dict[str, Any]) -> list[tuple[bytes, str]]:
    """Broken records, each with the reason code it must be rejected for."""
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    return [
        (b"not json at all", "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (b'{"amount": NaN}', "non_finite_number"),
        (b"{" + b'"x":' * 3000 + b"}", "too_large"),
        (encode({**valid, "country": "ZZ"}), "not_in_enum"),
        (encode({**valid, "amount": -5}), "out_of_range"),
        (encode({**valid, "amount": "12"}), "wrong_type"),
        (encode({**valid, "ts": future}), "future_event_time"),
        (encode({**valid, "ts": "2020-01-01T00:00:00Z"}), "too_late"),
        (encode({k: v for k, v in valid.items() if k != "card_id"}), "missing_field"),
        (encode({**valid, "card_id": "card_1"}), "pattern_mismatch"),
        (encode({**valid, "surprise": 1}), "unknown_field"),
        (encode({**valid, "channel": None}), "null_not_allowed"),
        (encode({**valid, "ts": "last tuesday"}), "bad_timestamp"),
    ]


async def test_every_input_ends_in_exactly_one_place(
    kafka: KafkaSettings,
    redis_url: str,
    unique: str,
    tmp_path: Path,
    producer: AIOKafkaProducer,
) -> None:
    spec_path, tx, cb = write_spec(tmp_path, unique)
    spec = load_spec(spec_path)
    events = recent_events(spec, 300)
    transactions, chargebacks = events["transactions"], events["chargebacks"][:20]
    assert len(chargebacks) == 20
    broken = invalid_transactions(transactions[0])
    duplicates = transactions[:50]  # producers retry: the same events again, byte for byte

    from mlbus.bus import _consumer, _publisher

    provider = TracerProvider()
    saved = (_publisher._tracer, _consumer._tracer)
    _publisher._tracer = _consumer._tracer = provider.get_tracer("mlbus.bus")
    settings = service_settings(spec_path, kafka, redis_url, unique, tmp_path, max_batch=100)
    service = IngestionService(settings)
    task = asyncio.create_task(service.run())
    try:
        traced = {100: [("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode())]}
        sent_tx = await produce(producer, tx, [encode(e) for e in transactions], headers=traced)
        sent_bad = await produce(producer, tx, [raw for raw, _ in broken])
        sent_cb = await produce(producer, cb, [encode(e) for e in chargebacks])
        bad_cb = [encode({**c, "is_fraud": "yes"}) for c in events["chargebacks"][20:25]]
        sent_bad_cb = await produce(producer, cb, bad_cb)
        sent_dup = await produce(producer, tx, [encode(e) for e in duplicates])

        async with (
            TopicReader(kafka, INGEST_VALIDATED, {tx, cb}) as validated,
            TopicReader(kafka, INGEST_REJECTED, {tx, cb}) as rejected,
        ):
            total = len(transactions) + len(broken) + 20 + len(bad_cb) + len(duplicates)
            await wait_for(
                lambda: (
                    len(validated.records) + len(rejected.records) + service.stats.duplicates
                    >= total
                ),
                [validated, rejected],
                task=task,
            )
            # Stopped, the service can publish nothing more: read what it published to the
            # end, so anything published twice shows up.
            await service.wait_started()
            service.stop()
            await task
            await validated.read_to_end()
            await rejected.read_to_end()
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)
        _publisher._tracer, _consumer._tracer = saved
        provider.shutdown()

    stats = service.stats
    assert (stats.accepted, stats.rejected, stats.duplicates) == (320, 19, 50)
    assert len(validated.records) == 320
    assert len(rejected.records) == 19

    # Exactly one place per input: validated offsets, rejected offsets, duplicates.
    done_valid = {
        (b["source_topic"], b["source_partition"], b["source_offset"]) for _, b in validated.records
    }
    done_rejected = {
        (b["source_topic"], b["source_partition"], b["source_offset"]) for _, b in rejected.records
    }
    assert done_valid.isdisjoint(done_rejected)
    inputs = set(sent_tx + sent_bad + sent_cb + sent_bad_cb + sent_dup)
    assert done_valid | done_rejected <= inputs
    assert len(inputs) == len(done_valid) + len(done_rejected) + stats.duplicates

    by_id = {}
    for record, body in validated.records:
        event = IngestValidated.model_validate(body)
        by_id[event.event_id] = (record, event)
        assert record.key == event.entity_id.encode()
        assert event.event_time.utcoffset() == timedelta(0)
        assert event.contract_version == 1
        assert header(record.headers, "ce_id") == event.event_id
    expected_ids = {e["transaction_id"] for e in transactions} | {
        c["chargeback_id"] for c in chargebacks
    }
    assert set(by_id) == expected_ids
    first_record, first = by_id[transactions[100]["transaction_id"]]
    assert first.source == "transactions"
    assert first.payload["amount"] == transactions[100]["amount"]
    assert first.entity_id == transactions[100]["card_id"]
    assert (first.source_topic, first.source_partition, first.source_offset) == sent_tx[100]
    # The producer's trace continues; an untraced record starts a trace of its own.
    assert (header(first_record.headers, "traceparent") or "").split("-")[1] == TRACE_ID
    other_record, _ = by_id[transactions[1]["transaction_id"]]
    other_trace = (header(other_record.headers, "traceparent") or "--").split("-")[1]
    assert other_trace not in ("", TRACE_ID)
    assert by_id[chargebacks[0]["chargeback_id"]][1].source == "chargebacks"

    got = {
        (
            b["source_topic"],
            b["source_partition"],
            b["source_offset"],
        ): IngestRejected.model_validate(b)
        for _, b in rejected.records
    }
    for (raw, code), where in zip(broken, sent_bad, strict=True):
        reject = got[where]
        assert base64.b64decode(reject.raw_b64) == raw
        assert code in [r.code for r in reject.reasons], (code, reject.reasons)
        assert all(r.message for r in reject.reasons)
    for where in sent_bad_cb:
        assert [r.code for r in got[where].reasons] == ["wrong_type"]
        assert got[where].source == "chargebacks"


async def test_killed_mid_stream_and_restarted_loses_nothing_and_dedupes_across_restarts(
    kafka: KafkaSettings,
    redis_url: str,
    unique: str,
    tmp_path: Path,
    producer: AIOKafkaProducer,
) -> None:
    spec_path, tx, _ = write_spec(tmp_path, unique)
    spec = load_spec(spec_path)
    transactions = recent_events(spec, 2000, seed=3)["transactions"]
    ids = {e["transaction_id"] for e in transactions}
    max_batch = 50
    chunks = [transactions[i : i + 100] for i in range(0, len(transactions), 100)]
    sent_broken: list[Sent] = []

    async def send_chunk(i: int) -> None:
        chunk = chunks[i]
        keys = [str(e["card_id"]).encode() for e in chunk]
        await produce(producer, tx, [encode(e) for e in chunk], keys)
        sent_broken.extend(await produce(producer, tx, [b"{not json %d" % i]))

    env = {
        **os.environ,
        "MLBUS_SPEC": str(spec_path),
        "MLBUS_DATA_DIR": str(tmp_path / "data"),
        "MLBUS_KAFKA_BOOTSTRAP_SERVERS": kafka.require_bootstrap(),
        "MLBUS_KAFKA_SESSION_TIMEOUT_S": str(kafka.session_timeout_s),
        "MLBUS_REDIS_URL": redis_url,
        "MLBUS_REDIS_KEY_PREFIX": f"t{unique}",
        "MLBUS_INGESTION_GROUP_ID": f"ingest-{unique}",
        "MLBUS_INGESTION_MAX_BATCH": str(max_batch),
    }
    child = subprocess.Popen(  # noqa: ASYNC220 - a real process, killed for real
        [sys.executable, "-m", "mlbus.ingestion"], env=env
    )
    async with (
        TopicReader(kafka, INGEST_VALIDATED, {tx}) as validated,
        TopicReader(kafka, INGEST_REJECTED, {tx}) as rejected,
    ):
        try:
            for i in range(3):
                await send_chunk(i)
            await wait_for(lambda: len(validated.records) >= 300, [validated], timeout_s=40)
            assert child.poll() is None, "the ingestion process died on its own"
            # Now a burst, and SIGKILL while it is being worked through.
            burst = asyncio.gather(*(send_chunk(i) for i in range(3, 12)))
            await wait_for(lambda: len(validated.records) > 300, [validated], timeout_s=40)
        finally:
            child.send_signal(signal.SIGKILL)  # no flush, no commit, no leave-group
            child.wait()
        await burst
        assert len(validated.records) < len(transactions)
        for i in range(12, len(chunks)):
            await send_chunk(i)
        retried = transactions[:200]  # producer retries of events accepted before the kill
        await produce(
            producer,
            tx,
            [encode(e) for e in retried],
            [str(e["card_id"]).encode() for e in retried],
        )

        settings = service_settings(
            spec_path, kafka, redis_url, unique, tmp_path, max_batch=max_batch
        )
        service = IngestionService(settings)
        task = asyncio.create_task(service.run())
        try:
            await wait_for(
                lambda: (
                    {b["event_id"] for _, b in validated.records} >= ids
                    and {(b["source_partition"], b["source_offset"]) for _, b in rejected.records}
                    >= {(p, o) for _, p, o in sent_broken}
                    and service.stats.duplicates >= len(retried)
                ),
                [validated, rejected],
                timeout_s=60,
                task=task,
            )
        finally:
            service.stop()
            await asyncio.wait_for(task, 30)
        await validated.read_to_end()  # stopped: anything published twice shows up now
        await rejected.read_to_end()

    published = [b["event_id"] for _, b in validated.records]
    assert set(published) == ids  # nothing lost, nothing invented
    rejected_at = [(b["source_partition"], b["source_offset"]) for _, b in rejected.records]
    assert set(rejected_at) == {(p, o) for _, p, o in sent_broken}
    # At-least-once: only the batch in flight at the kill may be published again.
    republished = len(published) - len(set(published))
    rejected_twice = len(rejected_at) - len(set(rejected_at))
    assert republished + rejected_twice <= max_batch
    # The horizon survived the restart: every retry of an accepted event was dropped
    # (plus replays of the in-flight batch that had been remembered before the kill).
    assert len(retried) <= service.stats.duplicates <= len(retried) + max_batch
