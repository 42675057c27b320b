"""The consistency monitor: each served vector against the offline row of the same event.

Inference logs what it fed the model (`PredictionLogged.features`, with how many
of the entity's events each view had counted); this service writes the offline
row of the scored event. The monitor holds whichever of the two comes first —
a served vector for `wait_s`, a row for `row_wait_s` (most events are never
scored) — and compares them when the other arrives (`mlbus.featurestore.compare`,
ADR 0020). Counts go to Redis (`mlbus features consistency` reads them) and to
the `mlbus.features.consistency` counter, by view, feature and outcome.

Every replica reads every prediction (no consumer group) but writes only the
rows of its own partitions, so a served vector whose row never comes here is
dropped after `wait_s` without being counted: only pairs are compared.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from mlbus.bus import Received
from mlbus.events import Event, PredictionLogged, Scalar
from mlbus.featurestore import Difference, OfflineRow, OnlineStore, Outcome, compare
from mlbus.featurestore import stage_consistency as stage
from mlbus.redis_failures import REDIS_DOWN
from mlbus.spec import ProjectSpec
from mlbus.telemetry import meter

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_compared = meter("mlbus.features").create_counter(
    "mlbus.features.consistency",
    unit="{value}",
    description="Served feature values compared with the offline row of the same event, "
    "by view, feature and outcome (match, lag, mismatch)",
)


@dataclass(frozen=True, slots=True)
class _Served:
    entity_id: str
    values: dict[str, Scalar]
    counted: int
    at_ms: int | None


@dataclass(frozen=True, slots=True)
class _Row:
    """What is compared of an offline row (its steps are not kept)."""

    values: dict[str, Scalar]
    event_time_ms: int
    prior_events: int | None


@dataclass(frozen=True, slots=True)
class _View:
    version: int
    features: frozenset[str]


class ConsistencyMonitor:
    """`observe` each logged prediction, `rows_written` after each batch write, `flush`."""

    def __init__(
        self,
        spec: ProjectSpec,
        online: OnlineStore,
        *,
        wait_s: float = 300.0,
        row_wait_s: float = 60.0,
        max_pending: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        source = spec.training_source()
        self.model = spec.model.name
        self.views = {
            name: _View(spec.features[name].version, frozenset(spec.features[name].feature_names()))
            for name in spec.model_views()
            if spec.features[name].source == source  # rows keyed by the scored event
        }
        self.online = online
        self.wait_s = wait_s
        self.row_wait_s = min(row_wait_s, wait_s)
        self.max_pending = max_pending
        self._clock = clock
        # (view, event id) → what came first, with when it stops being worth waiting for.
        self._served: OrderedDict[tuple[str, str], tuple[float, _Served]] = OrderedDict()
        # Rows wait less: most events are never scored, and a prediction's log reaches
        # this service seconds after the row at most (it is scored before it is produced).
        self._rows: OrderedDict[tuple[str, str], tuple[float, _Row]] = OrderedDict()
        self._counts: dict[str, Counter[tuple[str, Outcome]]] = {v: Counter() for v in self.views}
        self._examples: dict[str, list[Difference]] = {v: [] for v in self.views}
        self.compared = 0

    async def handle(self, received: Received[Event]) -> None:
        """The prediction consumer's handler."""
        if isinstance(received.payload, PredictionLogged):
            self.observe(received.payload)

    def observe(self, event: PredictionLogged) -> None:
        """Hold a served vector of the model (Predict, not a shadow) until its row is written."""
        if (
            event.model != self.model
            or event.shadow
            or event.scored_event_id is None
            or event.entity_id is None
            or event.features_at is None  # ModelInfer: no served feature values
        ):
            return
        at_ms = int(event.features_at.timestamp() * 1000)
        for view in self.views:
            prefix = f"{view}."
            values = {
                ref[len(prefix) :]: value
                for ref, value in event.features.items()
                if ref.startswith(prefix)
            }
            if not values:
                continue
            served = _Served(event.entity_id, values, event.view_event_counts.get(view, 0), at_ms)
            key = (view, event.scored_event_id)
            row = self._rows.pop(key, None)
            if row is not None:
                self._compare(view, key[1], served, row[1])
            else:
                self._hold(self._served, key, served, self.wait_s)

    def rows_written(self, written: Mapping[str, Sequence[OfflineRow]]) -> None:
        """Called after a batch's rows are stored: compare those already served, hold the rest."""
        for view, rows in written.items():
            if view not in self.views:
                continue
            for row in rows:
                key = (view, row.event_id)
                kept = _Row(row.values, row.event_time_ms, row.prior_events)
                served = self._served.pop(key, None)
                if served is not None:
                    self._compare(view, row.event_id, served[1], kept)
                else:
                    self._hold(self._rows, key, kept, self.row_wait_s)

    def _hold(
        self,
        pending: OrderedDict[tuple[str, str], tuple[float, _T]],
        key: tuple[str, str],
        item: _T,
        wait_s: float,
    ) -> None:
        now = self._clock()
        pending[key] = (now + wait_s, item)
        pending.move_to_end(key)
        while pending and (
            len(pending) > self.max_pending or next(iter(pending.values()))[0] < now
        ):
            pending.popitem(last=False)

    def _compare(self, view: str, event_id: str, served: _Served, row: _Row) -> None:
        names = self.views[view].features
        outcomes, differences = compare(
            {k: v for k, v in served.values.items() if k in names},
            served.counted,
            served.at_ms,
            served.entity_id,
            event_id,
            row.values,
            row.event_time_ms,
            row.prior_events,
        )
        counts = self._counts[view]
        for feature, outcome in outcomes.items():
            counts[(feature, outcome)] += 1
            _compared.add(1, {"view": view, "feature": feature, "outcome": outcome})
        self._examples[view].extend(differences)
        self.compared += 1
        for difference in differences:
            if difference.outcome == "mismatch":
                log.warning(
                    "served %s.%s=%r but the offline row of event %s has %r (entity %s)",
                    view,
                    difference.feature,
                    difference.served,
                    event_id,
                    difference.offline,
                    served.entity_id,
                )

    async def flush(self) -> None:
        """Add the counts since the last flush to Redis; kept for the next flush if it fails."""
        if not any(self._counts.values()):
            return
        # Swapped out before the await: compares made while Redis answers count next time.
        counts, self._counts = self._counts, {v: Counter() for v in self.views}
        examples, self._examples = self._examples, {v: [] for v in self.views}
        pipe = self.online.client.pipeline(transaction=False)
        now_ms = int(time.time() * 1000)
        for view, spec in self.views.items():
            stage(pipe, self.online.keys, view, spec.version, counts[view], examples[view], now_ms)
        try:
            await pipe.execute()
        except REDIS_DOWN as exc:
            log.warning("consistency counts not stored yet (kept for the next flush): %s", exc)
            for view in self.views:
                self._counts[view].update(counts[view])
                self._examples[view][:0] = examples[view]
