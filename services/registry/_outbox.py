"""The registry's outbox: events written with the change that causes them, published after.

Every mutation of the registry writes the events it causes (`model.registered`,
`model.published`) into the outbox table (`registry_outbox`) in its own
transaction (`enqueue`). After the commit the operation wakes the publisher
(`Outbox.announce`) and waits (briefly) until its events are on Kafka. If the
broker is down, or the process dies between commit and publish, the events
stay in the outbox and are published, in order, when the publisher next
succeeds — on this run or the next start. Nothing that changed what serves
goes unannounced (docs/adr/0011-registry-outbox.md).

Delivery is at-least-once: a crash after publishing but before marking the
row published repeats the event with the same `event_id`; consumers tolerate
replays. All events of one model share its name as key, hence one partition,
hence their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from opentelemetry import trace
from sqlalchemy.orm import Session

from mlbus.events import EVENT_TYPES, Event, ModelPublished, ModelRegistered
from mlbus.telemetry import extract_kafka_context, meter, traceparent_of, tracer

from . import _store as db

log = logging.getLogger(__name__)
_tracer = tracer(__name__)
_published = meter(__name__).create_counter("mlbus.registry.events_published", unit="{event}")


class EventSink(Protocol):
    """Where committed events go (a started `mlbus.bus.Publisher`)."""

    async def publish(self, event: Event, key: str | bytes | None = None) -> Any: ...


@dataclass(frozen=True)
class OutboxTiming:
    """How long the publisher pauses after a failure (`retry_s`), and how long an operation
    waits for its events to be on Kafka before answering anyway (`publish_wait_s`)."""

    retry_s: float = 2.0
    publish_wait_s: float = 10.0


class Outbox:
    """Publishes the outbox's rows to `sink`, oldest first, in the background."""

    def __init__(
        self, store: db.RegistryStore, sink: EventSink | None, timing: OutboxTiming = OutboxTiming()
    ) -> None:
        self.store = store
        self._sink = sink
        self._timing = timing
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._published: set[int] = set()
        self._drain_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def sink(self) -> EventSink | None:
        return self._sink

    async def start(self) -> None:
        """Start the outbox publisher (it first publishes what a previous run left)."""
        if self._sink is not None and self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._publish_loop(), name="registry-outbox")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Publish what is pending (within `grace_s`), then stop. Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=grace_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _publish_loop(self) -> None:
        while True:
            try:
                await self.publish_pending()
                delay: float | None = None
            except Exception as exc:
                log.warning(
                    "could not publish registry events (%s: %s); they stay in the outbox, "
                    "retrying in %.1f s",
                    type(exc).__name__,
                    exc,
                    self._timing.retry_s,
                )
                delay = self._timing.retry_s
            if self._stopping:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            self._wake.clear()

    async def publish_pending(self) -> int:
        """Publish every outbox event not yet published, oldest first; return how many."""
        if self._sink is None:
            return 0
        count = 0
        async with self._drain_lock:
            while True:
                rows = await asyncio.to_thread(self._pending)
                if not rows:
                    return count
                for row_id, event_type, key, payload, traceparent in rows:
                    event = EVENT_TYPES[event_type].model_validate_json(payload)
                    # Published in the trace of the change it reports (drift → training →
                    # registration → alias move → reload is one trace), even after a restart.
                    parent = (
                        extract_kafka_context([("traceparent", traceparent.encode())])
                        if traceparent
                        else None
                    )
                    try:
                        with _tracer.start_as_current_span(
                            "registry.outbox.publish",
                            context=parent,
                            kind=trace.SpanKind.PRODUCER,
                            attributes={"mlbus.event_type": event_type, "mlbus.model": key},
                        ):
                            await self._sink.publish(event, key=key)
                    except Exception as exc:
                        await asyncio.to_thread(self._mark_failed, row_id, repr(exc))
                        raise
                    await asyncio.to_thread(self._mark_published, row_id)
                    _published.add(1, {"event_type": event_type})
                    count += 1
                    async with self._progress:
                        self._published.add(row_id)
                        self._progress.notify_all()

    def _pending(self) -> list[tuple[int, str, str, str, str | None]]:
        with self.store.transaction() as session:
            return [
                (r.id, r.event_type, r.key, r.payload, r.traceparent)
                for r in db.pending_events(session)
            ]

    def _mark_published(self, row_id: int) -> None:
        with self.store.transaction() as session:
            row = session.get(db.OutboxRow, row_id)
            if row is not None:
                row.published_at = datetime.now(UTC)
                row.attempts += 1

    def _mark_failed(self, row_id: int, error: str) -> None:
        with self.store.transaction() as session:
            row = session.get(db.OutboxRow, row_id)
            if row is not None:
                row.attempts += 1
                row.last_error = error[:2000]

    async def announce(self, outbox_ids: list[int]) -> None:
        """Wake the publisher and wait, bounded, until these rows' events are out."""
        if self._sink is None or not outbox_ids or self._task is None:
            return
        self._wake.set()
        mine = set(outbox_ids)
        try:
            async with asyncio.timeout(self._timing.publish_wait_s), self._progress:
                await self._progress.wait_for(lambda: mine <= self._published)
                self._published -= mine
        except TimeoutError:
            log.warning(
                "registry change committed but its events are not published yet; "
                "they stay in the outbox and will be published when Kafka answers"
            )


def enqueue(session: Session, event: ModelRegistered | ModelPublished) -> int:
    """Write `event` into the outbox in the caller's transaction; its row id."""
    row = db.OutboxRow(
        event_id=event.event_id,
        event_type=event.event_type,
        key=event.model,
        payload=event.model_dump_json(),
        created_at=datetime.now(UTC),
        attempts=0,
        traceparent=_current_traceparent(),
    )
    session.add(row)
    session.flush()
    return row.id


def _current_traceparent() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return traceparent_of(span_context) if span_context.is_valid else None
