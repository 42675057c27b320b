"""Every event mlbus services tell each other, and the topic each travels on.

Events are facts: past-tense names, frozen, `extra="forbid"`, versioned in the
type name. A breaking change is a new class and a new `.v2` topic, never an
edit. On Kafka an event is a JSON value with CloudEvents binding headers
(see `mlbus.bus`); `mlbus schemas export DIR` writes the JSON Schema of each.

Keys: data events by entity id; model and training events by model name.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, TypeAlias

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# Topics, defined once: mlbus.<domain>.<event>.v<N>
INGEST_VALIDATED = "mlbus.ingest.validated.v1"
INGEST_REJECTED = "mlbus.ingest.rejected.v1"
TRAINING_REQUESTED = "mlbus.training.requested.v1"
TRAINING_COMPLETED = "mlbus.training.completed.v1"
TRAINING_FAILED = "mlbus.training.failed.v1"
MODEL_REGISTERED = "mlbus.model.registered.v1"
MODEL_PUBLISHED = "mlbus.model.published.v1"
PREDICTION_LOGGED = "mlbus.prediction.logged.v1"
DRIFT_DETECTED = "mlbus.drift.detected.v1"
DEAD_LETTERED = "mlbus.bus.deadlettered.v1"
OUTCOMES_MEASURED = "mlbus.outcomes.measured.v1"
EXPERIMENT_DECIDED = "mlbus.experiment.decided.v1"
EXPERIMENT_ACTED = "mlbus.experiment.acted.v1"
LABELING_REQUESTED = "mlbus.labeling.requested.v1"


def new_event_id() -> str:
    return str(uuid.uuid4())


def utc_now() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """A frozen, strict value object used inside events."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Contract):
    """Base of every event. `event_type` is the CloudEvents type and the topic name."""

    event_type: ClassVar[str]
    topic: ClassVar[str]
    plane: ClassVar[Literal["data", "control"]] = "control"
    """Data-plane events flow per record and are trace-sampled; control-plane ones are traced."""

    event_id: str = Field(default_factory=new_event_id, min_length=1, max_length=200)
    occurred_at: AwareDatetime = Field(default_factory=utc_now)


# ── value objects ────────────────────────────────────────────────────────────

TensorDatatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class TensorSpec(Contract):
    """One input or output of a model, in Open Inference Protocol terms (-1 = any size)."""

    name: str
    datatype: TensorDatatype
    shape: tuple[int, ...]


class ModelSignature(Contract):
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class RejectionReason(Contract):
    """One thing wrong with an input: a stable code, the field if any, a human sentence."""

    code: str
    message: str
    field: str | None = None


Scalar: TypeAlias = str | int | float | bool | None


# ── ingestion ────────────────────────────────────────────────────────────────


class IngestValidated(Event):
    """A producer's event passed its source's data contract."""

    event_type: ClassVar[str] = INGEST_VALIDATED
    topic: ClassVar[str] = INGEST_VALIDATED
    plane: ClassVar[Literal["data", "control"]] = "data"

    source: str
    contract_version: int
    entity_id: str
    event_time: AwareDatetime
    payload: dict[str, Scalar] = Field(description="The event's fields after the contract.")
    source_topic: str
    source_partition: int
    source_offset: int


class IngestRejected(Event):
    """A producer's event broke its contract; the original bytes ride along for replay."""

    event_type: ClassVar[str] = INGEST_REJECTED
    topic: ClassVar[str] = INGEST_REJECTED
    plane: ClassVar[Literal["data", "control"]] = "data"

    source: str | None
    source_topic: str
    source_partition: int
    source_offset: int
    raw_b64: str = Field(description="The original message value, base64.")
    key_b64: str | None = None
    reasons: tuple[RejectionReason, ...] = Field(min_length=1)


class MessageDeadLettered(Event):
    """A consumer could not process a message; it is kept here, bytes and reason."""

    event_type: ClassVar[str] = DEAD_LETTERED
    topic: ClassVar[str] = DEAD_LETTERED

    consumer_group: str | None
    source_topic: str
    source_partition: int
    source_offset: int
    key_b64: str | None
    value_b64: str | None
    headers: dict[str, str] = Field(default_factory=dict)
    error_type: str
    reason: str
    attempts: int = Field(ge=1)


# ── training ─────────────────────────────────────────────────────────────────


class TrainingRequested(Event):
    event_type: ClassVar[str] = TRAINING_REQUESTED
    topic: ClassVar[str] = TRAINING_REQUESTED

    model: str
    reason: Literal["drift", "schedule", "manual", "bootstrap"]
    window_start: AwareDatetime | None = None
    window_end: AwareDatetime | None = None
    cause_event_id: str | None = Field(
        default=None, description="The event that caused this request, e.g. a drift detection."
    )
    requested_by: str = "mlbus"


class TrainingCompleted(Event):
    event_type: ClassVar[str] = TRAINING_COMPLETED
    topic: ClassVar[str] = TRAINING_COMPLETED

    model: str
    run_id: str
    request_event_id: str | None
    version: int
    metrics: dict[str, float]
    dataset_fingerprint: str
    rows: int = Field(ge=0)
    duration_s: float = Field(ge=0)
    promoted: bool
    promotion_reason: str


class TrainingFailed(Event):
    event_type: ClassVar[str] = TRAINING_FAILED
    topic: ClassVar[str] = TRAINING_FAILED

    model: str
    run_id: str
    request_event_id: str | None
    stage: Literal["dataset", "train", "convert", "parity", "evaluate", "register"]
    reason: str


# ── registry ─────────────────────────────────────────────────────────────────


class ModelRegistered(Event):
    event_type: ClassVar[str] = MODEL_REGISTERED
    topic: ClassVar[str] = MODEL_REGISTERED

    model: str
    version: int = Field(ge=1)
    artifact_uri: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    signature: ModelSignature
    metrics: dict[str, float] = Field(default_factory=dict)
    run_id: str | None = None
    dataset_fingerprint: str | None = None


class ModelPublished(Event):
    """An alias (`champion`, `canary`, `shadow`, …) moved to a version."""

    event_type: ClassVar[str] = MODEL_PUBLISHED
    topic: ClassVar[str] = MODEL_PUBLISHED

    model: str
    alias: str
    version: int = Field(ge=1)
    previous_version: int | None
    artifact_uri: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: ModelSignature
    reason: str
    actor: str


# ── serving and drift ────────────────────────────────────────────────────────


class PredictionLogged(Event):
    event_type: ClassVar[str] = PREDICTION_LOGGED
    topic: ClassVar[str] = PREDICTION_LOGGED
    plane: ClassVar[Literal["data", "control"]] = "data"

    model: str
    version: int
    alias: str | None
    entity_id: str | None
    features: dict[str, Scalar]
    outputs: dict[str, list[float]]
    latency_ms: float = Field(ge=0)
    trace_id: str | None = None
    shadow: bool = False
    scored_event_id: str | None = Field(
        default=None,
        description="id of the business event scored (e.g. a transaction_id), when the caller "
        "named it; lets a later label for that event be joined to this prediction",
    )
    feature_ages_s: dict[str, float] = Field(
        default_factory=dict,
        description="Predict: age of each online value served (from the entity's latest event "
        "to the scored moment); request fields, defaults and empty windows have none",
    )
    defaulted_features: tuple[str, ...] = Field(
        default=(),
        description="Predict: features replaced by the spec's defaults",
    )
    features_at: AwareDatetime | None = Field(
        default=None,
        description="Predict: the moment the windows were evaluated at (the request's "
        "event_time, or when it was served); `features` are the values before encoding",
    )
    view_event_counts: dict[str, int] = Field(
        default_factory=dict,
        description="Predict: per view, how many of the entity's events the online state had "
        "counted when read; fewer than the offline row's `prior_events` means the read came "
        "before ingestion caught up (ADR 0020)",
    )


class DriftTestResult(Contract):
    """One test's verdict on one feature (or on the prediction or the error stream)."""

    feature: str
    kind: Literal["covariate", "prediction", "performance"]
    test: str
    statistic: float
    p_value: float | None = None
    threshold: float
    drifted: bool


class DriftDetected(Event):
    event_type: ClassVar[str] = DRIFT_DETECTED
    topic: ClassVar[str] = DRIFT_DETECTED

    model: str
    version: int
    results: tuple[DriftTestResult, ...] = Field(min_length=1)
    window_start: AwareDatetime
    window_end: AwareDatetime
    offsets: dict[str, tuple[int, int]] = Field(
        default_factory=dict, description="partition → (first, last) offset of the live window"
    )
    n_reference: int = Field(ge=0)
    n_live: int = Field(ge=0)
    correction: Literal["none", "bonferroni", "benjamini-hochberg"] = "bonferroni"


# ── outcomes and experiments ─────────────────────────────────────────────────


class MetricEstimate(Contract):
    """A metric of labelled outcomes with its 95% interval (NaN-free: None when unknown)."""

    name: str
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = Field(ge=0)


class OutcomesMeasured(Event):
    """Labelled outcomes of one (model, version, alias) over a sliding window of prediction time."""

    event_type: ClassVar[str] = OUTCOMES_MEASURED
    topic: ClassVar[str] = OUTCOMES_MEASURED

    model: str
    version: int
    alias: str
    window_s: float = Field(gt=0)
    window_start: AwareDatetime
    window_end: AwareDatetime
    labelled: int = Field(ge=0)
    metrics: tuple[MetricEstimate, ...]


class ExperimentDecided(Event):
    """A sequential test reached a verdict: the challenger is better or worse than the champion."""

    event_type: ClassVar[str] = EXPERIMENT_DECIDED
    topic: ClassVar[str] = EXPERIMENT_DECIDED

    experiment_id: str
    model: str
    alias: str = Field(description="the challenger's alias: canary or shadow")
    champion_version: int
    challenger_version: int
    verdict: Literal["better", "worse"]
    metric: str
    champion_value: float
    challenger_value: float
    difference: float = Field(description="challenger − champion, positive = better")
    ci_low: float
    ci_high: float
    p_value: float = Field(ge=0, le=1, description="always-valid (mSPRT)")
    alpha: float
    test: str = "msprt-normal-mixture"
    champion_samples: int = Field(ge=0)
    challenger_samples: int = Field(ge=0)
    started_at: AwareDatetime
    looks: int = Field(ge=1)


class ExperimentActed(Event):
    """What was done about a verdict: promoted, rolled back, only reported, or refused."""

    event_type: ClassVar[str] = EXPERIMENT_ACTED
    topic: ClassVar[str] = EXPERIMENT_ACTED

    experiment_id: str
    decision_event_id: str
    model: str
    alias: str
    version: int = Field(description="the challenger's version")
    action: Literal["promote", "rollback", "report"]
    outcome: Literal["done", "refused", "failed"]
    reason: str
    alias_change_event_id: str | None = None


class LabelingRequested(Event):
    """A prediction worth a person's time: label the event it scored."""

    event_type: ClassVar[str] = LABELING_REQUESTED
    topic: ClassVar[str] = LABELING_REQUESTED

    model: str
    version: int
    scored_event_id: str
    entity_id: str | None
    reason: Literal["band", "disagreement", "sample"]
    priority: float
    scores: dict[str, float] = Field(description="alias → score of each version that scored it")
    features: dict[str, Scalar]
    predicted_at: AwareDatetime


EVENT_TYPES: dict[str, type[Event]] = {
    cls.event_type: cls
    for cls in (
        IngestValidated,
        IngestRejected,
        MessageDeadLettered,
        TrainingRequested,
        TrainingCompleted,
        TrainingFailed,
        ModelRegistered,
        ModelPublished,
        PredictionLogged,
        DriftDetected,
        OutcomesMeasured,
        ExperimentDecided,
        ExperimentActed,
        LabelingRequested,
    )
}
"""CloudEvents type → event class; the bus decodes with this, never by importing names."""

ALL_TOPICS: tuple[str, ...] = tuple(cls.topic for cls in EVENT_TYPES.values())


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every event, keyed by event type."""
    return {name: cls.model_json_schema() for name, cls in EVENT_TYPES.items()}
