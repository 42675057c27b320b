"""What the demo measured, computed from what it recorded (pure: no I/O, no clocks).

The demo records every scoring call it made (`ServedRequest`) and the control
events it saw on the bus (`Milestones`); `summarize` turns them, with the known
labels, into the `DemoSummary` printed as a table and written as JSON.

Segments of the live stream (payments scored over gRPC, in send order):
- *before drift*: payments before the drift point, served by the first model;
- *after drift, before retraining*: payments from the drift point on, served by
  the first model (the model the drift made wrong);
- *after retraining*: payments from the drift point on, served by the retrained model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mlbus.events import ExperimentActed, ExperimentDecided


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """One Predict call of the live stream."""

    index: int
    """Position of the payment in the generated stream."""
    sent_at: datetime
    answered_at: datetime
    version: int | None
    """The model version that answered; None when the call failed."""
    score: float | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Milestones:
    """When the loop's control events happened (their `occurred_at`), None if never."""

    first_drifted_sent_at: datetime | None = None
    drift_detected_at: datetime | None = None
    retrain_requested_at: datetime | None = None
    retrain_completed_at: datetime | None = None
    new_version_published_at: datetime | None = None
    retrain_duration_s: float | None = None
    """The trainer's own measure of the run (`TrainingCompleted.duration_s`)."""


class Segment(BaseModel):
    """Accuracy of the served scores on one part of the stream."""

    model_config = ConfigDict(frozen=True)

    name: str
    versions: tuple[int, ...]
    requests: int
    labelled: int
    positives: int
    auc: float | None = Field(description="None when the part has a single class or no labels.")


class ReloadWindow(BaseModel):
    """Requests in flight while the new version was being published and loaded."""

    model_config = ConfigDict(frozen=True)

    started_at: datetime
    ended_at: datetime
    served: int
    failed: int


class DetectionDelay(BaseModel):
    model_config = ConfigDict(frozen=True)

    events: int = Field(description="Drifted payments scored before the detection.")
    seconds: float | None = Field(
        description="From the first drifted payment to the detection, negative when the "
        "detection came first (never clamped); None when no drifted payment was sent."
    )

    @property
    def false_alarm(self) -> bool:
        """Detected before any drifted payment was scored: not this drift's detection."""
        return self.seconds is None or self.seconds < 0


class Consistency(BaseModel):
    """Served feature values against the offline rows of the same payments (ADR 0020)."""

    model_config = ConfigDict(frozen=True)

    view: str
    events: int = Field(description="Scored payments whose offline row was compared.")
    values: int
    match: int
    lag: int = Field(
        description="Different because the card's previous payment was not "
        "yet ingested when this one was scored; counted apart."
    )
    mismatch: int
    match_rate: float | None = Field(description="match / (match + mismatch): lag left out.")
    examples: tuple[str, ...] = Field(
        default=(), description="A few differences: entity, event, feature, served, offline."
    )


class TraceLinks(BaseModel):
    """Which hops of the loop one trace links (read from the span files)."""

    model_config = ConfigDict(frozen=True)

    trace_id: str | None
    links: dict[str, bool] = Field(default_factory=dict)
    services: tuple[str, ...] = ()
    note: str = ""


class ExperimentResult(BaseModel):
    """The experiment story's end: champion vs the retrained canary, as outcomes judged it."""

    model_config = ConfigDict(frozen=True)

    verdict: Literal["better", "worse", "not yet"]
    champion_version: int | None
    challenger_version: int | None
    champion_served: int = Field(description="Payments the champion answered since the canary.")
    challenger_served: int = Field(description="Payments the canary answered.")
    champion_frauds: int | None = Field(
        default=None,
        description="Frauds among the payments the champion answered since the canary whose "
        "label was sent: at most what its arm's outcomes count (`min_class_count` per arm "
        "before a first look).",
    )
    challenger_frauds: int | None = None
    metric: str | None = None
    champion_value: float | None = None
    challenger_value: float | None = None
    difference: float | None = Field(default=None, description="challenger - champion")
    ci_low: float | None = Field(
        default=None, description="Always-valid interval of the difference."
    )
    ci_high: float | None = None
    p_value: float | None = Field(default=None, description="Always-valid (mSPRT).")
    alpha: float | None = None
    champion_outcomes: int | None = Field(
        default=None, description="Labelled outcomes of the champion's arm at the verdict."
    )
    challenger_outcomes: int | None = None
    looks: int | None = None
    seconds_to_decision: float | None = Field(
        default=None, description="From the canary's publication to the verdict."
    )
    action: str | None = None
    action_outcome: str | None = None
    action_reason: str | None = None
    note: str | None = None


def experiment_result(
    served: Sequence[ServedRequest],
    *,
    champion_version: int | None,
    challenger_version: int | None,
    canary_published_at: datetime | None,
    decided: ExperimentDecided | None,
    acted: ExperimentActed | None,
    not_yet_note: str | None = None,
    labels: Mapping[int, bool] | None = None,
) -> ExperimentResult:
    """The verdict and its evidence; "not yet" (with what was served) when none came.

    `labels`: payment index → the label sent for it (payments without one left out); the
    frauds each arm answered are counted from it."""
    since = canary_published_at
    after = [r for r in served if since is None or r.sent_at >= since]
    arms = {
        version: [r for r in after if version is not None and r.version == version]
        for version in (champion_version, challenger_version)
    }

    def frauds(version: int | None) -> int | None:
        if labels is None or version is None:
            return None
        return sum(1 for r in arms[version] if labels.get(r.index, False))

    base = ExperimentResult(
        verdict="not yet",
        champion_version=champion_version,
        challenger_version=challenger_version,
        champion_served=len(arms[champion_version]),
        challenger_served=len(arms[challenger_version]),
        champion_frauds=frauds(champion_version),
        challenger_frauds=frauds(challenger_version),
    )
    if decided is None:
        return base.model_copy(update={"note": not_yet_note})
    seconds = None
    if canary_published_at is not None:
        seconds = round((decided.occurred_at - canary_published_at).total_seconds(), 1)
    update: dict[str, object] = {
        "verdict": decided.verdict,
        "champion_version": decided.champion_version,
        "challenger_version": decided.challenger_version,
        "metric": decided.metric,
        "champion_value": decided.champion_value,
        "challenger_value": decided.challenger_value,
        "difference": decided.difference,
        "ci_low": decided.ci_low,
        "ci_high": decided.ci_high,
        "p_value": decided.p_value,
        "alpha": decided.alpha,
        "champion_outcomes": decided.champion_samples,
        "challenger_outcomes": decided.challenger_samples,
        "looks": decided.looks,
        "seconds_to_decision": seconds,
    }
    if acted is not None:
        update |= {
            "action": acted.action,
            "action_outcome": acted.outcome,
            "action_reason": acted.reason,
        }
    else:
        update["note"] = "the verdict's action (experiment.acted) was not seen before the end"
    return base.model_copy(update=update)


class DemoSummary(BaseModel):
    """Everything the demo reports; `--summary-json` writes exactly this."""

    model_config = ConfigDict(frozen=True)

    model: str
    seed: int
    data_dir: str
    initial_version: int | None
    retrained_version: int | None
    retrained_by: str | None = Field(
        default=None,
        description="Reason of the request that produced the serving retrained model: 'drift' "
        "when the loop closed by itself, 'manual' when the demo's fallback asked for it.",
    )
    served_versions: tuple[int, ...]
    segments: tuple[Segment, ...]
    detection: DetectionDelay | None
    retraining_s: float | None = Field(
        description="From the training request to the registered model (the trainer's run)."
    )
    onset_to_new_model_s: float | None = Field(
        description="From the first drifted payment to the first answer of the retrained model."
    )
    reload: ReloadWindow | None
    requests_total: int
    requests_failed: int
    failures: dict[str, int] = Field(
        default_factory=dict, description="Failed scoring calls by gRPC status."
    )
    failure_examples: dict[str, str] = Field(
        default_factory=dict, description="The first error message of each status."
    )
    drift_kind: str = Field(
        default="both", description="What the stream's drift changes; 'none' is the control run."
    )
    initial_evaluation_auc: float | None = Field(
        default=None,
        description="The first model's AUC on its holdout, to compare with the AUC of what "
        "it served before the drift (ADR 0020: the same features in both).",
    )
    detections: int = Field(
        default=0, description="mlbus.drift.detected.v1 events for the model during the run."
    )
    causal_waits: int = Field(
        default=0,
        description="Payments scored only after their card's previous payment was in the "
        "online store (the replay is faster than real time; see CausalOrder).",
    )
    causal_timeouts: int = Field(
        default=0, description="Of those, payments scored after the wait gave up."
    )
    consistency: Consistency | None = Field(
        default=None, description="None when the feature service's counts could not be read."
    )
    drift_causes: tuple[str, ...] = ()
    drift_requests: int = Field(
        default=0, description="Training requests with reason 'drift' for this model."
    )
    promotion_reason: str | None = None
    trace: TraceLinks | None = Field(
        default=None, description="The trace of the drift detection and what it caused."
    )
    publish_trace: TraceLinks | None = Field(
        default=None,
        description="The trace of the alias move to the retrained version, when it is not "
        "the retraining's (the registry publishes from its outbox).",
    )
    retrain_trace: TraceLinks | None = Field(
        default=None,
        description="The trace of the training run whose model was promoted, when it is "
        "another one (a retraining the demo requested by hand).",
    )
    story: Literal["loop", "experiment"] = "loop"
    experiment: ExperimentResult | None = Field(
        default=None, description="The experiment story's verdict, evidence and action."
    )
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    total_seconds: float | None = None
    notes: tuple[str, ...] = ()

    def segment(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)


BEFORE_DRIFT = "before drift"
AFTER_DRIFT = "after drift, before retraining"
AFTER_RETRAIN = "after retraining"


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); None for one class."""
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels for {len(scores)} scores")
    y = np.asarray(labels, dtype=bool)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return None
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    # Average ranks over ties: each run of equal scores gets its mean rank.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(s)]))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    rank_sum = float(ranks[y].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def segments(
    served: Sequence[ServedRequest],
    labels: Mapping[int, bool],
    *,
    drift_at: int,
    initial_version: int | None,
    retrained_version: int | None,
) -> tuple[Segment, ...]:
    """AUC of the served scores before drift, after drift (old model), after retraining."""
    parts: dict[str, list[ServedRequest]] = {BEFORE_DRIFT: [], AFTER_DRIFT: [], AFTER_RETRAIN: []}
    for request in served:
        if not request.ok or request.version is None or request.score is None:
            continue
        if request.index < drift_at:
            parts[BEFORE_DRIFT].append(request)
        elif retrained_version is not None and request.version == retrained_version:
            parts[AFTER_RETRAIN].append(request)
        elif retrained_version is None or request.version != retrained_version:
            parts[AFTER_DRIFT].append(request)
    del initial_version  # segments follow the version that answered, whatever it is
    out: list[Segment] = []
    for name, requests in parts.items():
        known = [r for r in requests if r.index in labels]
        y = [labels[r.index] for r in known]
        scores = [float(r.score) for r in known if r.score is not None]
        out.append(
            Segment(
                name=name,
                versions=tuple(sorted({r.version for r in requests if r.version is not None})),
                requests=len(requests),
                labelled=len(known),
                positives=sum(y),
                auc=roc_auc(y, scores),
            )
        )
    return tuple(out)


def detection_delay(
    served: Sequence[ServedRequest], drift_at: int, milestones: Milestones
) -> DetectionDelay | None:
    """Drifted payments scored before the detection, and seconds since the first of them."""
    detected = milestones.drift_detected_at
    first = milestones.first_drifted_sent_at
    if detected is None:
        return None
    events = sum(1 for r in served if r.index >= drift_at and r.sent_at <= detected)
    seconds = None if first is None else (detected - first).total_seconds()
    return DetectionDelay(events=events, seconds=seconds)


def first_answer_of(served: Sequence[ServedRequest], version: int | None) -> datetime | None:
    if version is None:
        return None
    answers = [r.answered_at for r in served if r.ok and r.version == version]
    return min(answers) if answers else None


def reload_window(
    served: Sequence[ServedRequest], milestones: Milestones, new_version: int | None
) -> ReloadWindow | None:
    """Requests sent from the new version's publication until its first answer (inclusive)."""
    published = milestones.new_version_published_at
    first_new = first_answer_of(served, new_version)
    if published is None or first_new is None:
        return None
    inside = [r for r in served if published <= r.sent_at <= first_new]
    return ReloadWindow(
        started_at=published,
        ended_at=first_new,
        served=sum(1 for r in inside if r.ok),
        failed=sum(1 for r in inside if not r.ok),
    )


def onset_to_new_model_s(
    served: Sequence[ServedRequest], milestones: Milestones, new_version: int | None
) -> float | None:
    first = milestones.first_drifted_sent_at
    first_new = first_answer_of(served, new_version)
    if first is None or first_new is None:
        return None
    return max(0.0, (first_new - first).total_seconds())


def retraining_seconds(milestones: Milestones) -> float | None:
    """Request → completed as seen on the bus; the trainer's own duration if that is missing."""
    requested, completed = milestones.retrain_requested_at, milestones.retrain_completed_at
    if requested is not None and completed is not None:
        return max(0.0, (completed - requested).total_seconds())
    return milestones.retrain_duration_s


def failures_by_status(
    served: Sequence[ServedRequest],
) -> tuple[dict[str, int], dict[str, str]]:
    """How many calls failed with each gRPC status (the text before the first colon), and
    the first message of each."""
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    for request in served:
        if request.error is not None:
            status = request.error.split(":", 1)[0]
            counts[status] = counts.get(status, 0) + 1
            examples.setdefault(status, request.error)
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])), examples
