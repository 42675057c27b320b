"""What a detection does: decided once, published, and the retraining it may cause.

The processor (`_processor`) turns records into monitor verdicts; a verdict with
`detection=True` becomes a `Detection` in its outbox. At the commit, `Retraining`
takes each one:

    Detection ─► DriftStore.claim: once per detection id, cooldown and policy (shared
                 by replicas in Redis)
              ─► drift.detected, in a new trace (the loop drift → training → reload)
              ─► the training request at once, or armed until enough labels of
                 predictions since the drift window arrive (ADR 0017), then fired
                 in the detection's trace

Labels the processor joins are counted into the armed trigger (`joined_labels`,
`advance_armed`) at every commit and periodically, so the maximum wait passes
without records too.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from mlbus.bus import Publisher
from mlbus.driftstats import RetrainPolicy, WindowVerdict
from mlbus.errors import RetryableError
from mlbus.events import DriftDetected, TrainingRequested
from mlbus.spec import ProjectSpec
from mlbus.telemetry import extract_kafka_context, inject_kafka_headers, tracer

from . import _metrics as metrics
from ._store import ArmedTrigger, Claim, DriftStore, FireDecision

log = logging.getLogger(__name__)
_tracer = tracer("mlbus.drift")

_IDS = uuid.UUID("6c1d9a52-0d3e-4d8e-9a57-3c1e0f6b2a10")
"""Namespace of the deterministic ids of detections and the training requests they cause."""


def detection_id(model: str, version: int, source: str, origin: str, window_index: int) -> str:
    """The same detection (same records, same window) always gets the same id."""
    return str(uuid.uuid5(_IDS, f"drift:{model}:{version}:{source}:{origin}:{window_index}"))


def request_id(detection: str) -> str:
    return str(uuid.uuid5(_IDS, f"training:{detection}"))


def evidence(verdict: WindowVerdict) -> str:
    """The drifted tests with their numbers, for the log line a person reads afterwards."""
    parts = []
    for r in sorted(verdict.results, key=lambda r: (r.feature, r.test)):
        if not r.drifted:
            continue
        p = "" if r.p_value is None else f", p={r.p_value:.2g}"
        parts.append(f"{r.feature}/{r.test} {r.statistic:.4g} vs {r.threshold:.4g}{p}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Detection:
    """A verdict with `detection=True`, waiting to be decided and published at the commit."""

    event_id: str
    verdict: WindowVerdict
    source: str


@dataclass
class Retraining:
    """Decides and publishes detections, and requests (or arms) the retraining they cause."""

    spec: ProjectSpec
    store: DriftStore
    publisher: Publisher | None = None
    retrain_lookback_s: float | None = None
    retrain_min_labels: int | None = None
    """Labels of predictions since the drift window to wait for (None: model.min_rows)."""
    retrain_max_wait_s: float = 86_400.0
    fire_lease_s: float = 60.0
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    detections_published: int = 0
    requests_published: int = 0
    joined_labels: list[tuple[float, datetime]] = field(default_factory=list)
    """(prediction time, label event time) of labels joined since the last commit."""
    armed_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.model = self.spec.model.name
        drift = self.spec.drift
        self.retrain = RetrainPolicy(drift) if drift.trigger == "retrain" else None
        labelled = self.spec.sources[self.spec.model.label.source].labels is not None
        # With labels joined, a drift-caused retraining waits for labelled evidence of
        # the drift (ADR 0017); without them there is nothing to wait for.
        self.arming = self.retrain is not None and drift.performance_drift and labelled
        self.min_labels = self.retrain_min_labels or self.spec.model.min_rows

    async def decide_and_publish(self, detection: Detection) -> None:
        """Claim the detection once (shared by replicas), publish it if it alarms, and record it."""
        verdict = detection.verdict
        claim = await self.store.claim(
            detection.event_id,
            verdict.model,
            now=self.clock(),
            cooldown_s=float(self.spec.drift.cooldown_s),
            retrain=self.retrain,
            arm=self.arming,
        )
        if claim.published:
            log.info("detection %s was already handled; not publishing again", detection.event_id)
            return
        drifted = sorted({f"{r.feature}/{r.test}" for r in verdict.results if r.drifted})
        outcome = "alarm" if claim.alarm else "suppressed"
        metrics.detections.add(
            1, {"model": verdict.model, "version": verdict.version, "outcome": outcome}
        )
        trace_id: str | None = None
        if claim.alarm:
            trace_id = await self._publish(detection, claim)
        if self.retrain is not None:
            fired = claim.alarm and claim.trigger
            metrics.triggers.add(
                1,
                {
                    "model": verdict.model,
                    "outcome": ("armed" if self.arming else "fired") if fired else "suppressed",
                    "reason": "allowed" if fired else _reason_code(claim.reason),
                },
            )
            if not fired:
                log.warning(
                    "drift of %s v%d (%s): retraining not requested: %s",
                    verdict.model,
                    verdict.version,
                    evidence(verdict),
                    claim.reason,
                    extra={"event_id": detection.event_id},
                )
        await self.store.record_detection(
            {
                "event_id": detection.event_id,
                "model": verdict.model,
                "version": verdict.version,
                "source": detection.source,
                "window_index": verdict.window_index,
                "window_start": verdict.window_start.isoformat(),
                "window_end": verdict.window_end.isoformat(),
                "n_live": verdict.n_live,
                "drifted": drifted,
                "alarm": claim.alarm,
                "retraining_requested": claim.alarm and claim.trigger and not self.arming,
                "retraining_armed": claim.alarm and claim.trigger and self.arming,
                "reason": claim.reason,
                "trace_id": trace_id,
                "decided_at": self.clock().isoformat(),
            }
        )
        await self.store.mark_published(detection.event_id, claim)

    async def _publish(self, detection: Detection, claim: Claim) -> str:
        """drift.detected (and the training request) in a new trace; returns its trace id."""
        assert self.publisher is not None, "retraining publishes only inside the service"
        verdict = detection.verdict
        with _tracer.start_as_current_span(
            "drift.detected",
            context=Context(),  # a new trace: the loop drift → training → reload starts here
            kind=SpanKind.PRODUCER,
            attributes={
                "mlbus.model": verdict.model,
                "mlbus.version": verdict.version,
                "mlbus.event_id": detection.event_id,
                "mlbus.source": detection.source,
                "mlbus.window_index": verdict.window_index,
            },
        ) as span:
            trace_id = f"{span.get_span_context().trace_id:032x}"
            detected = DriftDetected(
                event_id=detection.event_id,
                model=verdict.model,
                version=verdict.version,
                results=verdict.results,
                window_start=verdict.window_start,
                window_end=verdict.window_end,
                offsets=dict(verdict.offsets),
                n_reference=verdict.n_reference,
                n_live=verdict.n_live,
                correction=verdict.correction,
            )
            await self.publisher.publish(detected, key=verdict.model)
            self.detections_published += 1
            log.warning(
                "drift detected on %s v%d in %s window %d (%d live values): %s",
                verdict.model,
                verdict.version,
                detection.source,
                verdict.window_index,
                verdict.n_live,
                evidence(verdict),
                extra={"event_id": detection.event_id, "trace_id": trace_id},
            )
            if claim.trigger and self.arming:
                await self._arm(detection, span.get_span_context().trace_id)
            elif claim.trigger:
                window_start = None
                if self.retrain_lookback_s is not None:
                    window_start = verdict.window_end - timedelta(seconds=self.retrain_lookback_s)
                request = await self._request_training(
                    verdict.model, detection.event_id, window_start
                )
                log.info(
                    "retraining of %s requested (%s) for drift %s",
                    verdict.model,
                    request.event_id,
                    detection.event_id,
                    extra={"event_id": request.event_id, "trace_id": trace_id},
                )
        return trace_id

    # ── the armed retraining ─────────────────────────────────────────────────

    async def _arm(self, detection: Detection, trace_id: int) -> None:
        """Keep the retraining until labels show what the drift looks like (ADR 0017)."""
        verdict = detection.verdict
        headers: list[tuple[str, bytes]] = []
        inject_kafka_headers(headers)  # the drift.detected span: the run continues its trace
        now = self.clock()
        trigger = ArmedTrigger(
            detection_id=detection.event_id,
            model=verdict.model,
            version=verdict.version,
            since=verdict.window_start,
            window_end=verdict.window_end,
            armed_at=now,
            deadline=now + timedelta(seconds=self.retrain_max_wait_s),
            min_labels=self.min_labels,
            traceparent=[(k, v.decode()) for k, v in headers],
        )
        armed = await self.store.arm(trigger)
        if armed.detection_id != detection.event_id:
            log.info(
                "retraining of %s already armed by drift %s; not arming another",
                verdict.model,
                armed.detection_id,
            )
            return
        log.info(
            "retraining of %s armed for drift %s: fires once %d labels of predictions since "
            "%s have arrived, or at %s",
            verdict.model,
            detection.event_id,
            self.min_labels,
            verdict.window_start.isoformat(),
            trigger.deadline.isoformat(),
            extra={"event_id": detection.event_id, "trace_id": f"{trace_id:032x}"},
        )

    async def advance_armed(self, *, check_deadline: bool = True) -> None:
        """Count the labels joined since the last call into the armed trigger; fire if due.

        Called at every commit (only when labels were joined: a commit of predictions
        costs no Redis call) and periodically with `check_deadline` (the maximum wait
        passes without records too). Labels of predictions made before the trigger's
        `since` are not evidence of the drift and are not counted.
        """
        if not self.arming or not (self.joined_labels or check_deadline):
            return
        async with self.armed_lock:
            joined, self.joined_labels = self.joined_labels, []
            try:
                await self._advance(joined)
            except RetryableError:
                self.joined_labels[:0] = joined  # counted at the next try
                raise

    async def _advance(self, joined: list[tuple[float, datetime]]) -> None:
        armed = await self.store.armed(self.model)
        if armed is None:
            return
        # A cheap look first: most commits add nothing to count and nothing is due.
        # The transaction counts again against the trigger it finds (ArmedTrigger.evidence).
        counted, _ = armed.evidence(joined)
        due = self.clock() >= armed.deadline or armed.decision is not None
        if not counted and not due:
            return
        result = await self.store.advance(
            self.model,
            joined=joined,
            clock=self.clock,
            lease_s=self.fire_lease_s,
            retrain=self.retrain,
        )
        if result is None:
            return
        armed, decision = result
        if decision is not None:
            await self._fire(armed, decision)
            await self.store.disarm(armed.model, armed.detection_id)

    async def _request_training(
        self, model: str, detection_id: str, window_start: datetime | None
    ) -> TrainingRequested:
        """Publish the one retraining request a detection may cause (its id derives from it)."""
        request = TrainingRequested(
            event_id=request_id(detection_id),
            model=model,
            reason="drift",
            window_start=window_start,
            window_end=None,
            cause_event_id=detection_id,
            requested_by="mlbus-drift",
        )
        assert self.publisher is not None, "retraining publishes only inside the service"
        await self.publisher.publish(request, key=model)
        self.requests_published += 1
        return request

    def retrain_window_start(self, armed: ArmedTrigger) -> datetime | None:
        """Where a drift-caused run's labels start, in the labels' event time.

        The trainer keeps labels whose event time is at or after `window_start`, so it
        is the earliest event time of the labels of predictions made after the detection,
        less the lookback (history before the drift to learn from too; unset: none).
        With none of those (fired at the maximum wait), the lookback before the detection
        window's end, as for a request fired at once.
        """
        lookback = timedelta(seconds=self.retrain_lookback_s or 0)
        if armed.first_label_time is not None:
            return armed.first_label_time - lookback
        if self.retrain_lookback_s is not None:
            return armed.window_end - lookback
        return None

    async def _fire(self, armed: ArmedTrigger, decision: FireDecision) -> None:
        assert self.publisher is not None, "retraining publishes only inside the service"
        why = "max_wait" if decision.by_deadline else "labels"
        parent = extract_kafka_context([(k, v.encode()) for k, v in armed.traceparent])
        with _tracer.start_as_current_span(
            "drift.retrain",
            context=parent,  # the detection's trace: drift → training → reload is one trace
            kind=SpanKind.PRODUCER,
            attributes={
                "mlbus.model": armed.model,
                "mlbus.event_id": armed.detection_id,
                "mlbus.labels": armed.labels,
                "mlbus.fired_by": why,
            },
        ) as span:
            trace_id = f"{span.get_span_context().trace_id:032x}"
            extra = {"event_id": armed.detection_id, "trace_id": trace_id}
            if not decision.allowed:
                metrics.triggers.add(
                    1,
                    {
                        "model": armed.model,
                        "outcome": "suppressed",
                        "reason": _reason_code(decision.reason),
                    },
                )
                log.warning(
                    "armed retraining of %s for drift %s not requested: %s",
                    armed.model,
                    armed.detection_id,
                    decision.reason,
                    extra=extra,
                )
                return
            if decision.by_deadline:
                log.warning(
                    "retraining of %s for drift %s fired at the maximum wait (%gs) with only "
                    "%d of %d labels of predictions since the drift window",
                    armed.model,
                    armed.detection_id,
                    self.retrain_max_wait_s,
                    armed.labels,
                    armed.min_labels,
                    extra=extra,
                )
            window_start = self.retrain_window_start(armed)
            request = await self._request_training(armed.model, armed.detection_id, window_start)
            metrics.triggers.add(1, {"model": armed.model, "outcome": "fired", "reason": why})
            log.info(
                "retraining of %s requested (%s) for drift %s: %d labels of predictions "
                "since the drift window; training on labels from %s",
                armed.model,
                request.event_id,
                armed.detection_id,
                armed.labels,
                "all history" if window_start is None else window_start.isoformat(),
                extra={"event_id": request.event_id, "trace_id": trace_id},
            )


def _reason_code(reason: str) -> str:
    """A bounded metric label from a policy's sentence ("cooldown: …" → "cooldown")."""
    return reason.split(":", 1)[0].strip().replace(" ", "_") or "unknown"
