"""A flush waits out a failing dependency: retried, never repeated, never skipped.

The flush runs as the consumer runs it at the commit, under the bus's retry
(`mlbus.bus.until_done`, ADR 0026): a failing dependency ends an attempt, and the
next attempt resumes at the step that failed. Fakes stand in for Redis and the
broker here (the real outage, with a Redis that is stopped and started again,
is tests/integration/test_ingestion_outage.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from mlbus.bus import RETRYABLE, OutgoingRecord, Received, RetryPolicy, until_done
from mlbus.contracts import SourceContracts
from mlbus.errors import RetryableError
from mlbus.events import IngestValidated
from mlbus.example import fraud_spec_path, generate
from mlbus.ingestion import FlushInterrupted, IngestionPipeline
from mlbus.spec import load_spec
from mlbus.telemetry._sampling import set_data_sample_ratio

TOPIC = "payments.transactions.v1"
FAST = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.01)


class FlakySeen:
    """The de-duplication store, failing the first `seen_failures` / `remember_failures` calls."""

    def __init__(self, seen_failures: int = 0, remember_failures: int = 0) -> None:
        self.seen_failures = seen_failures
        self.remember_failures = remember_failures
        self.ids: set[tuple[str, str]] = set()
        self.calls: list[str] = []
        self.asked_three_times = asyncio.Event()

    async def seen(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        self.calls.append("seen")
        if self.calls.count("seen") >= 3:
            self.asked_three_times.set()
        if self.seen_failures:
            self.seen_failures -= 1
            raise RetryableError("de-duplication store unavailable: connection refused")
        return {k for k in keys if k in self.ids}

    async def remember(self, keys: Sequence[tuple[str, str]]) -> None:
        self.calls.append("remember")
        if self.remember_failures:
            self.remember_failures -= 1
            raise RetryableError("de-duplication store unavailable: connection refused")
        self.ids.update(keys)

    async def close(self) -> None:
        return None


class FlakyPublisher:
    """The broker, failing the first `failures` deliveries with `error`."""

    source = "/mlbus/ingestion"

    def __init__(self, log: list[str], failures: int = 0, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or KafkaConnectionError("broker unreachable")
        self.delivered: list[OutgoingRecord] = []
        self.log = log

    def record(self, event: Any, key: Any = None, *, topic: str | None = None) -> OutgoingRecord:
        return OutgoingRecord(topic or event.topic, event.model_dump_json().encode(), key, [])

    async def send_batch(self, records: Sequence[OutgoingRecord]) -> list[asyncio.Future[None]]:
        self.log.append("send")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failures:
            self.failures -= 1
            future.set_exception(self.error)
        else:
            self.delivered.extend(records)
            future.set_result(None)
        return [future]


@pytest.fixture(autouse=True)
def untraced() -> Iterator[None]:
    set_data_sample_ratio(0.0)
    yield
    set_data_sample_ratio(None)


def records(n: int) -> list[Received[bytes | None]]:
    spec = load_spec(fraud_spec_path())
    start = datetime.now(UTC) - timedelta(days=2)
    events = list(generate(spec, n, start=start, days=1).sources["transactions"].events())[:n]
    return [
        Received(json.dumps(e).encode(), TOPIC, 0, i, None, (), 0) for i, e in enumerate(events)
    ]


def pipeline(seen: FlakySeen, publisher: FlakyPublisher) -> IngestionPipeline:
    contracts = SourceContracts(load_spec(fraud_spec_path()))
    return IngestionPipeline(contracts, publisher, seen)  # type: ignore[arg-type]


async def commit(ingest: IngestionPipeline, stopping: asyncio.Event | None = None) -> None:
    """`ingest.flush` as the consumer runs it before a commit: retried under the policy
    until it lands; the error it gave up on, raised, if `stopping` came first."""
    error = await until_done(
        ingest.flush,
        policy=FAST,
        stopping=stopping or asyncio.Event(),
        retry_on=RETRYABLE,
        what="commit-time work",
    )
    if error is not None:
        raise error


def published_offsets(publisher: FlakyPublisher) -> list[int]:
    return [
        IngestValidated.model_validate_json(r.value or b"").source_offset
        for r in publisher.delivered
    ]


async def test_a_failing_store_is_retried_and_every_event_is_published_once() -> None:
    seen, publisher = FlakySeen(seen_failures=2, remember_failures=2), FlakyPublisher([])
    ingest = pipeline(seen, publisher)
    await ingest.handle_batch(records(40))
    await commit(ingest)
    assert published_offsets(publisher) == list(range(40))
    assert publisher.log == ["send"]  # remembering failed after delivery: not sent again
    assert seen.calls == ["seen"] * 3 + ["remember"] * 3
    assert ingest.stats.retries == {"redis": 4}
    assert (ingest.stats.accepted, ingest.queued) == (40, 0)


async def test_a_failing_broker_is_retried_and_ids_are_remembered_only_after_delivery() -> None:
    order: list[str] = []
    seen, publisher = FlakySeen(), FlakyPublisher(order, failures=2)
    original_remember = seen.remember

    async def remember(keys: Sequence[tuple[str, str]]) -> None:
        order.append("remember")
        await original_remember(keys)

    seen.remember = remember  # type: ignore[method-assign]
    ingest = pipeline(seen, publisher)
    await ingest.handle_batch(records(25))
    await commit(ingest)
    assert order == ["send", "send", "send", "remember"]
    assert seen.calls.count("seen") == 1  # the lookup is not repeated
    assert published_offsets(publisher) == list(range(25))
    assert ingest.stats.retries == {"kafka": 2}


async def test_stop_ends_a_flush_waiting_for_a_dependency_with_nothing_done() -> None:
    seen, publisher = FlakySeen(seen_failures=10**6), FlakyPublisher([])
    ingest = pipeline(seen, publisher)
    await ingest.handle_batch(records(10))
    stopping = asyncio.Event()
    flushing = asyncio.create_task(commit(ingest, stopping))
    await asyncio.wait_for(seen.asked_three_times.wait(), 10)
    assert not flushing.done()  # waiting, its place kept
    stopping.set()  # the consumer's stop()
    with pytest.raises(FlushInterrupted):
        await flushing
    assert ingest.queued == 10  # kept: not committed, consumed again after a restart
    assert not publisher.delivered
    assert "remember" not in seen.calls
    assert ingest.stats.accepted == 0


async def test_a_record_the_broker_can_never_take_is_not_retried() -> None:
    error = MessageSizeTooLargeError("the message is 2000000 bytes")
    seen, publisher = FlakySeen(), FlakyPublisher([], failures=1, error=error)
    ingest = pipeline(seen, publisher)
    await ingest.handle_batch(records(5))
    with pytest.raises(MessageSizeTooLargeError):
        await commit(ingest)
    assert ingest.stats.retries == {}
    assert ingest.queued == 5


async def test_duplicates_found_after_a_retried_lookup_are_dropped() -> None:
    batch = records(12)
    seen, publisher = FlakySeen(seen_failures=1), FlakyPublisher([])
    seen.ids = {("transactions", json.loads(r.payload or b"")["transaction_id"]) for r in batch[:4]}
    ingest = pipeline(seen, publisher)
    await ingest.handle_batch(batch)
    await commit(ingest)
    assert published_offsets(publisher) == list(range(4, 12))
    assert (ingest.stats.accepted, ingest.stats.duplicates) == (8, 4)
