"""Validated events → every view of their source updated: state, online values, offline rows.

The consumer calls `handle` per record; it only groups the event under each
(view, entity) it feeds, in memory. `flush` runs before every offset commit
(the consumer's `before_commit` hook) and writes the fetched batch:

1. one `MGET` of the window state of every (view, entity) the batch touched;
2. the events applied in consumption order per entity, in memory, so an entity
   sees its own earlier updates of the batch; one offline row per counted event
   (the values *of* that event: its own fields, each aggregate at its time over
   the events counted before it — ADR 0020), duplicates and too-late events skipped;
3. one `MULTI/EXEC` with, per touched entity, the new state, the online hash
   (the latest raw fields and each aggregate as a step function of time, so
   reads re-age it; `__ts`, `__eid`, `__n`, TTL), and the batch's offline rows
   appended to each view's spool in consumption order;
4. return, and the consumer commits the offsets.

All or nothing per batch: a replay after a crash finds the event ids in the
states and changes nothing, and no offline row is lost when the offset commits
before the Parquet flush. Redis down → `flush` raises and the consumer retries
it with its backoff until it lands (the queue is rebuilt from Redis each
attempt, so nothing is counted twice) or the service stops (then nothing is
committed); while Redis is not known to be reachable, `handle` pings it first
so the bus's own retry holds the partition. See docs/adr/0012-feature-state.md (revised).

On Redis Cluster (`MLBUS_REDIS_CLUSTER=true`) no transaction can span the
batch's slots, so step 1 is one `MGET` per slot and step 3 is two ordered
non-transactional pipelines: first the online hashes and the spool rows, then
the states. A crash in between leaves the states saying "not counted", so the
replay recomputes the same values and rows (readers de-duplicate rows by event
id): the batch is replay-safe instead of all-or-nothing (ADR 0012, cluster).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Status, StatusCode
from redis.asyncio.cluster import RedisCluster

from mlbus.bus import DeadLetter, Received
from mlbus.errors import RetryableError
from mlbus.events import Event, IngestValidated, Scalar
from mlbus.featurestore import (
    Applied,
    EntityState,
    OfflineRow,
    OnlineStore,
    ViewAggregator,
)
from mlbus.redis_client import RedisClient
from mlbus.redis_failures import REDIS_DOWN
from mlbus.spec import FeatureDef, ProjectSpec
from mlbus.telemetry import meter, tracer

log = logging.getLogger(__name__)
_meter = meter("mlbus.features")
_updates = _meter.create_counter("mlbus.features.updates", description="view updates written")
_skipped = _meter.create_counter(
    "mlbus.features.skipped", description="events not counted (duplicate, too late, error)"
)
_flush_retries = _meter.create_counter(
    "mlbus.features.flush_retries", description="batch writes retried (Redis unavailable)"
)


@dataclass(frozen=True)
class BoundView:
    """A feature view of the spec with what the service needs to compute it."""

    name: str
    version: int
    ttl_s: int
    source: str
    entity: str
    features: tuple[FeatureDef, ...]
    aggregator: ViewAggregator


def bind_views(spec: ProjectSpec, allowed_lateness_s: int) -> list[BoundView]:
    views = []
    for name, view in spec.features.items():
        features = spec.view_features(name)
        views.append(
            BoundView(
                name,
                view.version,
                view.ttl_s,
                view.source,
                view.entity,
                features,
                ViewAggregator(view, features, allowed_lateness_s),
            )
        )
    return views


@dataclass(frozen=True, slots=True)
class _Queued:
    seq: int  # consumption order within the batch
    event_id: str
    event_ms: int
    payload: Mapping[str, Scalar]
    origin: Received[Event]  # kept to dead-letter the event if it cannot be applied


@dataclass(slots=True)
class _Traced:
    context: Context
    event_id: str
    entity_id: str


@dataclass
class ProcessorStats:
    flushes: int = 0
    applied: int = 0
    skipped: int = 0
    retries: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)


class FeatureStateLost(Exception):
    """The online store's state marker is gone: Redis lost the window state. Not a
    RetryableError: the batch must not be written before the state is rebuilt
    (`_rebuild.ensure_state`)."""


RowsWritten = Callable[[Mapping[str, Sequence[OfflineRow]]], None]
"""Called after a successful write with the offline rows it stored, by view."""


class FeatureProcessor:
    """The consumer's handler (`handle`, per record) and batch writer (`flush`, per commit)."""

    def __init__(
        self,
        views: Sequence[BoundView],
        online: OnlineStore,
        *,
        clock: Callable[[], float] = time.time,
        detect_loss: bool = False,
    ) -> None:
        self.views = tuple(views)
        # Read the state marker with every batch's states; missing: raise, write nothing.
        self._marker = online.keys.state_marker() if detect_loss else None
        self._by_source: dict[str, list[int]] = {}
        for index, view in enumerate(self.views):
            self._by_source.setdefault(view.source, []).append(index)
        self.online = online
        self.client: RedisClient = online.client
        self.keys = online.keys
        self._clock = clock
        self._tracer = tracer("mlbus.features")
        self._groups: dict[tuple[int, str], list[_Queued]] = {}
        self._traced: list[_Traced] = []
        self._seq = 0
        self._redis_ok = False
        self._failed: list[tuple[_Queued, str, Exception]] = []
        self.rows_written: RowsWritten | None = None
        self._written: dict[str, list[OfflineRow]] = {}
        self.stats = ProcessorStats()

    @property
    def queued(self) -> int:
        """Events handled and not yet written."""
        return self._seq

    async def handle(self, received: Received[Event]) -> None:
        """Queue one event under each (view, entity) it feeds; `flush` writes them."""
        event = received.payload
        if not isinstance(event, IngestValidated):
            return
        views = self._by_source.get(event.source)
        if not views:
            return
        if not self._redis_ok:  # the bus's retry holds the partition until Redis answers
            await self._ping()
        item = _Queued(
            self._seq,
            event.event_id,
            int(event.event_time.timestamp() * 1000),
            event.payload,
            received,
        )
        self._seq += 1
        groups = self._groups
        entity = event.entity_id
        for index in views:
            group = groups.get((index, entity))
            if group is None:
                groups[(index, entity)] = [item]
            else:
                group.append(item)
        if trace.get_current_span().is_recording():  # continue the validated event's trace
            self._traced.append(_Traced(otel_context.get_current(), event.event_id, entity))

    async def flush(self) -> list[DeadLetter[Event]]:
        """Write every queued event (state, online, spool) in one round trip each way.

        Returns the events a view could not apply: the consumer dead-letters them
        before the commit. Redis unavailable: raises `RetryableError` and keeps the
        queue; the consumer retries the commit-time work with its backoff (a retry
        applies the batch again from the states in Redis, so nothing is counted
        twice) and commits nothing until it lands."""
        if not self._groups:
            return []
        try:
            await self._write()
        except RetryableError:
            self._redis_ok = False
            self.stats.retries += 1  # the consumer tries the batch again after its backoff
            _flush_retries.add(1)
            raise
        self._redis_ok = True
        unapplied = [
            DeadLetter(item.origin, RuntimeError(f"view {view}: {type(error).__name__}: {error}"))
            for item, view, error in self._failed
        ]
        self._failed = []
        if self.rows_written is not None and self._written:
            self.rows_written(self._written)
        self._written = {}
        self._groups = {}
        self._traced = []
        self._seq = 0
        self.stats.flushes += 1
        return unapplied

    def discard(self) -> None:
        """Forget the queued batch (not committed: the consumer reads it again)."""
        self._groups = {}
        self._traced = []
        self._failed = []
        self._written = {}
        self._seq = 0

    async def _ping(self) -> None:
        try:
            await self.client.ping()
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unavailable for feature state: {exc}") from exc
        self._redis_ok = True

    async def _write(self) -> None:
        spans = [
            self._tracer.start_span(
                "features.update",
                context=t.context,
                attributes={
                    "mlbus.event_id": t.event_id,
                    "mlbus.entity_id": t.entity_id,
                    "mlbus.features.batch_events": self._seq,
                },
            )
            for t in self._traced
        ]
        try:
            await self._write_batch()
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            for span in spans:
                span.end()

    async def _write_batch(self) -> None:
        self._failed = []  # recomputed on every attempt: a retry applies the batch again
        self._written = {}
        groups = list(self._groups.items())
        views = self.views
        keys = self.keys
        state_keys = [keys.state(views[i].name, views[i].version, e) for (i, e), _ in groups]
        read_keys = state_keys if self._marker is None else [*state_keys, self._marker]
        client = self.client
        cluster = isinstance(client, RedisCluster)
        try:
            if isinstance(client, RedisCluster):  # MGET must stay in one slot: one per slot
                stored: list[bytes | None] = await client.mget_nonatomic(read_keys)
            else:
                stored = await client.mget(read_keys)  # type: ignore[assignment]
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unavailable reading feature state: {exc}") from exc
        if self._marker is not None and stored.pop() is None:
            raise FeatureStateLost(
                f"Redis lost the feature state ({self._marker} is missing): rebuild it first"
            )
        processed_ms = int(self._clock() * 1000)
        # One MULTI/EXEC on a single Redis. On a cluster the states go in a second
        # pipeline, sent only after the values and rows landed (see the module doc).
        pipe = client.pipeline(transaction=not cluster)
        states = client.pipeline(transaction=False) if cluster else pipe
        rows: dict[int, list[tuple[int, OfflineRow]]] = {}
        applied: dict[int, int] = {}
        for ((index, entity), events), state_key, data in zip(
            groups, state_keys, stored, strict=True
        ):
            view = views[index]
            state, view_rows = self._apply(view, entity, events, data, processed_ms)
            if not view_rows:
                continue
            assert state.watermark_ms is not None
            rows.setdefault(index, []).extend(view_rows)
            applied[index] = applied.get(index, 0) + len(view_rows)
            states.set(state_key, state.to_bytes(), ex=view.ttl_s)
            self.online.stage_write(
                pipe,
                view.name,
                view.version,
                entity,
                view.aggregator.last_values(state),
                state.watermark_ms,
                state.last_event_id,
                view.ttl_s,
                steps=view.aggregator.steps(state),
                counted=state.counted,
            )
        for index, view_rows in rows.items():
            view_rows.sort(key=lambda r: r[0])  # the spool keeps consumption order
            pipe.rpush(
                keys.spool(views[index].name, views[index].version),
                *[r.to_json() for _, r in view_rows],
            )
            if self.rows_written is not None:  # kept for the hook only (the consistency monitor)
                self._written[views[index].name] = [r for _, r in view_rows]
        if not rows:
            return
        try:
            await pipe.execute()
            if states is not pipe:
                await states.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unavailable writing features: {exc}") from exc
        for index, n in applied.items():
            self.stats.applied += n
            _updates.add(n, {"view": views[index].name})

    def _apply(
        self,
        view: BoundView,
        entity: str,
        events: Sequence[_Queued],
        data: bytes | None,
        processed_ms: int,
    ) -> tuple[EntityState, list[tuple[int, OfflineRow]]]:
        """Fold one entity's events of the batch in order: the state after, and one offline
        row per counted event (as `(seq, row)`) with the values of that event."""
        aggregator = view.aggregator
        state = aggregator.load(data)
        rows: list[tuple[int, OfflineRow]] = []
        failed: set[int] = set()
        for n, item in enumerate(events):
            outcome = aggregator.admit(state, item.event_id, item.event_ms)
            if outcome is not Applied.APPLIED:
                self._skip(view, outcome.value)
                if outcome is Applied.TOO_LATE:
                    log.warning(
                        "event too late for view %s (entity %s, %d ms behind its latest event)",
                        view.name,
                        entity,
                        (state.watermark_ms or item.event_ms) - item.event_ms,
                        extra={"event_id": item.event_id},
                    )
                continue
            prior = state.counted
            try:
                values = aggregator.event_values(state, item.event_ms, item.payload)
                aggregator.apply(state, item.event_id, item.event_ms, item.payload)
            except Exception as exc:  # a bug or an odd value: dead-letter it, keep the others
                self._failed.append((item, view.name, exc))
                log.exception(
                    "cannot apply event to view %s (entity %s); skipped",
                    view.name,
                    entity,
                    extra={"event_id": item.event_id},
                )
                self._skip(view, "error")
                failed.add(n)
                state = aggregator.load(data)  # `apply` may have stopped half-way: redo
                for m, earlier in enumerate(events[:n]):
                    if m not in failed:
                        aggregator.apply(state, earlier.event_id, earlier.event_ms, earlier.payload)
                continue
            assert state.watermark_ms is not None
            row = OfflineRow(
                entity,
                item.event_id,
                item.event_ms,
                state.watermark_ms,
                processed_ms,
                values,
                prior,
                aggregator.steps(state) if aggregator.aggregates else None,
            )
            rows.append((item.seq, row))
        return state, rows

    def _skip(self, view: BoundView, reason: str) -> None:
        self.stats.skipped += 1
        by_reason = self.stats.skipped_by_reason
        by_reason[reason] = by_reason.get(reason, 0) + 1
        _skipped.add(1, {"view": view.name, "reason": reason})
