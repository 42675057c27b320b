"""Validate, de-duplicate, publish: what happens to each record of a source topic.

The consumer calls `handle` per record; it only validates (pure CPU) and
queues the outcome. `flush` runs before every offset commit (the consumer's
`before_commit` hook) and makes the batch's effects durable, in this order:

1. ask the de-duplication store which accepted ids it already holds;
2. send `ingest.validated` for new ids (keyed by entity id) and
   `ingest.rejected` for every rejection, then await every delivery;
3. remember the new ids in the store;
4. return, and the consumer commits the offsets.

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

from aiokafka.structs import RecordMetadata
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from mlbus.bus import Publisher, Received
from mlbus.contracts import Accepted, Outcome, Rejected, SourceContracts
from mlbus.events import IngestRejected, IngestValidated, RejectionReason
from mlbus.telemetry import extract_kafka_context, meter

from ._dedupe import SeenIds, SeenKey

log = logging.getLogger(__name__)

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
        validator = self._contracts.for_topic(record.topic)
        outcome: Outcome
        if validator is None:  # the spec changed under a running group: keep the bytes
            outcome = Rejected(
                "",
                0,
                (
                    RejectionReason(
                        code=UNKNOWN_TOPIC, message=f"no source in the spec reads {record.topic!r}"
                    ),
                ),
            )
        else:
            outcome = validator.validate(record.payload, now_s=self._clock())
        self._queue.append(_Queued(outcome, record, otel_context.get_current()))

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
        for item in queue:
            outcome = item.outcome
            if isinstance(outcome, Accepted):
                key = (outcome.source, outcome.event_id)
                if key in already or key in fresh_set:
                    duplicates[outcome.source] = duplicates.get(outcome.source, 0) + 1
                    continue
                fresh_set.add(key)
                fresh.append(key)
                event: IngestValidated | IngestRejected = _validated(outcome, item.record)
                key_out: bytes | str | None = outcome.entity_id
            else:
                event = _rejected(outcome, item.record)
                key_out = item.record.key
            futures.append(await self._send(event, key_out, item))
        for future in futures:
            await future  # raises if the broker refused, before anything is committed
        await self._seen.remember(fresh)
        self._queue = []
        self._count(queue, duplicates)

    async def _send(
        self, event: IngestValidated | IngestRejected, key: bytes | str | None, item: _Queued
    ) -> asyncio.Future[RecordMetadata]:
        ctx = item.context
        if not trace.get_current_span(ctx).get_span_context().is_valid:
            if not any(name == "traceparent" for name, _ in item.record.headers):
                return await self._publisher.send(event, key)
            ctx = extract_kafka_context(item.record.headers)  # continue the producer's trace
        token = otel_context.attach(ctx)
        try:
            return await self._publisher.send(event, key)
        finally:
            otel_context.detach(token)

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


def _validated(outcome: Accepted, record: Received[bytes | None]) -> IngestValidated:
    return IngestValidated(
        event_id=outcome.event_id,
        source=outcome.source,
        contract_version=outcome.contract_version,
        entity_id=outcome.entity_id,
        event_time=outcome.event_time,
        payload=outcome.payload,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
    )


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
