"""What the demo learns of the loop from the bus, and what it records for the summary.

`BusObserver` reads every control event since the topics began (no consumer
group); `LoopWatcher` turns what it saw into the `LoopRecord`'s milestones and
the reporter's news, and says whether a retraining is still open. It reads no
service's internals.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from mlbus.bus import Consumer, Publisher, Received, header
from mlbus.config import KafkaSettings
from mlbus.events import (
    DriftDetected,
    Event,
    ExperimentActed,
    ExperimentDecided,
    IngestRejected,
    ModelPublished,
    TrainingCompleted,
    TrainingFailed,
    TrainingRequested,
)

from ._summary import Consistency, Milestones, ServedRequest

if TYPE_CHECKING:
    from ._loop import LoopContext

E = TypeVar("E", bound=Event)
CHAMPION = "champion"
CANARY = "canary"
_TRACEPARENT_PARTS = 4


@dataclass(frozen=True)
class Seen:
    """A control event the demo saw on the bus, with the trace it travelled in."""

    event: Event
    trace_id: str | None


@dataclass
class LoopRecord:
    """What the loop recorded, for `summarize`."""

    served: list[ServedRequest] = field(default_factory=list)
    initial_version: int | None = None
    retrained_version: int | None = None
    retrain_request: TrainingRequested | None = None
    drift: Seen | None = None
    completed: TrainingCompleted | None = None
    published: ModelPublished | None = None
    first_drifted_sent_at: datetime | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)
    drift_requests: int = 0
    manual_retrain: bool = False
    retrained_by: str | None = None
    retrain_trace_id: str | None = None
    """The trace of the training run whose model was promoted."""
    publish_trace_id: str | None = None
    """The trace of the alias move to the retrained version (and of the reload)."""
    manual_request_id: str | None = None
    """The reason of the request whose run put the new model in place (drift, manual)."""
    notes: list[str] = field(default_factory=list)
    initial_evaluation_auc: float | None = None
    detections: int = 0
    """drift.detected events for the model seen so far."""
    causal_waits: int = 0
    causal_timeouts: int = 0
    consistency: Consistency | None = None
    decided: ExperimentDecided | None = None
    """Experiment story: the outcomes service's verdict on champion vs the retrained canary."""
    acted: ExperimentActed | None = None
    """Experiment story: what was done about the verdict."""
    experiment_promoted: ModelPublished | None = None
    """Experiment story: champion moved to the canary's version after a `better` verdict."""
    experiment_waited_s: float | None = None
    """Experiment story: how long the demo waited after the stream without a verdict acted on."""

    def milestones(self) -> Milestones:
        return Milestones(
            first_drifted_sent_at=self.first_drifted_sent_at,
            drift_detected_at=self.drift.event.occurred_at if self.drift else None,
            retrain_requested_at=(
                self.retrain_request.occurred_at if self.retrain_request else None
            ),
            retrain_completed_at=self.completed.occurred_at if self.completed else None,
            new_version_published_at=self.published.occurred_at if self.published else None,
            retrain_duration_s=self.completed.duration_s if self.completed else None,
        )


def trace_id_of(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The trace id of a W3C `traceparent` header, if the record carries one."""
    value = header(headers, "traceparent")
    if value is None:
        return None
    parts = value.split("-")
    return parts[1] if len(parts) == _TRACEPARENT_PARTS and len(parts[1]) == 32 else None


class BusObserver:
    """Every control event of the loop since the topics began (no consumer group)."""

    def __init__(self, kafka: KafkaSettings, publisher: Publisher) -> None:
        self.seen: list[Seen] = []
        self.rejected: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._consumer = Consumer.of_events(
            kafka,
            types=[
                DriftDetected,
                TrainingRequested,
                TrainingCompleted,
                TrainingFailed,
                ModelPublished,
                IngestRejected,
                ExperimentDecided,
                ExperimentActed,
            ],
            group_id=None,
            handler=self._on_event,
            publisher=publisher,
            auto_offset_reset="earliest",
        )

    async def run(self) -> None:
        await self._consumer.run()

    def stop(self) -> None:
        self._consumer.stop()

    async def wait_assigned(self, timeout_s: float) -> None:
        await self._consumer.wait_assigned(timeout_s)

    async def _on_event(self, received: Received[Event]) -> None:
        event = received.payload
        if isinstance(event, IngestRejected):
            source = event.source or event.source_topic
            self.rejected[source] = self.rejected.get(source, 0) + 1
        else:
            self.seen.append(Seen(event, trace_id_of(received.headers)))
        async with self._changed:
            self._changed.notify_all()

    def first(self, kind: type[E], where: Callable[[E], bool] = lambda _: True) -> E | None:
        for seen in self.seen:
            if isinstance(seen.event, kind) and where(seen.event):
                return seen.event
        return None

    def all(self, kind: type[E], where: Callable[[E], bool] = lambda _: True) -> list[E]:
        return [s.event for s in self.seen if isinstance(s.event, kind) and where(s.event)]

    def seen_of(self, event: Event) -> Seen | None:
        return next((s for s in self.seen if s.event is event), None)

    async def wait_for(self, check: Callable[[], E | None], timeout_s: float) -> E | None:
        """The first non-None `check()`, re-evaluated on every new event, or None on timeout."""
        deadline = time.monotonic() + timeout_s
        async with self._changed:
            while (found := check()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))
                except TimeoutError:
                    continue
            return found


class LoopWatcher:
    """Turns what the observer saw into the record's milestones and news, once each."""

    def __init__(self, ctx: LoopContext, observer: BusObserver, record: LoopRecord) -> None:
        self.ctx = ctx
        self.observer = observer
        self.record = record
        self._told: set[str] = set()

    def _news_once(self, key: str, text: str) -> None:
        if key not in self._told:
            self._told.add(key)
            self.ctx.reporter.news(text)

    def _requests(self) -> list[TrainingRequested]:
        model = self.ctx.plan.model
        return self.observer.all(
            TrainingRequested, lambda e: e.model == model and e.reason in ("drift", "manual")
        )

    def update(self) -> None:
        record, observer, model = self.record, self.observer, self.ctx.plan.model
        record.detections = len(observer.all(DriftDetected, lambda e: e.model == model))
        if record.drift is None:
            seen = next(
                (s for s in observer.seen if isinstance(s.event, DriftDetected)
                 and s.event.model == model),
                None,
            )  # fmt: skip
            if seen is not None and isinstance(seen.event, DriftDetected):
                record.drift = seen
                drifted = sorted(
                    {f"{r.feature} ({r.test})" for r in seen.event.results if r.drifted}
                )
                self.ctx.reporter.news(
                    f"drift detected on v{seen.event.version}: {', '.join(drifted[:4])}"
                    + (f" and {len(drifted) - 4} more" if len(drifted) > 4 else "")
                )
        requests = self._requests()
        record.drift_requests = sum(1 for r in requests if r.reason == "drift")
        if record.retrain_request is None and requests:
            record.retrain_request = requests[0]
        for request in requests:
            cause = f", cause {request.cause_event_id[:8]}…" if request.cause_event_id else ""
            self._news_once(request.event_id, f"training requested ({request.reason}{cause})")
        ids = {r.event_id for r in requests}
        for failed in observer.all(TrainingFailed, lambda e: e.request_event_id in ids):
            text = f"training failed at {failed.stage}: {failed.reason}"
            if failed.event_id not in self._told:
                record.notes.append(text)
            self._news_once(
                failed.event_id, f"retraining failed at {failed.stage}: {failed.reason}"
            )
        for completed in observer.all(
            TrainingCompleted, lambda e: e.request_event_id in ids and e.model == model
        ):
            if completed.event_id in self._told:
                continue
            auc = completed.metrics.get("auc")
            verdict = "promoted" if completed.promoted else "NOT promoted"
            self._news_once(
                completed.event_id,
                f"v{completed.version} trained on {completed.rows:,} rows in "
                f"{completed.duration_s:.1f} s"
                + (f", evaluation AUC {auc:.3f}" if auc is not None else "")
                + f" — {verdict}: {completed.promotion_reason}",
            )
            if record.retrained_version is None:
                record.completed = completed
                # Timings follow the request whose run this is (drift's or the fallback's).
                record.retrain_request = next(
                    (r for r in requests if r.event_id == completed.request_event_id),
                    record.retrain_request,
                )
                if completed.promoted:
                    record.retrained_version = completed.version
                    origin = next(r for r in requests if r.event_id == completed.request_event_id)
                    record.retrained_by = origin.reason
                    record.retrain_request = origin  # the run that put the new model in place
                    seen = observer.seen_of(completed)
                    record.retrain_trace_id = seen.trace_id if seen is not None else None
                else:
                    record.notes.append(
                        f"the retrained v{completed.version} was not promoted: "
                        f"{completed.promotion_reason}"
                    )
        # The experiment story's retrained version goes out as canary (gates.promote_to).
        alias = CANARY if self.ctx.experiment else CHAMPION
        if record.retrained_version is not None and record.published is None:
            published = observer.first(
                ModelPublished,
                lambda e: (
                    e.model == model and e.alias == alias and e.version == record.retrained_version
                ),
            )
            if published is not None:
                record.published = published
                seen = observer.seen_of(published)
                record.publish_trace_id = seen.trace_id if seen is not None else None
                self.ctx.reporter.news(
                    f"{alias} moved to v{published.version}; inference reloads it"
                    + (
                        f" and sends it {self.ctx.spec.serving.canary_weight:.0%} of the cards"
                        if alias == CANARY
                        else ""
                    )
                )
        if self.ctx.experiment:
            self._experiment()

    def _experiment(self) -> None:
        """The verdict on champion vs the retrained canary, its action, and the promotion."""
        record, observer, model = self.record, self.observer, self.ctx.plan.model
        challenger = record.retrained_version
        if challenger is None:
            return
        if record.decided is None:
            record.decided = observer.first(
                ExperimentDecided,
                lambda e: (
                    e.model == model and e.alias == CANARY and e.challenger_version == challenger
                ),
            )
            decided = record.decided
            if decided is not None:
                self.ctx.reporter.news(
                    f"verdict: v{challenger} is {decided.verdict} than v{decided.champion_version} "
                    f"({decided.metric} {decided.challenger_value:.3f} vs "
                    f"{decided.champion_value:.3f}, p {decided.p_value:.4f}, "
                    f"{decided.challenger_samples:,} + {decided.champion_samples:,} outcomes)"
                )
        decided = record.decided
        if decided is not None and record.acted is None:
            record.acted = observer.first(
                ExperimentActed, lambda e: e.decision_event_id == decided.event_id
            )
            if record.acted is not None:
                self.ctx.reporter.news(
                    f"action: {record.acted.action} {record.acted.outcome} — {record.acted.reason}"
                )
        if record.acted is not None and record.experiment_promoted is None:
            record.experiment_promoted = observer.first(
                ModelPublished,
                lambda e: e.model == model and e.alias == CHAMPION and e.version == challenger,
            )

    def experiment_done(self) -> bool:
        """The verdict was reached and acted on (the experiment story's end)."""
        self.update()
        return self.record.acted is not None

    def retraining(self) -> bool:
        """A retraining was asked for and its outcome is not known yet, or its model is
        promoted but not answering yet."""
        self.update()  # the observer may have read new events since the last update
        requests = self._requests()
        ids = {r.event_id for r in requests}
        outcomes = {
            e.request_event_id
            for e in self.observer.all(TrainingCompleted, lambda e: e.request_event_id in ids)
        } | {
            e.request_event_id
            for e in self.observer.all(TrainingFailed, lambda e: e.request_event_id in ids)
        }
        if self.record.retrained_version is not None:
            return not self.new_version_served()
        # One run at a time per model: a request is open until its own outcome is known
        # (the demo's own request too, even before the observer has read it back). A
        # detection alone is not a retraining: the drift service arms it and fires once
        # enough drifted payments are labelled, so the stream must keep its pace until then.
        manual = self.record.manual_request_id
        return any(r.event_id not in outcomes for r in requests) or (
            manual is not None and manual not in outcomes
        )

    def cannot_close(self) -> bool:
        """Drift was detected, every retraining asked for ended without a new model, and
        the demo will not ask for one itself: streaming on would measure nothing new."""
        self.update()
        record = self.record
        fallback_pending = (
            self.ctx.options.manual_retrain_after is not None and not record.manual_retrain
        )
        return (
            record.drift is not None
            and record.retrained_version is None
            and bool(self._requests())
            and not self.retraining()
            and not fallback_pending
        )

    def new_version_served(self) -> bool:
        version = self.record.retrained_version
        return version is not None and any(
            r.version == version for r in reversed(self.record.served)
        )

    def enough_after_retrain(self) -> bool:
        version = self.record.retrained_version
        if version is None:
            return False
        served = sum(1 for r in self.record.served if r.version == version)
        return served >= self.ctx.options.after_retrain
