"""Validate, de-duplicate, publish: what happens to each record of a source topic.

The consumer calls `handle_batch` with the untraced records of a fetch (and
`handle` per traced record, or per record when a batch fails); both only
validate (pure CPU) and queue the outcomes. `flush` runs before every offset commit (the consumer's
`before_commit` hook) and makes the batch's effects durable, in this order:

1. ask the de-duplication store which accepted ids it already holds;
2. send `ingest.validated` for new ids (keyed by entity id) and
   `ingest.rejected` for every rejection, then await every delivery;
3. remember the new ids in the store;
4. return, and the consumer commits the offsets.

Most validated events skip the pydantic model: `validated_value` writes the
very JSON the model would (a property test holds the two equal, so
`IngestValidated` stays the contract), `validated_headers` its CloudEvents
headers. Events that are traced (the consumer's span, a producer's
`traceparent`, or this hop's own sampling roll) still go through the model and
`Publisher.send`.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pydantic_core
from aiokafka.structs import RecordMetadata
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from mlbus.bus import Publisher, Received
from mlbus.bus._codec import CE_SPECVERSION, CONTENT_TYPE
from mlbus.contracts import Accepted, Outcome, Rejected, SourceContracts
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


@dataclass(frozen=True, slots=True)
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
    ) -> None:
        self._contracts = contracts
        self._publisher = publisher
        self._seen = seen
        self._clock = clock
        self._queue: list[_Queued] = []
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
        """Publish what was queued, await delivery, remember accepted ids. Raises on failure
        (the queue is kept: the consumer does not commit, and a retry publishes it again)."""
        queue = self._queue
        if not queue:
            return
        wanted: list[SeenKey] = [
            (q.outcome.source, q.outcome.event_id) for q in queue if isinstance(q.outcome, Accepted)
        ]
        already = await self._seen.seen(wanted) if wanted else set()
        fresh: list[SeenKey] = []
        fresh_set: set[SeenKey] = set()
        duplicates: dict[str, int] = {}
        futures = []
        publisher = self._publisher
        send, send_raw = publisher.send, publisher.send_raw
        occurred_at = datetime.now(UTC)
        ce_time = occurred_at.isoformat().encode()
        ce_source = publisher.source.encode()
        # Publisher.send would trace every event sent from inside a sampled span.
        bypass = not trace.get_current_span().get_span_context().trace_flags.sampled
        for item in queue:
            outcome = item.outcome
            record = item.record
            if isinstance(outcome, Accepted):
                key = (outcome.source, outcome.event_id)
                if key in already or key in fresh_set:
                    duplicates[outcome.source] = duplicates.get(outcome.source, 0) + 1
                    continue
                fresh_set.add(key)
                fresh.append(key)
                untraced = not item.traced and not (
                    record.headers and _has_traceparent(record.headers)
                )
                if untraced and bypass:
                    # The roll Publisher.send would make; a yes starts this event's trace.
                    if not presample_data_record(False):
                        futures.append(
                            await send_raw(
                                INGEST_VALIDATED,
                                validated_value(outcome, record, occurred_at),
                                outcome.entity_id,
                                validated_headers(outcome.event_id, ce_source, ce_time),
                            )
                        )
                    else:
                        futures.append(
                            await self._send_sampled(
                                _validated(outcome, record, occurred_at), outcome.entity_id, record
                            )
                        )
                    continue
                event: IngestValidated | IngestRejected = _validated(outcome, record, occurred_at)
                key_out: bytes | str | None = outcome.entity_id
            else:
                event = _rejected(outcome, record)
                key_out = record.key
            if item.traced or (record.headers and _has_traceparent(record.headers)):
                futures.append(await self._send_traced(event, key_out, item))
            else:
                futures.append(await send(event, key_out))
        for future in futures:
            await future  # raises if the broker refused, before anything is committed
        await self._seen.remember(fresh)
        self._queue = []
        self._count(queue, duplicates)

    async def _send_traced(
        self, event: IngestValidated | IngestRejected, key: bytes | str | None, item: _Queued
    ) -> asyncio.Future[RecordMetadata]:
        """Publish inside the record's span, or else the trace its producer sent."""
        ctx = item.context
        if not item.traced:
            ctx = extract_kafka_context(item.record.headers)  # continue the producer's trace
        token = otel_context.attach(ctx)
        try:
            return await self._publisher.send(event, key)
        finally:
            otel_context.detach(token)

    async def _send_sampled(
        self, event: IngestValidated, key: str, record: Received[bytes | None]
    ) -> asyncio.Future[RecordMetadata]:
        """An untraced record whose event this hop samples: a new trace, as Publisher.send
        would start, under a span that tells the sampler (and Publisher.send) it is chosen."""
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
            return await self._publisher.send(event, key)
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
