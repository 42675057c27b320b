"""From consumed records to monitor updates, detections and saved state.

One `DriftMonitor` per (model, version, topic partition): a partition's records
are applied in offset order by exactly one replica at a time, so its monitors
and its last applied offset can be saved together and move with the partition
on a rebalance. A record at or below that offset was already applied (a replay
after a crash, or a batch retried record by record) and is skipped, so evidence
is never counted twice and never lost.

Predictions (`mlbus.prediction.logged.v1`) feed `observe`: categorical codes
decoded to the profile's categories, the score as the prediction. Labels
(`mlbus.ingest.validated.v1` events of the model's labels source) are joined to
the pending prediction of the event they name and feed `observe_outcome` of the
monitor of *their* partition (that is where their offset is committed).

At each commit (`flush`, the consumer's `before_commit`): detections are
decided (once per detection id, in Redis, shared by replicas) and published,
with the retraining they cause (`_retraining`); pending predictions are
written, then every touched partition's monitors and offset are saved. A
crash between publishing and saving replays the same records into the same
windows, so the detection gets the same id and its claim says it was already
published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlbus.bus import PredictionsAndLabelsDecoder, Received
from mlbus.driftstats import DriftMonitor, FeatureKind, MonitorState, WindowVerdict
from mlbus.errors import InvalidInput
from mlbus.events import (
    INGEST_VALIDATED,
    PREDICTION_LOGGED,
    IngestValidated,
)
from mlbus.outcomestats import prediction_score  # the profile's prediction column
from mlbus.spec import LabelLink, ProjectSpec

from . import _metrics as metrics
from ._labels import Pending, PendingPredictions, label_outcome
from ._predictions import DriftPrediction
from ._retraining import Detection, Retraining, detection_id
from ._store import DriftStore, MonitorKey, PartitionSnapshot
from ._versions import ServedVersion, VersionCatalog

log = logging.getLogger(__name__)


@dataclass
class PartitionMonitors:
    """The monitors of one topic partition and the last offset applied to them."""

    topic: str
    partition: int
    offset: int = -1
    monitors: dict[MonitorKey, DriftMonitor] = field(default_factory=dict)
    stored: dict[MonitorKey, str] = field(default_factory=dict)
    """Saved states not restored yet (restored when their version's profile is at hand)."""
    dirty: bool = False
    status_stale: bool = False
    """Records were applied since the status was last written."""
    status_due: bool = False
    """A detection happened since: write the status at the next commit."""
    status_at: float = 0.0

    @property
    def source(self) -> str:
        return f"{self.topic}:{self.partition}"

    def snapshot(self, *, with_status: bool) -> PartitionSnapshot:
        """The state to save; the monitors' status too when asked (it runs the tests: ms)."""
        states = dict(self.stored)
        statuses: dict[MonitorKey, str] = {}
        for key, monitor in self.monitors.items():
            states[key] = monitor.snapshot().model_dump_json()
            if with_status:
                statuses[key] = monitor.status().model_dump_json()
        return PartitionSnapshot(self.topic, self.partition, self.offset, states, statuses)


@dataclass
class _Run:
    """Predictions of one batch for one monitor, counted together by `observe_columns`."""

    state: PartitionMonitors
    monitor: DriftMonitor
    served: ServedVersion
    events: list[DriftPrediction] = field(default_factory=list)
    """As they came: laid out per column at `_apply` (one comprehension per column is
    cheaper than a few appends per record)."""
    offsets: list[int] = field(default_factory=list)


@dataclass
class DriftProcessor:
    """The drift service's work, without the consumer loop (which calls `handle*` and `flush`)."""

    spec: ProjectSpec
    catalog: VersionCatalog
    store: DriftStore
    pending: PendingPredictions
    retraining: Retraining
    """What detections do at the commit: decided, published, and the retraining they cause."""
    monitor_shadow: bool = False
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    status_interval_s: float = 5.0
    """How often a partition's status is written while records flow (it runs the window
    tests: tens of ms); a detection's at once."""
    partitions: dict[tuple[str, int], PartitionMonitors] = field(default_factory=dict)
    outbox: list[Detection] = field(default_factory=list)
    replayed: int = 0
    """Records skipped because their partition's saved state already had them."""

    def __post_init__(self) -> None:
        self.model = self.spec.model.name
        drift = self.spec.drift
        watched = [f for f in self.spec.model_features() if f.kind in ("numeric", "categorical")]
        self.features: dict[str, FeatureKind] = {f.ref: f.kind for f in watched}  # type: ignore[misc]
        self.tests: dict[str, tuple[str, ...]] = {f.ref: drift.tests_for(f) for f in watched}
        label_source = self.spec.model.label.source
        link: LabelLink | None = self.spec.sources[label_source].labels
        self.label_link = link if drift.performance_drift else None
        self.label_source = label_source if self.label_link is not None else None

    @property
    def topics(self) -> tuple[str, ...]:
        """What to consume: predictions, and validated events when labels are joined."""
        if self.label_source is None:
            return (PREDICTION_LOGGED,)
        return (PREDICTION_LOGGED, INGEST_VALIDATED)

    def decoder(self) -> PredictionsAndLabelsDecoder[DriftPrediction]:
        return PredictionsAndLabelsDecoder(
            self.label_source, reader="drift service", predictions=DriftPrediction
        )

    # ── records ──────────────────────────────────────────────────────────────

    async def handle(self, received: Received[Any]) -> None:
        await self.handle_batch([received])

    async def handle_batch(self, batch: list[Received[Any]]) -> None:
        """Apply records in order; safe to call again with records already applied.

        Predictions are gathered per monitor and counted with `observe_columns` at the
        end (one call per monitor per batch); a partition's offset moves only once
        its records are applied, so an exception halfway leaves nothing half-counted.
        """
        if not batch:
            return
        counts: Counter[tuple[str, str, str]] = Counter()
        found = await self._pending_for_labels(batch)
        runs: dict[tuple[str, int, int], _Run] = {}
        queued: dict[tuple[str, int], int] = {}  # partition → last offset gathered, not applied
        states: dict[tuple[str, int], PartitionMonitors] = {}
        for received in batch:  # per record as little as it takes: most are predictions
            key = (received.topic, received.partition)
            state = states.get(key)
            if state is None:
                state = states[key] = await self._partition(*key, received.offset)
            offset = received.offset
            if offset <= state.offset or offset <= queued.get(key, -1):
                counts[(received.topic, "skipped", "replayed")] += 1
                self.replayed += 1
                continue
            payload = received.payload
            if isinstance(payload, DriftPrediction):
                queued[key] = offset
                if payload.model != self.model:
                    counts[(received.topic, "skipped", "other model")] += 1
                elif payload.shadow and not self.monitor_shadow:
                    counts[(received.topic, "skipped", "shadow")] += 1
                else:
                    run = runs.get((*key, payload.version)) or await self._run(
                        state, payload.version, runs
                    )
                    if run is None:
                        counts[(received.topic, "skipped", "no profile")] += 1
                    else:
                        run.events.append(payload)
                        run.offsets.append(offset)
            elif isinstance(payload, IngestValidated):
                self._apply(runs, queued, counts)  # labels are applied at once: keep the order
                outcome = await self._label(state, payload, found)
                counts[(received.topic, *outcome)] += 1
                state.offset = offset
                state.dirty = state.status_stale = True
            else:
                counts[(received.topic, "skipped", "not a label")] += 1
                queued[key] = offset
        self._apply(runs, queued, counts)
        for (topic, result, reason), n in counts.items():
            metrics.records.add(n, {"topic": topic, "outcome": result, "reason": reason})

    def _apply(
        self,
        runs: dict[tuple[str, int, int], _Run],
        queued: dict[tuple[str, int], int],
        counts: Counter[tuple[str, str, str]],
    ) -> None:
        """Count the gathered predictions into their monitors, keep them for the label
        join, then move the offsets."""
        for run in runs.values():
            events = run.events
            scores = [prediction_score(event.outputs) for event in events]
            logged = [event.occurred_at.timestamp() for event in events]
            # the scored moment decides the phase of the cycle (a replay scores old events)
            stamps = np.array(
                [
                    at if event.features_at is None else event.features_at.timestamp()
                    for event, at in zip(events, logged, strict=True)
                ],
                dtype=np.float64,
            )
            verdicts = run.monitor.observe_columns(
                run.served.decoder.columns([event.features for event in events], self.features),
                scores,
                n=len(events),
                stamps=stamps,
                source=run.state.source,
                offsets=run.offsets,
                entities=[event.entity_id for event in events],  # a partition's fixed subset
            )
            for verdict in verdicts:
                self._on_verdict(run.state, verdict)
            if self.label_link is not None:
                self.pending.keep(
                    self.model,
                    run.served.version,
                    [
                        (event.scored_event_id, score, at)
                        for event, score, at in zip(events, scores, logged, strict=True)
                        if event.scored_event_id and score is not None and not event.shadow
                    ],
                )
            counts[(run.state.topic, "observed", "")] += len(events)
        runs.clear()
        for key, offset in queued.items():
            state = self.partitions[key]
            state.offset = max(state.offset, offset)
            state.dirty = state.status_stale = True
        queued.clear()

    async def _partition(self, topic: str, partition: int, offset: int) -> PartitionMonitors:
        key = (topic, partition)
        state = self.partitions.get(key)
        # A gap in offsets: the partition may have been worked on elsewhere meanwhile.
        if (
            state is not None
            and not state.dirty
            and offset > state.offset + 1 >= 1
            and await self.store.stored_offset(topic, partition) > state.offset
        ):
            state = None
        if state is None:
            stored = await self.store.load_partition(topic, partition)
            state = PartitionMonitors(topic, partition, stored.offset, stored=dict(stored.monitors))
            self.partitions[key] = state
            if stored.offset >= 0:
                log.info(
                    "resumed drift state of %s:%d at offset %d (%d monitors)",
                    topic,
                    partition,
                    stored.offset,
                    len(stored.monitors),
                )
        return state

    def _monitor(self, state: PartitionMonitors, served: ServedVersion) -> DriftMonitor:
        key = (served.model, served.version)
        monitor = state.monitors.get(key)
        if monitor is not None:
            return monitor
        saved = state.stored.pop(key, None)
        monitor = None
        if saved is not None:
            try:
                monitor = DriftMonitor.restore(
                    MonitorState.model_validate_json(saved),
                    served.profile,
                    self.spec.drift,
                    self.features,
                    self.tests,
                )
            except (InvalidInput, ValueError) as exc:  # DriftStateMismatch; a bad state
                log.warning(
                    "saved drift state of %s v%d in %s does not fit the spec any more (%s); "
                    "starting a new window",
                    served.model,
                    served.version,
                    state.source,
                    exc,
                )
        if monitor is None:
            monitor = DriftMonitor(
                served.model,
                served.version,
                served.profile,
                self.spec.drift,
                self.features,
                self.tests,
            )
        state.monitors[key] = monitor
        return monitor

    async def _run(
        self, state: PartitionMonitors, version: int, runs: dict[tuple[str, int, int], _Run]
    ) -> _Run | None:
        """A new run for `version` in this batch; None when the version has no profile."""
        served = await self.catalog.get(self.model, version)
        if served is None:
            metrics.profile_unavailable.add(1, {"model": self.model, "version": version})
            return None
        run = runs[(state.topic, state.partition, version)] = _Run(
            state, self._monitor(state, served), served
        )
        return run

    def _label_of(self, event: IngestValidated) -> tuple[str, Any] | None:
        link = self.label_link
        if link is None or event.source != self.label_source:
            return None
        labelled = event.payload.get(link.event_id_field)
        if labelled is None:
            return None
        return str(labelled), event.payload.get(self.spec.model.label.field)

    async def _pending_for_labels(self, batch: Sequence[Received[Any]]) -> dict[str, Pending]:
        ids = [
            label[0]
            for received in batch
            if isinstance(received.payload, IngestValidated)
            and (label := self._label_of(received.payload)) is not None
        ]
        return await self.pending.lookup(self.model, ids) if ids else {}

    async def _label(
        self, state: PartitionMonitors, event: IngestValidated, found: Mapping[str, Pending]
    ) -> tuple[str, str]:
        label = self._label_of(event)
        if label is None:
            return "skipped", "not a label"
        event_id, value = label
        pending = found.get(event_id)
        if pending is None:
            metrics.labels.add(1, {"model": self.model, "outcome": "unmatched"})
            return "skipped", "no pending prediction"
        served = await self.catalog.get(self.model, pending.version)
        if served is None:
            return "skipped", "no profile"
        outcome = label_outcome(
            value, pending.score, metric=served.error_metric, positive=served.positive
        )
        if outcome is None:
            metrics.labels.add(1, {"model": self.model, "outcome": "unreadable"})
            return "skipped", "unreadable label"
        metrics.labels.add(1, {"model": self.model, "outcome": "joined"})
        verdict = self._monitor(state, served).observe_outcome(
            outcome.error, at=event.event_time, group=outcome.group
        )
        self.pending.joined(self.model, event_id)
        if self.retraining.arming and pending.at is not None:
            self.retraining.joined_labels.append((pending.at, event.event_time))
        if verdict is not None:
            self._on_verdict(state, verdict)
        return "outcome", ""

    def _on_verdict(self, state: PartitionMonitors, verdict: WindowVerdict) -> None:
        state.status_due = state.status_due or verdict.detection
        version = verdict.version
        metrics.windows.add(
            1, {"model": verdict.model, "version": version, "drifted": verdict.drifted}
        )
        for result in verdict.results:
            attrs: dict[str, str | int] = {
                "model": verdict.model,
                "version": version,
                "feature": result.feature,
                "test": result.test,
                "kind": result.kind,
                "source": state.source,
            }
            metrics.score.set(result.statistic, attrs)
            metrics.threshold.set(result.threshold, attrs)
        if verdict.detection:
            event_id = detection_id(
                verdict.model, version, state.source, verdict.origin, verdict.window_index
            )
            self.outbox.append(Detection(event_id, verdict, state.source))

    # ── the commit ───────────────────────────────────────────────────────────

    async def flush(self) -> None:
        """Before offsets commit: decide and publish detections, then save pending and state.

        Redis or the broker down: raises RetryableError having changed nothing it cannot
        do again; the consumer retries the commit-time work with its backoff.
        """
        while self.outbox:
            await self.retraining.decide_and_publish(self.outbox[0])
            self.outbox.pop(0)
        await self.retraining.advance_armed(check_deadline=False)
        dropped = await self.pending.flush()
        if dropped:
            metrics.pending_not_kept.add(dropped, {"model": self.model})
            log.warning("%d predictions not kept for the label join: pending_max reached", dropped)
        dirty = [state for state in self.partitions.values() if state.dirty]
        if not dirty:
            return
        # The status is for operators (computing it runs the tests: milliseconds): written
        # at most every status_interval_s, at once after a detection, and on the way out; the
        # state itself at every commit.
        snapshots = [
            state.snapshot(with_status=self._status_wanted(state, force=self.stopping.is_set()))
            for state in dirty
        ]
        written = await self.store.save(snapshots)
        for state, ok in zip(dirty, written, strict=True):
            state.dirty = False
            metrics.state_saves.add(1, {"outcome": "saved" if ok else "fenced"})
            if not ok:
                # Another replica saved a later offset: this one lost the partition.
                log.warning(
                    "drift state of %s is ahead in Redis (another replica owns it); "
                    "dropping the local copy",
                    state.source,
                )
                self.partitions.pop((state.topic, state.partition), None)
        await self.pending.forget_joined()

    def _status_wanted(self, state: PartitionMonitors, *, force: bool) -> bool:
        now = time.monotonic()
        wanted = state.status_due or (
            state.status_stale and (force or now - state.status_at >= self.status_interval_s)
        )
        if wanted:
            state.status_due = state.status_stale = False
            state.status_at = now
        return wanted

    async def write_statuses(self, *, force: bool = False) -> None:
        """Statuses of partitions that went quiet since their last write (a periodic task)."""
        snapshots = [
            state.snapshot(with_status=True)
            for state in self.partitions.values()
            if not state.dirty and self._status_wanted(state, force=force)
        ]
        await self.store.save_statuses(snapshots)
