"""From consumed records to outcomes: predictions wait, labels join them, aggregates grow.

Predictions (`mlbus.prediction.logged.v1`) that name the event they scored
(`scored_event_id`) wait in Redis, one hash per scored event holding every
version and alias that scored it (champion, canary, shadow). A label (an
`ingest.validated` event of the spec's labels source) names that event: each
waiting prediction becomes one outcome of its (model, version, alias), counted
in the time bucket of the prediction, and in the arm of every running
experiment it is evidence for (the challenger's version and alias, or the
champion's version, made since the experiment started).

Defined behaviours (each counted in `mlbus.outcomes.labels`):
- the first label of an event is used; its predictions are then replaced by a
  marker (kept as long as they would have waited), so a later label of the
  same event → `repeated`, and a replayed prediction does not bring them back;
- a label for an event no waiting prediction scored (unknown, or its
  predictions waited longer than the TTL) → `unmatched`;
- a label whose value cannot be read for the task → `unreadable`;
- a record at or below its partition's saved offset (a replay) → skipped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlbus.bus import PredictionsAndLabelsDecoder, Publisher, Received, header
from mlbus.errors import InvalidInput, RetryableError
from mlbus.events import (
    INGEST_VALIDATED,
    PREDICTION_LOGGED,
    IngestValidated,
    PredictionLogged,
    Scalar,
)
from mlbus.labeling import LabelQueue, labeling_request, new_request
from mlbus.outcomestats import Outcomes, empty_outcomes, outcomes_from_json, prediction_score
from mlbus.redis_failures import REDIS_DOWN
from mlbus.spec import ProjectSpec

from . import _metrics as metrics
from ._store import (
    ExperimentRecord,
    OutcomesStore,
    PendingPrediction,
    experiment_id,
)

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER_ALIASES = ("canary", "shadow")


def label_value(label: Scalar, task: str) -> bool | float | None:
    """The label as the task reads it; None when it cannot be read.

    classification: positive for true, 1, "true", "1", "yes" (any case); regression: a finite
    number.
    """
    if label is None:
        return None
    if task == "regression":
        if isinstance(label, bool) or not isinstance(label, int | float):
            return None
        return float(label) if math.isfinite(label) else None
    if isinstance(label, bool):
        return label
    return str(label).strip().lower() in ("true", "1", "yes")


@dataclass
class PartitionOutcomes:
    """The aggregates a labels partition has counted, and its last applied offset."""

    topic: str
    partition: int
    offset: int = -1
    aggregates: dict[str, Outcomes] = field(default_factory=dict)
    """`cell|model|version|alias|bucket` and `arm|experiment|side` → aggregate."""
    traces: dict[str, str] = field(default_factory=dict)
    """`trace|experiment` → traceparent of the latest label that was evidence for it."""
    dirty: set[str] = field(default_factory=set)
    joined: list[tuple[str, str]] = field(default_factory=list)
    changed: bool = False

    @classmethod
    def from_saved(cls, topic: str, partition: int, saved: Mapping[str, str]) -> PartitionOutcomes:
        import json

        state = cls(topic, partition, int(saved.get("offset", -1)))
        for name, raw in saved.items():
            if name.startswith(("cell|", "arm|")):
                state.aggregates[name] = outcomes_from_json(json.loads(raw))
            elif name.startswith("trace|"):
                state.traces[name] = raw
        return state


def cell_name(model: str, version: int, alias: str, bucket: int) -> str:
    return f"cell|{model}|{version}|{alias}|{bucket}"


def arm_name(experiment: str, side: str) -> str:
    return f"arm|{experiment}|{side}"


def _sampled(traceparent: str) -> bool:
    return traceparent.endswith("-01")


@dataclass
class OutcomesProcessor:
    """The service's work without the consumer loop (which calls `handle_batch` and `flush`)."""

    spec: ProjectSpec
    store: OutcomesStore
    bucket_s: int = 300
    clock: Any = time.time
    partitions: dict[tuple[str, int], PartitionOutcomes] = field(default_factory=dict)
    experiments: dict[str, ExperimentRecord] = field(default_factory=dict)
    champions: dict[str, tuple[float, int]] = field(default_factory=dict)
    """model → (time, version) of the latest champion prediction seen."""
    _pending: dict[tuple[str, str], dict[str, PendingPrediction]] = field(default_factory=dict)
    _challengers: dict[tuple[str, str, int], float] = field(default_factory=dict)
    _labelled: set[tuple[str, str]] = field(default_factory=set)
    """Events labelled since the last flush (Redis learns of them at the flush)."""
    _checked: set[tuple[str, int]] = field(default_factory=set)
    """Partitions whose saved offset was compared since the last flush."""
    _experiments_read: bool = False
    queue: LabelQueue | None = None
    """The labeling queue (when the spec has `outcomes.labeling`)."""
    publisher: Publisher | None = None
    _candidates: dict[str, dict[str, PredictionLogged]] = field(default_factory=dict)
    _answered: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        model = self.spec.model
        link = self.spec.sources[model.label.source].labels
        if link is None:
            raise InvalidInput(f"source {model.label.source!r} names no labelled event")
        self.link = link
        self.model = model.name
        self.task = model.task
        self.threshold = model.threshold
        self.label_source = model.label.source
        self.label_field = model.label.field
        self.retention_s = max(self.spec.outcomes.windows) + self.bucket_s

    @property
    def topics(self) -> list[str]:
        return [PREDICTION_LOGGED, INGEST_VALIDATED]

    def decoder(self) -> PredictionsAndLabelsDecoder[PredictionLogged]:
        return PredictionsAndLabelsDecoder(
            self.label_source, reader="outcomes service", predictions=PredictionLogged
        )

    async def handle(self, received: Received[Any]) -> None:
        await self.handle_batch([received])

    async def handle_batch(self, batch: list[Received[Any]]) -> None:
        """Apply a fetch: all or nothing (effects wait in memory for `flush`)."""
        labels: list[tuple[Received[Any], tuple[str, Scalar]]] = []
        for received in batch:
            payload = received.payload
            if isinstance(payload, PredictionLogged):
                self._prediction(payload)
            elif isinstance(payload, IngestValidated):
                label = self._label_of(payload)
                if label is not None:
                    labels.append((received, label))
        if not labels:
            return
        if not self._experiments_read:
            await self._refresh_experiments()
            self._experiments_read = True
        wanted = [(self.model, event_id) for _, (event_id, _) in labels]
        found = await self.store.pending(wanted)
        for key in self._labelled.intersection(wanted):
            found[key] = []  # labelled earlier in this fetch: a repeat
        for key, entries in self._buffered(wanted).items():
            if key in found and not found[key]:
                continue  # already labelled: a replayed prediction does not count again
            merged = {p.field: p for p in found.get(key, [])}
            merged.update((p.field, p) for p in entries)
            found[key] = list(merged.values())
        states = {
            where: await self._partition(*where)
            for where in dict.fromkeys((r.topic, r.partition) for r, _ in labels)
        }
        for received, (event_id, value) in labels:
            state = states[(received.topic, received.partition)]
            if received.offset <= state.offset:
                continue  # applied before a crash: counted once already
            state.offset = received.offset
            state.changed = True
            self._apply_label(state, received, event_id, value, found)

    # ── predictions ──────────────────────────────────────────────────────────

    def _prediction(self, event: PredictionLogged) -> None:
        if event.model != self.model:
            return
        if event.scored_event_id is None:
            metrics.predictions.add(1, {"model": event.model, "outcome": "no_event_id"})
            return
        score = prediction_score(event.outputs)
        if score is None:
            metrics.predictions.add(1, {"model": event.model, "outcome": "no_score"})
            return
        alias = event.alias or ("shadow" if event.shadow else CHAMPION)
        if event.shadow:
            alias = "shadow"
        at = event.occurred_at.timestamp()
        pending = PendingPrediction(event.version, alias, score, at)
        self._pending.setdefault((event.model, event.scored_event_id), {})[pending.field] = pending
        metrics.predictions.add(1, {"model": event.model, "outcome": "kept"})
        if self.spec.outcomes.labeling is not None and alias in (CHAMPION, "shadow"):
            self._candidates.setdefault(event.scored_event_id, {})[alias] = event
        if alias == CHAMPION:
            latest = self.champions.get(event.model)
            if latest is None or at >= latest[0]:
                self.champions[event.model] = (at, event.version)
        elif alias in CHALLENGER_ALIASES:
            key = (event.model, alias, event.version)
            self._challengers[key] = min(at, self._challengers.get(key, at))

    def _buffered(
        self, wanted: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], list[PendingPrediction]]:
        return {key: list(self._pending[key].values()) for key in wanted if key in self._pending}

    # ── labels ───────────────────────────────────────────────────────────────

    def _label_of(self, event: IngestValidated) -> tuple[str, Scalar] | None:
        if event.source != self.label_source:
            return None
        labelled = event.payload.get(self.link.event_id_field)
        if labelled is None:
            return None
        return str(labelled), event.payload.get(self.label_field)

    async def _partition(self, topic: str, partition: int) -> PartitionOutcomes:
        state = self.partitions.get((topic, partition))
        # Moved to another replica and back since? Its saved state is then ahead.
        if (
            state is not None
            and (topic, partition) not in self._checked
            and not state.changed
            and await self.store.saved_offset(topic, partition) > state.offset
        ):
            state = None
        self._checked.add((topic, partition))
        if state is None:
            saved = await self.store.load_partition(topic, partition)
            state = PartitionOutcomes.from_saved(topic, partition, saved)
            self.partitions[(topic, partition)] = state
        return state

    def _apply_label(
        self,
        state: PartitionOutcomes,
        received: Received[Any],
        event_id: str,
        value: Scalar,
        found: dict[tuple[str, str], list[PendingPrediction]],
    ) -> None:
        entries = found.get((self.model, event_id))
        if entries is None:
            metrics.labels.add(1, {"model": self.model, "outcome": "unmatched"})
            return
        if not entries:
            metrics.labels.add(1, {"model": self.model, "outcome": "repeated"})
            return
        actual = label_value(value, self.task)
        if actual is None:
            metrics.labels.add(1, {"model": self.model, "outcome": "unreadable"})
            return
        metrics.labels.add(1, {"model": self.model, "outcome": "joined"})
        traceparent = header(received.headers, "traceparent")
        for entry in entries:
            bucket = int(entry.at // self.bucket_s)
            self._add(
                state, cell_name(self.model, entry.version, entry.alias, bucket), entry, actual
            )
            for record in self.experiments.values():
                side = _side(record, entry)
                if side is None:
                    continue
                self._add(state, arm_name(record.experiment_id, side), entry, actual)
                if traceparent:
                    name = f"trace|{record.experiment_id}"
                    if _sampled(traceparent) or name not in state.traces:
                        state.traces[name] = traceparent
                        state.dirty.add(name)
        state.joined.append((self.model, event_id))
        self._answered.append(event_id)
        found[(self.model, event_id)] = []  # a second label in this batch is a repeat
        self._labelled.add((self.model, event_id))
        self._pending.pop((self.model, event_id), None)

    def _add(
        self, state: PartitionOutcomes, name: str, entry: PendingPrediction, actual: bool | float
    ) -> None:
        aggregate = state.aggregates.get(name)
        if aggregate is None:
            aggregate = state.aggregates[name] = empty_outcomes(self.task, self.threshold)
        if isinstance(actual, bool):
            if aggregate.task == "classification":
                aggregate.add(entry.score, actual)
        elif aggregate.task == "regression":
            aggregate.add(entry.score, actual)
        state.dirty.add(name)

    async def _refresh_experiments(self) -> None:
        self.experiments = {
            k: r for k, r in (await self.store.experiments()).items() if r.status == "running"
        }

    # ── commit ───────────────────────────────────────────────────────────────

    async def flush(self) -> None:
        """Before the consumer commits: waiting predictions, then each partition's state."""
        import json

        pending, self._pending = self._pending, {}
        try:
            await self.store.keep_pending(pending)
        except BaseException:
            for key, entries in pending.items():
                self._pending.setdefault(key, {}).update(entries)
            raise
        oldest = int((self.clock() - self.retention_s) // self.bucket_s)
        fenced: list[tuple[str, int]] = []
        for state in self.partitions.values():
            if not state.changed:
                continue
            dropped = [
                name
                for name in state.aggregates
                if name.startswith("cell|") and int(name.rsplit("|", 1)[1]) < oldest
            ]
            for name in dropped:
                del state.aggregates[name]
                state.dirty.discard(name)
            fields: dict[str, str] = {}
            for name in state.dirty:
                if name in state.aggregates:
                    fields[name] = json.dumps(state.aggregates[name].to_json())
                elif name in state.traces:
                    fields[name] = state.traces[name]
            saved = await self.store.save_partition(
                state.topic, state.partition, state.offset, fields, dropped, state.joined
            )
            if not saved:
                log.warning(
                    "outcomes of %s:%d not saved: another replica owns the partition now",
                    state.topic,
                    state.partition,
                )
                fenced.append((state.topic, state.partition))
            state.dirty.clear()
            state.joined = []
            state.changed = False
        for where in fenced:
            del self.partitions[where]
        self._labelled.clear()
        self._checked.clear()
        self._experiments_read = False
        await self._labeling()
        await self._open_experiments()

    async def _labeling(self) -> None:
        """Queue the predictions the spec asks labels for; answered requests leave the queue.

        Disagreement is seen when the champion's and the shadow's predictions of one
        event arrive within one commit (the shadow scores a copy of the same request,
        so they usually do).
        """
        rules = self.spec.outcomes.labeling
        candidates, self._candidates = self._candidates, {}
        answered, self._answered = self._answered, []
        if rules is None or self.queue is None:
            return
        requests = []
        for event_id, by_alias in candidates.items():
            champion = by_alias.get(CHAMPION)
            if champion is None:
                continue
            score = prediction_score(champion.outputs)
            shadow_event = by_alias.get("shadow")
            shadow = None if shadow_event is None else prediction_score(shadow_event.outputs)
            if score is None:
                continue
            chosen = labeling_request(
                rules,
                event_id=event_id,
                threshold=self.threshold,
                champion=score,
                shadow=shadow,
            )
            if chosen is None:
                continue
            scores = {CHAMPION: score} if shadow is None else {CHAMPION: score, "shadow": shadow}
            requests.append(
                new_request(
                    model=self.model,
                    version=champion.version,
                    scored_event_id=event_id,
                    entity_id=champion.entity_id,
                    reason=chosen[0],
                    priority=chosen[1],
                    scores=scores,
                    features=champion.features,
                    predicted_at=champion.occurred_at,
                )
            )
        try:
            queued = set(await self.queue.offer(requests, rules.max_open))
            await self.queue.answered(answered)
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable updating the labeling queue: {exc}") from exc
        if self.publisher is not None:
            for request in requests:
                if request.scored_event_id in queued:
                    await self.publisher.publish(request, key=request.entity_id)

    async def _open_experiments(self) -> None:
        """A challenger seen serving (canary) or scoring (shadow) beside a known champion.

        It starts at its earliest prediction seen: a challenger seen before any champion
        prediction waits for one, and an earlier prediction read later (another
        partition lagging) moves the start back while the experiment runs.
        """
        challengers, self._challengers = self._challengers, {}
        known: dict[str, ExperimentRecord] | None = None
        for (model, alias, version), at in challengers.items():
            champion = self.champions.get(model)
            if champion is None:
                self._challengers[(model, alias, version)] = at  # until a champion is seen
                continue
            if champion[1] == version:
                continue
            record = ExperimentRecord(
                experiment_id(model, alias, version, champion[1]),
                model,
                alias,
                champion[1],
                version,
                started_at=at,
            )
            if await self.store.open_experiment(record):
                log.info(
                    "experiment %s opened: %s v%d (%s) against champion v%d",
                    record.experiment_id,
                    model,
                    version,
                    alias,
                    champion[1],
                )
                self.experiments[record.experiment_id] = record
                continue
            known = known if known is not None else await self.store.experiments()
            existing = known.get(record.experiment_id)
            if existing is not None and existing.status == "running" and at < existing.started_at:
                existing.started_at = at
                await self.store.save_experiment(existing)
                self.experiments[existing.experiment_id] = existing


def _side(record: ExperimentRecord, entry: PendingPrediction) -> str | None:
    """Which arm of `record` this prediction is evidence for, if any."""
    if entry.at < record.started_at:
        return None
    if entry.alias == record.alias and entry.version == record.challenger_version:
        return "challenger"
    if entry.alias == CHAMPION and entry.version == record.champion_version:
        return "champion"
    return None
