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

A dependency that fails (Redis, the broker) ends the attempt with
`FlushInterrupted` (a RetryableError), counted in `IngestionStats.retries` and
`mlbus.ingest.dependency_retries{dependency}`; the consumer retries its
commit-time work under its RetryPolicy (ADR 0026) and the next attempt
resumes at the step that failed: the steps already done are not repeated (a
retried step 2 may send again records the broker had acked before it failed:
at-least-once, same `event_id`s). The consumer waits, keeps its place, and
catches up when the dependency is back. Only `stop()` ends a failing flush,
and then nothing is committed.

Whether a record is traced is decided once, by the consumer: a producer's
sampled `traceparent` is always continued, and other records are sampled at
`data_sample_ratio` (the bus's roll). A record handled inside a span (the
consumer's) is published through the event model and `Publisher.record`, in
that trace. Every other record is one the consumer chose not to trace: nothing
rolls again here, and its event is published without trace headers, a
validated one written by `ValidatedEncoder` without the model (_records.py).
Metrics are counted once per flush, per source (and reason).

A crash after 2 and before 3 publishes those events again on replay (the
downstream de-duplicates by `event_id`); a crash after 3 counts them as
duplicates on replay. Either way nothing is lost, and re-publication is
bounded by one batch per crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeVar

from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from mlbus.bus import OutgoingRecord, Publisher, Received
from mlbus.bus._codec import encode_event, event_headers
from mlbus.contracts import Accepted, Outcome, Rejected, SourceContracts
from mlbus.errors import RetryableError
from mlbus.events import IngestRejected, IngestValidated, RejectionReason
from mlbus.telemetry import meter

from ._dedupe import SeenIds, SeenKey
from ._records import ValidatedEncoder, _rejected, _validated

log = logging.getLogger(__name__)

T = TypeVar("T")

UNKNOWN_TOPIC = "unknown_topic"


@dataclass
class IngestionStats:
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    flushes: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    """Failed attempts at a dependency, by dependency (`redis`, `kafka`); the consumer
    retries the flush, which resumes at the step that failed."""


Dependency = Literal["redis", "kafka"]


class FlushInterrupted(RetryableError):
    """A dependency failed during a flush: the steps done are kept, nothing is committed,
    and the consumer's retry of the flush resumes at the step that failed."""

    def __init__(self, dependency: Dependency, message: str) -> None:
        super().__init__(message)
        self.dependency = dependency


# What a failing dependency raises: RedisSeenIds wraps Redis errors in RetryableError;
# aiokafka raises KafkaError subclasses (timeouts, lost connections, leader changes).
_REDIS_FAILURES = (RetryableError, ConnectionError, TimeoutError)
_KAFKA_FAILURES = (KafkaError, ConnectionError, TimeoutError)
# Retrying cannot make a record smaller: these end the flush (and the process) loudly.
_KAFKA_PERMANENT = (MessageSizeTooLargeError, RecordTooLargeError)


@dataclass(slots=True)
class _Queued:
    """The records of one handler call (one partition's, in order) and their outcomes."""

    records: list[Received[bytes | None]]
    outcomes: list[Outcome]
    context: Context
    traced: bool
    """`context` holds a valid span (the consumer's, or the caller's): publish inside it."""


def _has_span(context: Context) -> bool:
    return bool(trace.get_current_span(context).get_span_context().is_valid)


@dataclass
class _Flush:
    """What a flush of the queue has done so far; kept across the consumer's retries."""

    occurred_at: datetime | None = None
    """When the first attempt began: the time of every event of the batch."""
    encoded: list[OutgoingRecord | None] | None = None
    """Step 1's untraced records, encoded while the lookup travelled (None: not yet)."""
    already: set[SeenKey] | None = None
    """Step 1's answer: the accepted ids the store already holds (None: not asked yet)."""
    published: bool = False
    """Step 2 is done: every record was delivered."""


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
        # Nothing is queued between a failed attempt and the next (the consumer retries
        # its commit before it fetches again), so the steps done stay the queue's.
        self._done = _Flush()
        self._flushing = asyncio.Lock()  # a rebalance may call flush while one is retrying
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
            description="failed attempts at Redis or the broker (the consumer retries the flush)",
        )

    def discard(self) -> int:
        """Forget what is queued (the consumer restarts from the committed offsets and
        will deliver those records again). Returns how many were dropped."""
        dropped, self._queue, self._done = self.queued, [], _Flush()
        return dropped

    async def handle(self, record: Received[bytes | None]) -> None:
        """Validate one record and queue the outcome; `flush` publishes it."""
        await self.handle_batch([record])

    async def handle_batch(self, records: list[Received[bytes | None]]) -> None:
        """`handle` for consecutive records of one partition: all validated, then all queued
        (all or nothing, as the consumer's `batch_handler` must be)."""
        context = otel_context.get_current()
        outcomes = self._outcomes(records)
        self._queue.append(_Queued(list(records), outcomes, context, _has_span(context)))

    def _outcomes(self, records: list[Received[bytes | None]]) -> list[Outcome]:
        """Every record's outcome, against one clock reading (the batch is one moment)."""
        now_s = self._clock()
        by_topic = self._contracts.by_topic
        outcomes: list[Outcome] = []
        topic: str | None = None
        validate = None
        for record in records:
            if record.topic != topic:
                topic = record.topic
                validator = by_topic.get(topic)
                validate = validator.validate if validator is not None else None
            if validate is None:  # the spec changed under a running group: keep the bytes
                outcomes.append(_unknown_topic(record.topic))
            else:
                outcomes.append(validate(record.payload, now_s=now_s))
        return outcomes

    @property
    def queued(self) -> int:
        return sum(len(item.records) for item in self._queue)

    async def flush(self) -> None:
        """Publish what was queued, await delivery, remember accepted ids.

        A failing dependency raises `FlushInterrupted` (the consumer retries the
        flush, which resumes at that step); a permanent broker refusal raises as
        it is. Either way the queue is kept: nothing is committed until it lands.
        """
        async with self._flushing:
            queue = self._queue
            if not queue:
                return
            await self._flush(queue, self._done)
            self._queue, self._done = [], _Flush()

    async def _flush(self, queue: list[_Queued], done: _Flush) -> None:
        wanted: list[SeenKey] = [
            (outcome.source, outcome.event_id)
            for item in queue
            for outcome in item.outcomes
            if isinstance(outcome, Accepted)
        ]
        if done.occurred_at is None:
            done.occurred_at = datetime.now(UTC)
        occurred_at = done.occurred_at
        # Publisher.record traces every event sent from inside a sampled span.
        in_sampled_span = bool(trace.get_current_span().get_span_context().trace_flags.sampled)
        if done.already is None:
            lookup = asyncio.ensure_future(
                self._step("redis", "de-duplication lookup", lambda: self._seen.seen(wanted))
            )
            try:
                await asyncio.sleep(0)  # let the lookup put its request on the wire first
                if done.encoded is None:
                    done.encoded = (
                        [] if in_sampled_span else self._encode_untraced(queue, occurred_at)
                    )
                done.already = await lookup
            finally:
                lookup.cancel()  # only if encoding failed; a no-op on a finished task
        already = done.already
        encoded = done.encoded or []
        fresh: dict[SeenKey, None] = {}  # ordered: remembered in queue order
        accepted: dict[str, int] = {}
        duplicates: dict[str, int] = {}
        rejections: list[Rejected] = []
        records: list[OutgoingRecord] = []
        position = 0  # in `wanted` (and `encoded`): the accepted outcomes, in queue order
        for item in queue:
            for record, outcome in zip(item.records, item.outcomes, strict=True):
                if not isinstance(outcome, Accepted):
                    rejections.append(outcome)
                    records.append(
                        self._outgoing(
                            _rejected(outcome, record), record.key, item, in_sampled_span
                        )
                    )
                    continue
                key = wanted[position]
                ready = encoded[position] if encoded else None
                position += 1
                source = outcome.source
                if key in already or key in fresh:
                    duplicates[source] = duplicates.get(source, 0) + 1
                    continue
                fresh[key] = None
                accepted[source] = accepted.get(source, 0) + 1
                if ready is None:  # traced, or flushed inside a sampled span: the model path
                    ready = self._outgoing(
                        _validated(outcome, record, occurred_at),
                        outcome.entity_id,
                        item,
                        in_sampled_span,
                    )
                records.append(ready)
        if not done.published:
            await self._step("kafka", "publishing", lambda: self._publish(records))
            done.published = True
        if fresh:
            await self._step(
                "redis", "remembering accepted ids", lambda: self._seen.remember(list(fresh))
            )
        self._count(accepted, duplicates, rejections)

    def _encode_untraced(
        self, queue: list[_Queued], occurred_at: datetime
    ) -> list[OutgoingRecord | None]:
        """The hot path: every accepted outcome's record, in queue order, as bytes without
        the model; None where the record is traced (the caller goes through the model)."""
        encoder = ValidatedEncoder(occurred_at, self._publisher.source.encode())
        encode = encoder.record
        encoded: list[OutgoingRecord | None] = []
        for item in queue:
            if item.traced:
                encoded.extend(None for o in item.outcomes if isinstance(o, Accepted))
            else:
                encoded.extend(
                    encode(outcome, record)
                    for record, outcome in zip(item.records, item.outcomes, strict=True)
                    if isinstance(outcome, Accepted)
                )
        return encoded

    async def _publish(self, records: list[OutgoingRecord]) -> None:
        if not records:
            return
        futures = await self._publisher.send_batch(records)
        # gather, not one await after another: every failure is retrieved, none left dangling.
        await asyncio.gather(*futures)

    async def _step(
        self, dependency: Dependency, what: str, attempt: Callable[[], Awaitable[T]]
    ) -> T:
        """One step of the flush; a failing dependency ends the attempt (counted), to be
        retried by the consumer, and the steps done before it are kept."""
        failures = _REDIS_FAILURES if dependency == "redis" else _KAFKA_FAILURES
        try:
            return await attempt()
        except _KAFKA_PERMANENT:
            raise
        except failures as exc:
            self.stats.retries[dependency] = self.stats.retries.get(dependency, 0) + 1
            self._retries.add(1, {"dependency": dependency})
            raise FlushInterrupted(
                dependency,
                f"{what} failed, {dependency} unavailable ({self.queued} records held "
                f"uncommitted): {exc or type(exc).__name__}",
            ) from exc

    def _outgoing(
        self,
        event: IngestValidated | IngestRejected,
        key: bytes | str | None,
        item: _Queued,
        in_sampled_span: bool,
    ) -> OutgoingRecord:
        """The record of `event` through the model: traced inside the record's span, by
        the publisher inside a sampled flush, else untraced as the consumer decided."""
        if item.traced:
            token = otel_context.attach(item.context)
            try:
                return self._publisher.record(event, key)
            finally:
                otel_context.detach(token)
        if in_sampled_span:
            return self._publisher.record(event, key)
        # What Publisher.record writes for a data-plane event it does not trace, without
        # rolling the sampling dice a second time for this record.
        return OutgoingRecord(
            event.topic,
            encode_event(event),
            key.encode() if isinstance(key, str) else key,
            event_headers(event, self._publisher.source),
        )

    def _count(
        self, accepted: dict[str, int], duplicates: dict[str, int], rejections: list[Rejected]
    ) -> None:
        """Stats and metrics of one flush: one counter update per source (and reason)."""
        stats = self.stats
        stats.flushes += 1
        for source, n in accepted.items():
            stats.accepted += n
            self._accepted.add(n, {"source": source})
        for source, n in duplicates.items():
            stats.duplicates += n
            self._duplicates.add(n, {"source": source})
        if not rejections:
            return
        rejected: dict[str, int] = {}
        reasons: dict[tuple[str, str], int] = {}
        for outcome in rejections:
            rejected[outcome.source] = rejected.get(outcome.source, 0) + 1
            for code in dict.fromkeys(outcome.codes):  # a record counts once per reason
                stats.rejected_by_reason[code] = stats.rejected_by_reason.get(code, 0) + 1
                reasons[(outcome.source, code)] = reasons.get((outcome.source, code), 0) + 1
        stats.rejected += len(rejections)
        for source, n in rejected.items():
            self._rejected.add(n, {"source": source})
        for (source, code), n in reasons.items():
            self._reasons.add(n, {"source": source, "reason": code})


def _unknown_topic(topic: str) -> Rejected:
    return Rejected(
        "",
        0,
        (RejectionReason(code=UNKNOWN_TOPIC, message=f"no source in the spec reads {topic!r}"),),
    )
