"""The console's view of the live loop, refreshed in the background every `refresh_s`.

Pages that must answer fast (and the live updates) read the latest `Snapshot`
instead of asking every component on each request: component health, event
rates from the topics' end offsets, the tails of the control topics, a sample
of recently served predictions (the live side of the drift histograms), the
drift service's test scores over time, sampled at each refresh, and the
outcomes service's status (outcomes per alias, experiments).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from mlbus.events import (
    ALL_TOPICS,
    DriftDetected,
    Event,
    ExperimentActed,
    ExperimentDecided,
    ModelPublished,
    PredictionLogged,
    TrainingCompleted,
    TrainingFailed,
    TrainingRequested,
)
from mlbus.registry_client import ModelSummary
from mlbus.runstate import StatusReport

from ._sources import ConsoleSources
from ._topics import TopicReader

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)

HISTORY = 240
"""Points kept per series (event rates, test scores): 20 minutes at the default 5 s."""


@dataclass
class ScorePoint:
    at: datetime
    score: float
    p_value: float | None
    threshold: float

    @property
    def ratio(self) -> float:
        """How far past its threshold the test is, ≥ 1 meaning over it, on one scale for
        every test: score ÷ threshold, or threshold ÷ p-value for tests judged by p-value."""
        if self.p_value is not None:
            return self.threshold / max(self.p_value, 1e-12)
        return self.score / self.threshold if self.threshold else 0.0


@dataclass
class Snapshot:
    """What the last refresh saw; `version` grows with each refresh (for live updates)."""

    version: int = 0
    at: datetime | None = None
    health: StatusReport | None = None
    models: list[ModelSummary] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    rate_history: deque[tuple[datetime, dict[str, float]]] = field(
        default_factory=lambda: deque(maxlen=HISTORY)
    )
    requests: list[TrainingRequested] = field(default_factory=list)
    completed: list[TrainingCompleted] = field(default_factory=list)
    failed: list[TrainingFailed] = field(default_factory=list)
    detections: list[DriftDetected] = field(default_factory=list)
    published: list[ModelPublished] = field(default_factory=list)
    predictions: list[PredictionLogged] = field(default_factory=list)
    drift: dict[str, Any] = field(default_factory=dict)
    outcomes: dict[str, Any] | None = None
    """The outcomes service's status (`mlbus.outcomesstatus`); None before its first look."""
    decided: list[ExperimentDecided] = field(default_factory=list)
    acted: list[ExperimentActed] = field(default_factory=list)
    scores: dict[tuple[str, int, str, str], deque[ScorePoint]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def trainings(self) -> list[TrainingCompleted | TrainingFailed]:
        """Finished trainings, newest first."""
        done: list[TrainingCompleted | TrainingFailed] = [*self.completed, *self.failed]
        return sorted(done, key=lambda e: e.occurred_at, reverse=True)

    def caused_by(self, detection_id: str) -> list[TrainingRequested]:
        return [r for r in self.requests if r.cause_event_id == detection_id]

    def outcome_of(self, request_id: str) -> TrainingCompleted | TrainingFailed | None:
        return next((t for t in self.trainings() if t.request_event_id == request_id), None)


class Collector:
    """Refreshes a `Snapshot` until stopped; `changed` is set after every refresh."""

    def __init__(self, sources: ConsoleSources, topics: TopicReader) -> None:
        self.sources = sources
        self.topics = topics
        self.snapshot = Snapshot()
        self.changed = asyncio.Condition()
        self._previous: tuple[float, dict[str, int]] | None = None
        self._stop = asyncio.Event()

    async def run(self) -> None:
        interval = self.sources.settings.refresh_s
        while not self._stop.is_set():
            started = time.monotonic()
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stop.wait(), max(0.1, interval - (time.monotonic() - started))
                )

    def stop(self) -> None:
        self._stop.set()

    async def refresh(self) -> None:
        """One round of reads; a failing source is named in `errors`, the others still count."""
        snap = self.snapshot
        errors: dict[str, str] = {}
        # Read beside the others (gather's typed overloads stop at six awaitables).
        outcomes_read = asyncio.create_task(self.sources.outcomes_status())
        results = await asyncio.gather(
            self.sources.health(),
            self.sources.models(),
            self._rates(),
            self._tails(),
            self.sources.drift_state(),
            # Span files are re-read here, off the request path (a page reads the last result).
            asyncio.to_thread(self.sources.spans.traces),
            return_exceptions=True,
        )
        names = ("health", "registry", "kafka rates", "kafka topics", "drift state", "span files")
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                errors[name] = _describe(result)
        health, models, _, _, drift, _ = results
        if not isinstance(health, BaseException):
            snap.health = health
        if not isinstance(models, BaseException):
            snap.models = models
        if not isinstance(drift, BaseException):
            snap.drift = drift
            self._record_scores(drift)
        try:
            snap.outcomes = await outcomes_read
        except Exception as exc:  # as gather's return_exceptions: named, the others still count
            errors["outcomes status"] = _describe(exc)
        snap.errors = errors
        snap.at = datetime.now(UTC)
        snap.version += 1
        async with self.changed:
            self.changed.notify_all()

    async def _rates(self) -> None:
        topics = list(ALL_TOPICS)
        if self.sources.spec is not None:
            topics += sorted(self.sources.spec.topics())
        totals = await self.topics.end_offsets(topics)
        now = time.monotonic()
        snap = self.snapshot
        if self._previous is not None:
            then, before = self._previous
            elapsed = max(now - then, 1e-3)
            snap.rates = {
                t: max(0, n - before.get(t, n)) / elapsed for t, n in sorted(totals.items())
            }
            snap.rate_history.append((datetime.now(UTC), dict(snap.rates)))
        snap.totals = totals
        self._previous = (now, totals)

    async def _tails(self) -> None:
        count = self.sources.settings.topic_tail
        snap = self.snapshot
        snap.requests = _only(
            TrainingRequested, await self.topics.tail(TrainingRequested.topic, count)
        )
        snap.completed = _only(
            TrainingCompleted, await self.topics.tail(TrainingCompleted.topic, count)
        )
        snap.failed = _only(TrainingFailed, await self.topics.tail(TrainingFailed.topic, count))
        snap.detections = _only(DriftDetected, await self.topics.tail(DriftDetected.topic, count))
        snap.published = _only(ModelPublished, await self.topics.tail(ModelPublished.topic, count))
        snap.decided = _only(
            ExperimentDecided, await self.topics.tail(ExperimentDecided.topic, count)
        )
        snap.acted = _only(ExperimentActed, await self.topics.tail(ExperimentActed.topic, count))
        partitions = max(1, self.sources.settings.kafka.topic_partitions)
        sample = max(1, self.sources.settings.live_sample // partitions)
        snap.predictions = _only(
            PredictionLogged, await self.topics.tail(PredictionLogged.topic, sample)
        )

    def _record_scores(self, drift: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        for entry in drift.get("models", []):
            for row in entry["summary"]:
                key = (entry["model"], int(entry["version"]), row["feature"], row["test"])
                series = self.snapshot.scores.setdefault(key, deque(maxlen=HISTORY))
                series.append(
                    ScorePoint(
                        at=now,
                        score=float(row["score"]),
                        p_value=None if row["p_value"] is None else float(row["p_value"]),
                        threshold=float(row["threshold"]),
                    )
                )


def _only(cls: type[E], events: list[Event]) -> list[E]:
    return [e for e in events if isinstance(e, cls)]


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
