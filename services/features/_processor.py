"""One validated event → every view of its source updated: state, online values, offline row.

Per view and event, in one Redis MULTI/EXEC transaction: the entity's window
state (with the event ids it has seen), the online hash (all values, `__ts`,
TTL) and the offline row appended to the view's spool. Either all of it lands
or none does, so a replay after a crash is recognised by the state and never
counted twice, and no offline row is lost when the offset commits before the
Parquet flush (see docs/adr/0012-feature-state.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from opentelemetry import trace

from mlbus.bus import Received
from mlbus.errors import RetryableError
from mlbus.events import Event, IngestValidated
from mlbus.featurestore import Applied, OfflineRow, OnlineStore, ViewAggregator
from mlbus.featurestore._online import REDIS_DOWN
from mlbus.spec import FeatureDef, ProjectSpec
from mlbus.telemetry import meter, tracer

log = logging.getLogger(__name__)
_meter = meter("mlbus.features")
_updates = _meter.create_counter("mlbus.features.updates", description="view updates written")
_skipped = _meter.create_counter(
    "mlbus.features.skipped", description="events not counted (duplicate, too late)"
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


class FeatureProcessor:
    """The consumer's handler: computes and writes each view an event feeds."""

    def __init__(self, views: Sequence[BoundView], online: OnlineStore) -> None:
        self.views = tuple(views)
        self._by_source: dict[str, list[BoundView]] = {}
        for view in views:
            self._by_source.setdefault(view.source, []).append(view)
        self.online = online
        self.client: aioredis.Redis = online.client
        self.keys = online.keys
        self._tracer = tracer("mlbus.features")

    async def handle(self, received: Received[Event]) -> None:
        event = received.payload
        if not isinstance(event, IngestValidated):
            return
        views = self._by_source.get(event.source)
        if not views:
            return
        if trace.get_current_span().is_recording():  # continue the validated event's trace
            with self._tracer.start_as_current_span(
                "features.update",
                attributes={"mlbus.event_id": event.event_id, "mlbus.entity_id": event.entity_id},
            ):
                for view in views:
                    await self.update(view, event)
        else:
            for view in views:
                await self.update(view, event)

    async def update(self, view: BoundView, event: IngestValidated) -> Applied:
        entity = event.entity_id
        event_ms = int(event.event_time.timestamp() * 1000)
        state_key = self.keys.state(view.name, view.version, entity)
        try:
            data = await self.client.get(state_key)
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unavailable reading feature state: {exc}") from exc
        state = view.aggregator.load(data)
        outcome = view.aggregator.apply(state, event.event_id, event_ms, event.payload)
        if outcome is not Applied.APPLIED:
            _skipped.add(1, {"view": view.name, "reason": outcome.value})
            if outcome is Applied.TOO_LATE:
                log.warning(
                    "event too late for view %s (entity %s, %d ms behind its latest event)",
                    view.name,
                    entity,
                    (state.watermark_ms or event_ms) - event_ms,
                    extra={"event_id": event.event_id},
                )
            return outcome
        assert state.watermark_ms is not None
        values = view.aggregator.values(state)
        row = OfflineRow(
            entity, event.event_id, event_ms, state.watermark_ms, int(time.time() * 1000), values
        )
        pipe = self.client.pipeline(transaction=True)
        pipe.set(state_key, state.to_bytes(), ex=view.ttl_s)
        self.online.stage_write(
            pipe,
            view.name,
            view.version,
            entity,
            values,
            state.watermark_ms,
            state.last_event_id,
            view.ttl_s,
        )
        pipe.rpush(self.keys.spool(view.name, view.version), row.to_json())
        try:
            await pipe.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unavailable writing features: {exc}") from exc
        _updates.add(1, {"view": view.name})
        return outcome
