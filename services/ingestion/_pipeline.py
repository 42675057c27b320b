"""Validate, de-duplicate, publish: what happens to each record of a source topic.

The consumer calls `handle_batch` with the untraced records of a fetch (and
`handle` per traced record, or per record when a batch fails); both only
validate (pure CPU) and queue the outcomes. `flush` runs before every offset
commit (the consumer's `before_commit` hook) and makes the batch's effects
durable, in this order:

1. ask the de-duplication store which accepted ids it already holds (while
   the answer travels, the untraced events are encoded);
2. send `ingest.validated` for new ids (keyed by entity id) and
   `ingest.rejected` for every rejection, in queue order, as closed record
   batches per partition (`Publisher.send_batch`), then await every delivery;
3. remember the new ids in the store;
4. return, and the consumer commits the offsets.

A dependency that fails (Redis, the broker) does not end the flush: each step
is retried in place with capped exponential backoff, a warning and
`mlbus.ingest.dependency_retries{dependency}`, and the steps already done are
not repeated (a retried step 2 may send again records the broker had acked
before it failed: at-least-once, same `event_id`s). The consumer waits, keeps
its place, and catches up when the dependency is back. Only `stop()` ends a
failing flush, with `FlushInterrupted` and nothing committed.

Most validated events skip the pydantic model: `validated_value` writes the
very JSON the model would (a property test holds the two equal, so
`IngestValidated` stays the contract), `validated_headers` its CloudEvents
headers. Events that are traced (the consumer's span, a producer's
`traceparent`, or this hop's own sampling roll) still go through the model and
`Publisher.record`.

A crash after 2 and before 3 publishes those events again on replay (the
downstream de-duplicates by `event_id`); a crash after 3 counts them as
duplicates on replay. Either way nothing is lost, and re-publication is
bounded by one batch per crash.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import pydantic_core
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from mlbus.bus import OutgoingRecord, Publisher, Received
from mlbus.bus._codec import CE_SPECVERSION, CONTENT_TYPE
from mlbus.contracts import Accepted, Outcome, Rejected, SourceContracts
from mlbus.errors import RetryableError
from mlbus.events import INGEST_VALIDATED, IngestRejected, IngestValidated, RejectionReason
from mlbus.telemetry import (
    PLANE_ATTRIBUTE,
    PRESAMPLED_ATTRIBUTE,
    extract_kafka_context,
    meter,
    presample_data_record,
)

from ._dedupe import SeenIds, SeenKey

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("mlbus.ingestion")

T = TypeVar("T")

_REJECTION_IDS = uuid.UUID("6f1c2a53-8a4e-4f43-9a3c-3b8e9f8f1d2e")
UNKNOWN_TOPIC = "unknown_topic"


def rejection_id(topic: str, partition: int, offset: int) -> str:
    """The same source record always gets the same rejection id, so replays are recognisable."""
    return str(uuid.uuid5(_REJECTION_IDS, f"{topic}/{partition}/{offset}"))


@dataclass
class IngestionStats:
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    flushes: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    """Failed attempts at a dependency, by dependency (`redis`, `kafka`), retried in place."""


class FlushInterrupted(RetryableError):
    """`stop()` came while a dependency was failing: nothing of the batch was committed."""


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff between attempts at a failing dependency."""

    initial_s: float = 0.1
    max_s: float = 5.0

    def delay_s(self, attempt: int) -> float:
        return float(min(self.max_s, self.initial_s * 2 ** (attempt - 1)))


# What a failing dependency raises: RedisSeenIds wraps Redis errors in RetryableError;
# aiokafka raises KafkaError subclasses (timeouts, lost connections, leader changes).
_REDIS_FAILURES = (RetryableError, ConnectionError, TimeoutError)
_KAFKA_FAILURES = (KafkaError, ConnectionError, TimeoutError)
# Retrying cannot make a record smaller: these end the flush (and the process) loudly.
_KAFKA_PERMANENT = (MessageSizeTooLargeError, RecordTooLargeError)


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~0.5 µs per record
class _Queued:
    outcome: Outcome
    record: Received[bytes | None]
    context: Context
    traced: bool
    """`context` holds a valid span (the consumer's, or the caller's): publish inside it."""


def _has_span(context: Context) -> bool:
    return bool(trace.get_current_span(context).get_span_context().is_valid)


class IngestionPipeline:
    """The per-record handler and the per-batch flush of the ingestion service."""

    def __init__(
        self,
        contracts: SourceContracts,
        publisher: Publisher,
        seen: SeenIds,
        *,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
    ) -> None:
        self._contracts = contracts
        self._publisher = publisher
        self._seen = seen
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._queue: list[_Queued] = []
        self._flushing = asyncio.Lock()  # a rebalance may call flush while one is retrying
        self._stopping = asyncio.Event()
        self.stats = IngestionStats()
        m = meter("mlbus.ingestion")
        self._accepted = m.create_counter(
            "mlbus.ingest.accepted", description="events validated and published"
        )
        self._rejected = m.create_counter(
            "mlbus.ingest.rejected", description="events rejected to the ingestion DLQ"
        )
        self._reasons = m.create_counter(
            "mlbus.ingest.rejection_reasons",
            description="rejection reasons found (a record may have several)",
        )
        self._duplicates = m.create_counter(
            "mlbus.ingest.duplicates", description="valid events dropped as already accepted"
        )
        self._retries = m.create_counter(
            "mlbus.ingest.dependency_retries",
            description="failed attempts at Redis or the broker, retried in place",
        )

    def stop(self) -> None:
        """End a flush that is waiting for a dependency (it raises `FlushInterrupted`)."""
        self._stopping.set()

    def discard(self) -> int:
        """Forget what is queued (the consumer restarts from the committed offsets and
        will deliver those records again). Returns how many were dropped."""
        dropped, self._queue = len(self._queue), []
        return dropped

    async def handle(self, record: Received[bytes | None]) -> None:
        """Validate one record and queue the outcome; `flush` publishes it."""
        context = otel_context.get_current()
        self._queue.append(_Queued(self._outcome(record), record, context, _has_span(context)))

    async def handle_batch(self, records: list[Received[bytes | None]]) -> None:
        """`handle` for consecutive records of one partition: all validated, then all queued
        (all or nothing, as the consumer's `batch_handler` must be)."""
        context = otel_context.get_current()
        traced = _has_span(context)
        outcome = self._outcome
        queued = [_Queued(outcome(record), record, context, traced) for record in records]
        self._queue.extend(queued)

    def _outcome(self, record: Received[bytes | None]) -> Outcome:
        validator = self._contracts.by_topic.get(record.topic)
        if validator is None:  # the spec changed under a running group: keep the bytes
            return Rejected(
                "",
                0,
                (
                    RejectionReason(
                        code=UNKNOWN_TOPIC, message=f"no source in the spec reads {record.topic!r}"
                    ),
                ),
            )
        return validator.validate(record.payload, now_s=self._clock())

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def flush(self) -> None:
        """Publish what was queued, await delivery, remember accepted ids.

        Retries a failing dependency in place until it answers; raises only on
        `stop()` (`FlushInterrupted`) or a permanent broker refusal, keeping the
        queue: the consumer does not commit, and the records are replayed.
        """
        async with self._flushing:
            queue = self._queue
            if not queue:
                return
            await self._flush(queue)
            self._queue = []

    async def _flush(self, queue: list[_Queued]) -> None:
        wanted: list[SeenKey] = [
            (q.outcome.source, q.outcome.event_id) for q in queue if isinstance(q.outcome, Accepted)
        ]
        lookup = asyncio.ensure_future(
            self._until_done("redis", "de-duplication lookup", lambda: self._seen.seen(wanted))
        )
        try:
            await asyncio.sleep(0)  # let the lookup put its request on the wire first
            occurred_at = datetime.now(UTC)
            # Publisher.record traces every event sent from inside a sampled span.
            in_sampled_span = trace.get_current_span().get_span_context().trace_flags.sampled
            encoded = {} if in_sampled_span else self._encode_untraced(queue, occurred_at)
            already = await lookup
        finally:
            lookup.cancel()  # only if encoding failed; a no-op on a finished task
        fresh: list[SeenKey] = []
        fresh_set: set[SeenKey] = set()
        duplicates: dict[str, int] = {}
        records: list[OutgoingRecord] = []
        for index, item in enumerate(queue):
            outcome = item.outcome
            traced = item.traced or bool(
                item.record.headers and _has_traceparent(item.record.headers)
            )
            if not isinstance(outcome, Accepted):
                rejected = _rejected(outcome, item.record)
                records.append(
                    self._record(rejected, item.record.key, item)
                    if traced
                    else self._publisher.record(rejected, item.record.key)
                )
                continue
            key = (outcome.source, outcome.event_id)
            if key in already or key in fresh_set:
                duplicates[outcome.source] = duplicates.get(outcome.source, 0) + 1
                continue
            fresh_set.add(key)
            fresh.append(key)
            ready = encoded.get(index)
            if ready is not None:
                records.append(ready)
                continue
            event = _validated(outcome, item.record, occurred_at)
            if traced:
                records.append(self._record(event, outcome.entity_id, item))
            elif in_sampled_span:
                records.append(self._publisher.record(event, outcome.entity_id))
            else:  # this hop's sampling roll said yes: a trace starts here
                records.append(self._sampled_record(event, outcome.entity_id, item.record))
        await self._until_done("kafka", "publishing", lambda: self._publish(records))
        if fresh:
            await self._until_done(
                "redis", "remembering accepted ids", lambda: self._seen.remember(fresh)
            )
        self._count(queue, duplicates)

    def _encode_untraced(
        self, queue: list[_Queued], occurred_at: datetime
    ) -> dict[int, OutgoingRecord]:
        """The hot path: validated events nobody traces, as bytes, by queue position.

        Records the publisher would trace are left out (the caller builds them
        through the model): the consumer's span, a producer's `traceparent`, or
        this hop's own roll (the one `Publisher.send` would make).
        """
        ce_time = occurred_at.isoformat().encode()
        ce_source = self._publisher.source.encode()
        encoded: dict[int, OutgoingRecord] = {}
        for index, item in enumerate(queue):
            outcome = item.outcome
            if not isinstance(outcome, Accepted) or item.traced:
                continue
            record = item.record
            if (record.headers and _has_traceparent(record.headers)) or presample_data_record(
                False
            ):
                continue
            encoded[index] = OutgoingRecord(
                INGEST_VALIDATED,
                validated_value(outcome, record, occurred_at),
                outcome.entity_id.encode(),
                validated_headers(outcome.event_id, ce_source, ce_time),
            )
        return encoded

    async def _publish(self, records: list[OutgoingRecord]) -> None:
        if not records:
            return
        futures = await self._publisher.send_batch(records)
        # gather, not one await after another: every failure is retrieved, none left dangling.
        await asyncio.gather(*futures)

    async def _until_done(
        self, dependency: str, what: str, attempt: Callable[[], Awaitable[T]]
    ) -> T:
        """`attempt()` until it succeeds; a failing dependency is retried after a backoff."""
        failures = _REDIS_FAILURES if dependency == "redis" else _KAFKA_FAILURES
        tries = 0
        while True:
            try:
                result = await attempt()
            except _KAFKA_PERMANENT:
                raise
            except failures as exc:
                tries += 1
                self.stats.retries[dependency] = self.stats.retries.get(dependency, 0) + 1
                self._retries.add(1, {"dependency": dependency})
                if self._stopping.is_set():
                    raise FlushInterrupted(
                        f"{what} failed while stopping ({exc}); the batch stays uncommitted"
                    ) from exc
                delay = self._backoff.delay_s(tries)
                log.warning(
                    "%s failed, %s unavailable (attempt %d; retrying in %.1fs, %d records held "
                    "uncommitted): %s",
                    what,
                    dependency,
                    tries,
                    delay,
                    len(self._queue),
                    exc or type(exc).__name__,
                )
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    continue
                raise FlushInterrupted(
                    f"stopped while {what} was failing; the batch stays uncommitted"
                ) from exc
            if tries:
                log.warning("%s succeeded again after %d failed attempts", what, tries)
            return result

    def _record(
        self, event: IngestValidated | IngestRejected, key: bytes | str | None, item: _Queued
    ) -> OutgoingRecord:
        """The record of `event`, traced inside the record's span or the trace its producer sent."""
        ctx = item.context
        if not item.traced:
            ctx = extract_kafka_context(item.record.headers)  # continue the producer's trace
        token = otel_context.attach(ctx)
        try:
            return self._publisher.record(event, key)
        finally:
            otel_context.detach(token)

    def _sampled_record(
        self, event: IngestValidated, key: str, record: Received[bytes | None]
    ) -> OutgoingRecord:
        """An untraced record whose event this hop samples: a new trace, as Publisher.send
        would start, under a span that tells the sampler (and Publisher.record) it is chosen."""
        span = _tracer.start_span(
            f"{record.topic} ingest",
            kind=SpanKind.INTERNAL,
            attributes={
                "messaging.kafka.destination.partition": record.partition,
                "messaging.kafka.offset": record.offset,
                "messaging.message.id": event.event_id,
                PLANE_ATTRIBUTE: event.plane,
                PRESAMPLED_ATTRIBUTE: True,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return self._publisher.record(event, key)
        finally:
            otel_context.detach(token)
            span.end()

    def _count(self, queue: list[_Queued], duplicates: dict[str, int]) -> None:
        stats = self.stats
        stats.flushes += 1
        accepted: dict[str, int] = {}
        for item in queue:
            outcome = item.outcome
            if isinstance(outcome, Accepted):
                accepted[outcome.source] = accepted.get(outcome.source, 0) + 1
                continue
            stats.rejected += 1
            self._rejected.add(1, {"source": outcome.source})
            for code in dict.fromkeys(outcome.codes):
                stats.rejected_by_reason[code] = stats.rejected_by_reason.get(code, 0) + 1
                self._reasons.add(1, {"source": outcome.source, "reason": code})
        for source, n in duplicates.items():
            accepted[source] -= n
            stats.duplicates += n
            self._duplicates.add(n, {"source": source})
        for source, n in accepted.items():
            stats.accepted += n
            if n:
                self._accepted.add(n, {"source": source})


def _has_traceparent(headers: tuple[tuple[str, bytes], ...]) -> bool:
    return any(name == "traceparent" for name, _ in headers)


def _validated(
    outcome: Accepted, record: Received[bytes | None], occurred_at: datetime | None = None
) -> IngestValidated:
    return IngestValidated(
        event_id=outcome.event_id,
        occurred_at=occurred_at or datetime.now(UTC),
        source=outcome.source,
        contract_version=outcome.contract_version,
        entity_id=outcome.entity_id,
        event_time=outcome.event_time,
        payload=outcome.payload,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
    )


def validated_value(
    outcome: Accepted, record: Received[bytes | None], occurred_at: datetime
) -> bytes:
    """The JSON value of `_validated(outcome, record, occurred_at)`, without the model.

    pydantic-core's own serializer on a dict in the model's field order; the
    validator already guarantees what the model would check (ids of 1-200
    characters, scalar payload values, finite numbers, an aware event time).
    tests/unit/test_ingest_encoding.py decodes it with `IngestValidated` and
    compares it to the model, for generated events.
    """
    return pydantic_core.to_json(
        {
            "event_id": outcome.event_id,
            "occurred_at": occurred_at,
            "source": outcome.source,
            "contract_version": outcome.contract_version,
            "entity_id": outcome.entity_id,
            "event_time": outcome.event_time,
            "payload": outcome.payload,
            "source_topic": record.topic,
            "source_partition": record.partition,
            "source_offset": record.offset,
        }
    )


_SPECVERSION = ("ce_specversion", CE_SPECVERSION.encode())
_CE_TYPE = ("ce_type", INGEST_VALIDATED.encode())
_CONTENT_TYPE = ("content-type", CONTENT_TYPE)


def validated_headers(event_id: str, source: bytes, ce_time: bytes) -> list[tuple[str, bytes]]:
    """`event_headers` of that event: `source` is the publisher's, `ce_time` its occurred_at."""
    return [
        _SPECVERSION,
        ("ce_id", event_id.encode()),
        _CE_TYPE,
        ("ce_source", source),
        ("ce_time", ce_time),
        _CONTENT_TYPE,
    ]


class CachedPartitioner:
    """aiokafka's default (murmur2, Java-compatible) partitioner, memoised per key.

    murmur2 is pure Python in aiokafka (≈2.5 µs a record); entity ids repeat, so
    a bounded cache makes keyed sends nearly as cheap as unkeyed ones.
    """

    def __init__(self, size: int = 65_536) -> None:
        from aiokafka.partitioner import DefaultPartitioner

        self._default = DefaultPartitioner()
        self._cache: dict[tuple[bytes, int], int] = {}
        self._size = size

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self._default(key, all_partitions, available))
        slot = (key, len(all_partitions))
        index = self._cache.get(slot)
        if index is None:
            if len(self._cache) >= self._size:
                self._cache.clear()
            index = all_partitions.index(self._default(key, all_partitions, available))
            self._cache[slot] = index
        return all_partitions[index]


def _rejected(outcome: Rejected, record: Received[bytes | None]) -> IngestRejected:
    return IngestRejected(
        event_id=rejection_id(record.topic, record.partition, record.offset),
        source=outcome.source or None,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        raw_b64=base64.b64encode(record.payload or b"").decode("ascii"),
        key_b64=None if record.key is None else base64.b64encode(record.key).decode("ascii"),
        reasons=outcome.reasons,
    )
