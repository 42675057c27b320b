"""Publishing events: one aiokafka producer per process, traced, CloudEvents headers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, NamedTuple, Self

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import RecordMetadata
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from mlbus.bus._codec import Headers, encode_event, event_headers
from mlbus.config import KafkaSettings, Latency
from mlbus.events import Event
from mlbus.telemetry import inject_kafka_headers
from mlbus.telemetry._sampling import (
    PLANE_ATTRIBUTE,
    PRESAMPLED_ATTRIBUTE,
    presample_data_record,
)

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("mlbus.bus")

Key = str | bytes | None


def _current_trace_sampled() -> bool:
    return bool(trace.get_current_span().get_span_context().trace_flags.sampled)


def _key_bytes(key: Key) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


class OutgoingRecord(NamedTuple):
    """One record ready for `Publisher.send_batch`: bytes, key, headers (trace context included)."""

    topic: str
    value: bytes | None
    key: bytes | None
    headers: Headers


class Publisher:
    """Typed publishing to Kafka.

    `publish` returns once the broker acknowledged; `send` returns once the
    record is queued and hands back the delivery future (for throughput, or to
    keep a response path free of broker latency). Use as `async with`.
    `latency="background"`, for records nobody reads at once, lingers
    `background_linger_ms` to fill larger batches.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        source: str,
        *,
        latency: Latency = "fresh",
        **producer_options: Any,
    ) -> None:
        self._kafka = kafka
        self._latency = latency
        self.source = source if source.startswith("/") else f"/mlbus/{source}"
        self._options = producer_options
        # send_batch partitions as the producer would: the same partitioner object.
        self._partitioner = producer_options.get("partitioner") or DefaultPartitioner()
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> Self:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **self._kafka.client_kwargs(),
                    acks="all" if self._kafka.acks == "all" else int(self._kafka.acks),
                    enable_idempotence=self._kafka.enable_idempotence,
                    linger_ms=self._kafka.linger(self._latency),
                    max_batch_size=self._kafka.max_batch_bytes,
                    **self._options,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()  # a failed start leaves an unclosed producer
                    raise
                self._producer = producer
        return self

    async def stop(self) -> None:
        """Flush what is queued and close. Safe to call more than once."""
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("Publisher is not started: use `async with Publisher(...)`")
        return self._producer

    async def send(
        self, event: Event, key: Key = None, *, topic: str | None = None
    ) -> asyncio.Future[RecordMetadata]:
        """Queue `event` on its topic (or `topic`); return the delivery future."""
        destination = topic or event.topic
        headers = event_headers(event, self.source)
        value, key_bytes = encode_event(event), _key_bytes(key)
        presampled = event.plane == "data" and presample_data_record(_current_trace_sampled())
        if event.plane == "data" and not presampled:
            # An untraced data-plane record: no span, no trace headers (see _sampling.py).
            return await self.producer.send(destination, value, key=key_bytes, headers=headers)  # type: ignore[no-any-return]
        span = self._publish_span(event, destination, presampled, headers)
        try:
            future: asyncio.Future[RecordMetadata] = await self.producer.send(
                destination, value, key=key_bytes, headers=headers
            )
        finally:
            span.end()
        return future

    def record(self, event: Event, key: Key = None, *, topic: str | None = None) -> OutgoingRecord:
        """What `send` would queue, traced the same way (sampling roll, publish span,
        `traceparent`), for `send_batch`. The span covers the encoding, not the enqueueing."""
        destination = topic or event.topic
        headers = event_headers(event, self.source)
        value, key_bytes = encode_event(event), _key_bytes(key)
        presampled = event.plane == "data" and presample_data_record(_current_trace_sampled())
        if event.plane != "data" or presampled:
            self._publish_span(event, destination, presampled, headers).end()
        return OutgoingRecord(destination, value, key_bytes, headers)

    def _publish_span(
        self, event: Event, destination: str, presampled: bool, headers: Headers
    ) -> Span:
        """A started publish span whose context is injected into `headers`; the caller ends it."""
        # start_span + explicit context (not start_as_current_span): this runs per record.
        span = _tracer.start_span(
            f"{destination} publish",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": destination,
                "messaging.message.id": event.event_id,
                "cloudevents.event_type": event.event_type,
                PLANE_ATTRIBUTE: event.plane,
                PRESAMPLED_ATTRIBUTE: presampled,
            },
        )
        try:
            inject_kafka_headers(headers, trace.set_span_in_context(span))
        except BaseException:
            span.end()
            raise
        return span

    async def publish(
        self, event: Event, key: Key = None, *, topic: str | None = None
    ) -> RecordMetadata:
        """Publish `event` and wait until the broker acknowledged it."""
        return await (await self.send(event, key, topic=topic))

    async def send_raw(
        self,
        topic: str,
        value: bytes | None,
        key: Key = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> asyncio.Future[RecordMetadata]:
        """Queue bytes that are not an mlbus event (producers' source data, replays)."""
        raw_headers: Headers = list(headers)
        future: asyncio.Future[RecordMetadata] = await self.producer.send(
            topic, value, key=_key_bytes(key), headers=raw_headers
        )
        return future

    async def send_batch(
        self, records: Iterable[OutgoingRecord]
    ) -> list[asyncio.Future[RecordMetadata]]:
        """Queue `records`, in order, as closed record batches per topic partition.

        Partitioned exactly as `send_raw` would, but each record costs an append
        to a batch instead of a `producer.send` (a future, a metadata check and
        a partition lookup per record), and closed batches go out at once rather
        than after `linger_ms`. Returns one future per batch: when all are done,
        every record is acknowledged. A record larger than `max_batch_bytes` is
        sent on its own through `send_raw` (same size checks and errors), after
        the records queued before it for the same partition.
        """
        producer = self.producer
        limit = self._kafka.max_batch_bytes
        partitioner = self._partitioner
        partitions: dict[str, tuple[list[int], list[int]]] = {}
        open_batches: dict[tuple[str, int], Any] = {}
        futures: list[asyncio.Future[RecordMetadata]] = []

        async def ship(topic: str, partition: int) -> None:
            batch = open_batches.pop((topic, partition), None)
            if batch is not None:
                batch.close()  # closed: the sender takes it without lingering
                futures.append(await producer.send_batch(batch, topic, partition=partition))

        for topic, value, key, headers in records:
            known = partitions.get(topic)
            if known is None:
                every = list(await producer.partitions_for(topic))  # waits for metadata
                up = producer.client.cluster.available_partitions_for_topic(topic)
                known = partitions[topic] = (every, list(up) if up else every)
            partition = partitioner(key, *known)
            if DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers) > limit:
                await ship(topic, partition)
                futures.append(
                    await producer.send(topic, value, key=key, headers=headers, partition=partition)
                )
                continue
            batch = open_batches.get((topic, partition))
            if batch is None:
                batch = open_batches[(topic, partition)] = producer.create_batch()
            if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                await ship(topic, partition)  # full: send it and start the next one
                batch = open_batches[(topic, partition)] = producer.create_batch()
                batch.append(timestamp=None, key=key, value=value, headers=headers)
        for topic, partition in list(open_batches):
            await ship(topic, partition)
        return futures

    async def flush(self) -> None:
        await self.producer.flush()
