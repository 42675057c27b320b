"""The consume loop every service uses.

At-least-once, in order per partition:
- a record's offset is committed only after its handler's effect is done, or
  after the record has been written to the dead-letter topic;
- `RetryableError` (and timeouts, connection errors) → retry with capped
  exponential backoff, for as long as it takes; the partition waits, nothing
  is skipped, nothing is dead-lettered because a dependency was down;
- `PermanentError` (undecodable bytes, schema violations, bad input) → the
  dead-letter topic with the original bytes, where it came from, and why;
- any other exception is a bug: retried a few times, then dead-lettered so one
  poison record cannot stall a partition forever.
The consumer's span continues the producer's trace from the record headers.

Work done at the commit (`before_commit`: a batch's writes, saved state) follows
the same retry rule: a RetryableError is retried with the same backoff until it
lands or `stop()` comes (then nothing is committed), so no service writes its own
retry loop around it. What it could not apply it returns (`DeadLetter`s), and
they go to the dead-letter topic, in the handler path's format, before the commit.

Optionally (`batch_handler`), untraced data-plane records are handed over a
fetch at a time instead of one by one; a batch that fails is handled again
record by record, so the rules above still decide each record's fate
(docs/adr/0014-bus-batch-handler.md). With `spans_in_batch` the sampled ones
stay in the batch too, each with a span around the batch call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Literal, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError
from aiokafka.structs import ConsumerRecord
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from mlbus.bus._codec import EventDecoder
from mlbus.bus._deadletter import DeadLetter, DeadLetterWriter
from mlbus.bus._handling import ConsumerStats, Decoder, RecordHandler
from mlbus.bus._publisher import Publisher
from mlbus.bus._received import Received, received
from mlbus.bus._retry import RETRYABLE, RetryPolicy, until_done
from mlbus.config import KafkaSettings, Latency
from mlbus.errors import RetryableError
from mlbus.events import DEAD_LETTERED, Event
from mlbus.telemetry import extract_kafka_context
from mlbus.telemetry._sampling import (
    PLANE_ATTRIBUTE,
    PRESAMPLED_ATTRIBUTE,
    presample_data_record,
)

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("mlbus.bus")
_meter = metrics.get_meter("mlbus.bus")
_processed = _meter.create_counter("mlbus.consumer.processed", description="records handled")
_commit_retries = _meter.create_counter(
    "mlbus.consumer.commit_retries", description="retries of the commit-time work (before_commit)"
)
_lag = _meter.create_gauge("mlbus.consumer.lag", description="records behind the partition end")

T = TypeVar("T")
CommitWork = Callable[[], Awaitable[Sequence[DeadLetter[T]] | None]]
"""`before_commit`: what must land before the offsets commit; returns what it could not apply."""
_NO_PARENT = Context()  # what extract_kafka_context gives for headers without a trace
_InRun = tuple[ConsumerRecord[bytes, bytes], tuple[tuple[str, bytes], ...], Context | None]
"""A record of a batch run, its headers, and its trace parent if it gets a span."""


class BatchProcessor(Protocol[T]):
    """A stream service's processor in the shape the bus runs (`Consumer.of_processor`):
    records of its topics one at a time (`handle`) or a fetch at a time
    (`handle_batch`, all or nothing), their effects at the commit (`flush`,
    retried; what it returns is dead-lettered)."""

    @property
    def topics(self) -> Sequence[str]: ...

    def decoder(self) -> Decoder[T]: ...

    async def handle(self, received: Received[T]) -> None: ...

    async def handle_batch(self, batch: list[Received[T]]) -> None: ...

    async def flush(self) -> Sequence[DeadLetter[T]] | None: ...


class Consumer(Generic[T]):
    """Consumes `topics` in consumer group `group_id` and calls `handler` per record.

    `group_id=None` makes a broadcast consumer: every instance sees every record
    (e.g. each inference replica reloading on `model.published`); it starts at the
    end of the topic unless `auto_offset_reset="earliest"` and commits nothing.

    `batch_handler`, if given, receives the consecutive untraced data-plane records
    of one partition's fetch in one call (traced records still get their span and
    `handler`). It must be all or nothing: either it returns with every record
    handled, or it raises having changed nothing (effects belong in
    `before_commit`). If it raises, those records go through `handler` one at a
    time with the usual retries and dead-lettering.

    `spans_in_batch` keeps sampled data-plane records in the batch as well: each
    gets its consumer span around the batch call, so its trace still shows where
    it was processed, but spans and events the handler makes are not children of
    it. For handlers that publish nothing per record (drift: a detection starts its
    own trace); otherwise every sampled record would split its fetch in two.

    `commit_interval_s` > 0 commits (and runs `before_commit`) at most that often
    instead of after every fetch, and always on revoke and on the way out: for
    services whose commit-time work (saving state) costs more than a fetch's
    records. A crash replays at most that long's records, which at-least-once
    handlers tolerate anyway.

    `latency="background"`, for consumers whose records nobody serves from at once
    (monitors, training), fetches with the longer `background_fetch_max_wait_ms`:
    fewer idle fetches, less broker CPU (#25).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        topics: Sequence[str],
        group_id: str | None,
        handler: Callable[[Received[T]], Awaitable[None]],
        decoder: Decoder[T],
        publisher: Publisher,
        dead_letter_topic: str = DEAD_LETTERED,
        retry: RetryPolicy | None = None,
        auto_offset_reset: str | None = None,
        max_batch: int = 500,
        plane: Literal["data", "control"] = "data",
        latency: Latency = "fresh",
        before_commit: CommitWork[T] | None = None,
        batch_handler: Callable[[list[Received[T]]], Awaitable[None]] | None = None,
        spans_in_batch: bool = False,
        commit_interval_s: float = 0.0,
        **consumer_options: Any,
    ) -> None:
        if not topics:
            raise ValueError("a consumer needs at least one topic")
        self._kafka = kafka
        self.topics = tuple(topics)
        self.group_id = group_id
        self._decoder = decoder
        self._retry = retry or RetryPolicy()
        self._reset = auto_offset_reset or ("earliest" if group_id else "latest")
        self._max_batch = max_batch
        self._plane = plane
        self._latency = latency
        # Handlers that only queue their effects (e.g. batched sends) finish them here:
        # awaited before every commit, so offsets never run ahead of effects.
        self._before_commit = before_commit
        # What before_commit could not apply, kept until each is dead-lettered: a stop
        # in between must not let a later commit (the one on the way out) pass them by.
        self._unapplied: list[DeadLetter[T]] = []
        self._batch_handler = batch_handler
        self._spans_in_batch = spans_in_batch
        self._commit_interval_s = commit_interval_s
        self._committed_at = 0.0  # loop time of the last commit
        self._options = consumer_options
        self._stopping = asyncio.Event()
        self._dead_letters = DeadLetterWriter(
            publisher, dead_letter_topic, group_id, self._retry, self._stopping
        )
        self._assigned = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._pending: dict[TopicPartition, int] = {}
        # Held while a fetched batch is worked through and committed: a revoke
        # (aiokafka's coordinator task) waits for it, so it never flushes and
        # commits in the middle of a batch the handler is still queueing.
        self._batch_lock = asyncio.Lock()
        self.stats = ConsumerStats()
        self._records = RecordHandler(
            handler, decoder, self._retry, self._stopping, self._dead_letters, self.stats
        )

    @classmethod
    def of_events(
        cls,
        kafka: KafkaSettings,
        *,
        types: Sequence[type[Event]],
        group_id: str | None,
        handler: Callable[[Received[Event]], Awaitable[None]],
        publisher: Publisher,
        topics: Sequence[str] | None = None,
        **options: Any,
    ) -> Consumer[Event]:
        """A consumer of mlbus events: topics (unless given) and decoding follow from the types."""
        options.setdefault("plane", "data" if all(t.plane == "data" for t in types) else "control")
        return Consumer[Event](
            kafka,
            topics=topics or sorted({t.topic for t in types}),
            group_id=group_id,
            handler=handler,
            decoder=EventDecoder(types),
            publisher=publisher,
            **options,
        )

    @classmethod
    def of_processor(
        cls,
        kafka: KafkaSettings,
        processor: BatchProcessor[T],
        *,
        group_id: str | None,
        publisher: Publisher,
        **options: Any,
    ) -> Consumer[T]:
        """A consumer of `processor`'s topics that hands it their records and runs its
        `flush` at every commit."""
        return cls(
            kafka,
            topics=processor.topics,
            group_id=group_id,
            handler=processor.handle,
            batch_handler=processor.handle_batch,
            decoder=processor.decoder(),
            publisher=publisher,
            before_commit=processor.flush,
            **options,
        )

    # ── lifecycle ────────────────────────────────────────────────────────────

    def stop(self) -> None:
        """Ask the loop to finish the record in hand, commit, and return. Idempotent."""
        self._stopping.set()

    async def wait_assigned(self, timeout_s: float = 60.0) -> None:
        """Wait until this member owns partitions and knows where it starts reading them.

        Both the group join and the first offset lookup are done: a record published
        after this returns is consumed. (A broadcast consumer starting at the end of
        its topics would miss a record published between the assignment and the
        lookup, so the assignment alone is not enough.)
        """
        await asyncio.wait_for(self._assigned.wait(), timeout_s)

    async def run(self) -> None:
        """Consume until `stop()` (or cancellation); commits what was done on the way out."""
        session_ms = int(self._kafka.session_timeout_s * 1000)
        consumer = AIOKafkaConsumer(
            **self._kafka.client_kwargs(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self._reset,
            session_timeout_ms=session_ms,
            fetch_max_wait_ms=self._kafka.fetch_wait_ms(self._latency),
            heartbeat_interval_ms=max(100, session_ms // 3),
            max_poll_interval_ms=max(300_000, session_ms * 2),
            **self._options,
        )
        self._consumer = consumer
        await consumer.start()
        try:
            if self.group_id is None:
                consumer.subscribe(list(self.topics))
            else:
                consumer.subscribe(list(self.topics), listener=_CommitOnRevoke(self))
            await self._loop(consumer)
        finally:
            try:
                await self._commit()
            finally:
                await consumer.stop()
                self._consumer = None

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        loop = asyncio.get_running_loop()
        pace_s = self._kafka.fetch_pace_s(self._latency)
        while not self._stopping.is_set():
            asked_at = loop.time()
            batch = await consumer.getmany(timeout_ms=200, max_records=self._max_batch)
            if not self._assigned.is_set() and consumer.assignment():
                await self._resolve_start(consumer)
            async with self._batch_lock:
                if not await self._work_through(consumer, batch):
                    return  # stopping while retrying: leave the record uncommitted
                if self._commit_due():
                    await self._commit()
            if pace_s and not self._stopping.is_set() and not self._behind(consumer, batch):
                await self._rest(asked_at + pace_s - loop.time())

    def _behind(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> bool:
        """Whether more records wait than this poll returned: it was full, or a partition's
        high watermark (as of its last fetch) is past its last record. A backlog is read
        without rests, however few records a fetch brings back."""
        if sum(map(len, batch.values())) >= self._max_batch:
            return True
        for tp, records in batch.items():
            highwater = consumer.highwater(tp)
            if records and highwater is not None and records[-1].offset + 1 < highwater:
                return True
        return False

    async def _rest(self, seconds: float) -> None:
        """Wait before the next poll (a stop cuts it short). aiokafka fetches a partition
        again only once its fetched records are taken, so this paces the fetches too."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

    def _commit_due(self) -> bool:
        now = asyncio.get_running_loop().time()
        if now - self._committed_at < self._commit_interval_s:
            return False
        self._committed_at = now
        return True

    async def _resolve_start(self, consumer: AIOKafkaConsumer) -> None:
        """Set `_assigned` once every assigned partition has its start offset resolved.

        Bounded like one poll, so `stop()` is never held up: if the lookup is not
        done yet (or a partition moved meanwhile), it is asked again after the next fetch.
        """
        try:
            async with asyncio.timeout(0.2):
                for tp in consumer.assignment():
                    await consumer.position(tp)
        except (TimeoutError, IllegalStateError):
            return
        self._assigned.set()

    async def _work_through(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> bool:
        """Handle one fetched batch; False when stopping interrupted a retry."""
        for tp, records in batch.items():
            if self._batch_handler is not None:
                if not await self._process_batch(tp, records, self._batch_handler):
                    return False
            else:
                for record in records:
                    if not await self._process(record):
                        return False
                    self._pending[tp] = record.offset + 1
            _processed.add(len(records), {"topic": tp.topic})
            self._report_lag(consumer, tp)
            # Handlers rarely suspend; yield so aiokafka's fetcher can request the
            # next records while this batch is still being worked through.
            await asyncio.sleep(0)
        return True

    async def _commit(self, partitions: set[TopicPartition] | None = None) -> None:
        if self._consumer is None or not self._pending:
            return
        if self._before_commit is not None:
            await self._commit_work(self._before_commit)
        if self.group_id is None:
            return
        offsets = {
            tp: offset
            for tp, offset in self._pending.items()
            if partitions is None or tp in partitions
        }
        if not offsets:
            return
        await self._consumer.commit(offsets)
        for tp, offset in offsets.items():
            self._pending.pop(tp, None)
            self.stats.committed[f"{tp.topic}[{tp.partition}]"] = offset

    async def _commit_work(self, work: CommitWork[T]) -> None:
        """`before_commit`, retried like a handler: a RetryableError (Redis or the broker
        down) is tried again after the policy's backoff until it lands. If `stop()` comes
        first it raises, and nothing is committed: the records are consumed again after a
        restart. Other errors raise at once (a bug must not be retried forever).
        What the work could not apply is dead-lettered before the commit."""
        unapplied: Sequence[DeadLetter[T]] | None = None

        async def attempt() -> None:
            nonlocal unapplied
            unapplied = await work()

        def count_retry() -> None:
            self.stats.retries += 1
            _commit_retries.add(1, {"group": self.group_id or ""})

        failed = await until_done(
            attempt,
            policy=self._retry,
            stopping=self._stopping,
            retry_on=RETRYABLE,
            what="commit-time work",
            on_retry=count_retry,
        )
        if failed is not None:
            raise failed
        self._unapplied.extend(unapplied or ())
        while self._unapplied:
            if not await self._dead_letter_unapplied(self._unapplied[0]):
                raise RetryableError(
                    "stopped before a dead-letter record landed; nothing committed"
                )
            self._unapplied.pop(0)

    async def _dead_letter_unapplied(self, letter: DeadLetter[T]) -> bool:
        """A record the commit-time work could not apply, to the dead-letter topic."""
        landed = await self._dead_letters.write(letter.received, letter.error, attempts=1)
        if landed:
            self.stats.dead_lettered += 1
        return landed

    def _report_lag(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        highwater = consumer.highwater(tp)
        done = self._pending.get(tp)
        if highwater is not None and done is not None:
            attrs = {"topic": tp.topic, "partition": tp.partition, "group": self.group_id or ""}
            _lag.set(max(0, highwater - done), attrs)

    # ── one record ───────────────────────────────────────────────────────────

    async def _process(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Handle one record to completion, traced. False only if asked to stop first."""
        headers = tuple(record.headers or ())
        parent = extract_kafka_context(headers)
        presampled = self._plane == "data" and presample_data_record(
            trace.get_current_span(parent).get_span_context().trace_flags.sampled
        )
        if self._plane == "data" and not presampled:
            return await self._records.settle(record, headers, None)  # untraced data-plane record
        return await self._traced(record, headers, parent, presampled)

    async def _traced(
        self,
        record: ConsumerRecord[bytes, bytes],
        headers: tuple[tuple[str, bytes], ...],
        parent: Context,
        presampled: bool,
    ) -> bool:
        """`RecordHandler.settle` inside the record's consumer span."""
        span = self._start_span(record, parent, presampled)
        # Attach by hand (cheaper than a context manager per record) so the handler's
        # own spans and log lines belong to this trace.
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            return await self._records.settle(record, headers, span)
        finally:
            otel_context.detach(token)
            span.end()

    def _start_span(
        self, record: ConsumerRecord[bytes, bytes], parent: Context, presampled: bool
    ) -> Span:
        return _tracer.start_span(
            f"{record.topic} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": record.topic,
                "messaging.kafka.destination.partition": record.partition,
                "messaging.kafka.offset": record.offset,
                "messaging.consumer.group.name": self.group_id or "",
                PLANE_ATTRIBUTE: self._plane,
                PRESAMPLED_ATTRIBUTE: presampled,
            },
        )

    # ── a fetch at a time (batch_handler) ────────────────────────────────────

    async def _process_batch(
        self,
        tp: TopicPartition,
        records: list[ConsumerRecord[bytes, bytes]],
        batch_handler: Callable[[list[Received[T]]], Awaitable[None]],
    ) -> bool:
        """One partition's fetch, in order: runs of untraced data-plane records go to
        `batch_handler`, traced records one by one (or in the run too, with
        `spans_in_batch`). False only if asked to stop first."""
        run: list[_InRun] = []
        data_plane = self._plane == "data"
        batch_traced = data_plane and self._spans_in_batch
        for record in records:
            if record.headers:
                headers = tuple(record.headers)
                parent = extract_kafka_context(headers)
                span_context = trace.get_current_span(parent).get_span_context()
                parent_sampled = span_context.trace_flags.sampled
            else:  # no headers, no trace to continue (the common case: skip the lookups)
                headers, parent, parent_sampled = (), _NO_PARENT, False
            presampled = data_plane and presample_data_record(parent_sampled)
            if data_plane and not presampled:
                run.append((record, headers, None))
                continue
            if batch_traced:  # presampled: traced, in the run
                run.append((record, headers, parent))
                continue
            if run:
                if not await self._settle_run(tp, run, batch_handler):
                    return False
                run = []
            if not await self._traced(record, headers, parent, presampled):
                return False
            self._pending[tp] = record.offset + 1
        return not run or await self._settle_run(tp, run, batch_handler)

    async def _settle_run(
        self,
        tp: TopicPartition,
        run: list[_InRun],
        batch_handler: Callable[[list[Received[T]]], Awaitable[None]],
    ) -> bool:
        """Consecutive records of one partition: one call, or one by one if it fails.

        A traced record in the run (`spans_in_batch`) has its span open for the call.
        """
        decode = self._decoder
        spans = [
            self._start_span(record, parent, True)
            for record, _, parent in run
            if parent is not None
        ]
        try:
            await batch_handler(
                [received(decode(r.value, headers), r, headers) for r, headers, _ in run]
            )
        except Exception as exc:  # one bad record (or an outage): the per-record rules decide
            for span in spans:  # each record is tried again below, in a span of its own
                span.set_status(Status(StatusCode.ERROR, f"batch failed: {exc}"))
                span.end()
            first = run[0][0]
            log.info(
                "batch of %d from %s[%d]@%d failed (%s: %s); handling it record by record",
                len(run),
                first.topic,
                first.partition,
                first.offset,
                type(exc).__name__,
                exc,
            )
            for record, headers, parent in run:
                settled = (
                    await self._records.settle(record, headers, None)
                    if parent is None
                    else await self._traced(record, headers, parent, True)
                )
                if not settled:
                    return False
                self._pending[tp] = record.offset + 1
            return True
        for span in spans:
            span.end()
        self.stats.processed += len(run)
        self._pending[tp] = run[-1][0].offset + 1
        return True


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commit what was processed on partitions that are about to move elsewhere."""

    def __init__(self, owner: Consumer[Any]) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._owner._batch_lock:  # after the batch in hand, never in its middle
            await self._owner._commit(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Nothing to do: the consume loop marks the consumer assigned once the start
        offsets of what it owns are resolved (`Consumer.wait_assigned`)."""
