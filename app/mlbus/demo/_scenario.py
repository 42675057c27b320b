"""The demo's story as data: which payments are sent when, and which labels follow them.

    plan = plan_scenario(spec, DemoSizes(), now=datetime.now(UTC), seed=7)
    plan.bootstrap      # payments (and their labels) sent before the first training
    plan.live           # payments scored over gRPC and sent, drift from `plan.drift_at` on

Event time: the generator spreads the payments over `days` days ending
`end_gap` before `now`, so every payment is in the past (the contracts refuse
events more than `allowed_skew_s` in the future) and fresh enough to serve
(`serving.max_feature_age_s`). The live loop sends a chargeback a few seconds
after the payment it labels ("labels arrive later"); one whose own time is
still in the future is not sent at all: that verdict is not known yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mlbus.example import DriftKind, GenerationError, bind_fraud, generate
from mlbus.spec import ProjectSpec

JsonEvent = dict[str, Any]


@dataclass(frozen=True)
class DemoSizes:
    """How many payments the story has, and where they sit in time."""

    payments: int = 40_000
    """Payments generated; the live stream may stop early (see `LoopOptions.after_retrain`)."""
    bootstrap: int = 12_000
    """The oldest payments (and their labels), sent before the first training."""
    days: int = 8
    """The payments' event times span this many days, ending `end_gap` before now."""
    drift_age: timedelta = timedelta(hours=120)
    """The drift starts this long before now (event time): earlier than the drift
    service's retraining lookback reaches, so the retraining learns from drifted data."""
    end_gap: timedelta = timedelta(minutes=10)
    drift_kind: DriftKind = "both"
    min_live_before_drift: int = 500

    def __post_init__(self) -> None:
        for name in ("payments", "bootstrap", "days"):
            if getattr(self, name) < 1:
                raise GenerationError(f"expected {name} >= 1, got {getattr(self, name)}")
        if self.end_gap < timedelta(0):
            raise GenerationError("expected end_gap >= 0")
        span = timedelta(days=self.days)
        if not self.end_gap < self.drift_age < span + self.end_gap:
            raise GenerationError(
                f"expected the drift to start within the {self.days} days of payments, "
                f"got drift_age {self.drift_age}"
            )


EXPERIMENT_SIZES = DemoSizes(payments=55_000, days=11, drift_age=timedelta(hours=192))
"""The experiment story's sizes: the loop story's 5,000 payments a day and 3 days before
the drift (so the first model, the detection and the retraining see what they see in the
loop story: the retraining fires after ~16,000 labels of drifted predictions, where its
gates were tuned), with a drifted stretch of 8 days instead of 5. The canary goes out after
about 17,700 drifted payments (measured at 40,000 payments, seed 7); the payments of the
last ~10 hours (~2,300: chargebacks come 30 min + a median 6 h later) have no label yet.
The remaining ~40,000 - 17,700 - 2,300 = 20,000 labelled payments give each arm of a
half-half canary ~10,000 labelled outcomes, ~160 frauds at the drifted fraud rate (1.6%):
beyond `min_class_count` (50) for a first look, and enough for the mSPRT (τ 0.02,
α 0.05) to reach a verdict on an AUC difference of 0.2 (~115 frauds per arm on
DeLong's variance) or 0.25 (~90). 40,000 payments left ~36 frauds on the canary's arm."""


@dataclass(frozen=True)
class Payment:
    """One payment as a producer sends it, what the scoring call sends, and its truth."""

    index: int
    event: JsonEvent
    event_id: str
    entity_id: str
    event_time: datetime
    request_fields: dict[str, Any]
    label: JsonEvent | None
    """The chargeback naming this payment, None when its time is still in the future."""
    is_fraud: bool | None


@dataclass(frozen=True)
class ScenarioPlan:
    """Every payment in send order, split into the bootstrap part and the live part."""

    payments_topic: str
    labels_topic: str
    model: str
    payments: tuple[Payment, ...]
    sizes: DemoSizes
    drift_at: int
    """Index of the first drifted payment."""
    not_yet_labelled: int
    fraud_rate_before: float | None
    fraud_rate_after: float | None
    start: datetime
    end: datetime
    labels_by_index: Mapping[int, bool] = field(default_factory=dict)

    @property
    def bootstrap(self) -> tuple[Payment, ...]:
        return self.payments[: self.sizes.bootstrap]

    @property
    def live(self) -> tuple[Payment, ...]:
        return self.payments[self.sizes.bootstrap :]

    @property
    def drift_time(self) -> datetime:
        """Event time of the first drifted payment."""
        return self.payments[self.drift_at].event_time


def request_field_refs(spec: ProjectSpec) -> dict[str, str]:
    """`view.feature` → payment field, for the model's raw (non-aggregate) features of the
    scored source: what an application knows about the payment when it asks for a score."""
    source = spec.training_source()
    refs: dict[str, str] = {}
    for feature in spec.model_features():
        if feature.is_aggregate or feature.source_field is None:
            continue
        if spec.features[feature.view].source == source:
            refs[feature.ref] = feature.source_field
    return refs


def plan_scenario(spec: ProjectSpec, sizes: DemoSizes, *, now: datetime, seed: int) -> ScenarioPlan:
    """Generate the fraud scenario and lay it out for the demo (see the module docstring).

    Raises `GenerationError` when the spec does not fit the fraud scenario.
    """
    binding = bind_fraud(spec)
    if binding is None:
        raise GenerationError(
            "the demo needs a spec that fits the fraud scenario (payments with amount, "
            "merchant_category, country, channel and a labels source); see examples/fraud"
        )
    if now.tzinfo is None:
        raise GenerationError("expected `now` with a UTC offset")
    start = (now - sizes.end_gap - timedelta(days=sizes.days)).replace(microsecond=0)
    drift_at = _drift_index(spec, binding.transactions, sizes, start, now, seed)
    if drift_at - sizes.bootstrap < sizes.min_live_before_drift:
        raise GenerationError(
            f"the drift starts at payment {drift_at:,}, too close to the {sizes.bootstrap:,} "
            f"bootstrap payments (at least {sizes.min_live_before_drift} live payments must "
            "come before it): send fewer bootstrap payments or more payments in all"
        )
    data = generate(
        spec,
        sizes.payments,
        drift_at=drift_at,
        seed=seed,
        drift_kind=sizes.drift_kind,
        start=start,
        days=sizes.days,
    )
    tx_source = spec.sources[binding.transactions]
    cb_source = spec.sources[binding.chargebacks]
    link = cb_source.labels
    assert tx_source.event_id is not None  # bind_fraud checked it
    assert link is not None
    # Labels may not be later than now + allowed skew; keep a margin for the demo's own run.
    latest_label = now - timedelta(minutes=1)
    chargebacks: dict[str, JsonEvent] = {}
    for event in data.sources[binding.chargebacks].events():
        chargebacks[str(event[link.event_id_field])] = dict(event)
    refs = request_field_refs(spec)
    payments: list[Payment] = []
    labels: dict[int, bool] = {}
    not_yet = 0
    for index, event in enumerate(data.sources[binding.transactions].events()):
        event_id = str(event[tx_source.event_id])
        label_event = chargebacks.get(event_id)
        label: JsonEvent | None = None
        is_fraud: bool | None = None
        if label_event is not None:
            is_fraud = bool(label_event[link.label_field])
            labels[index] = is_fraud
            if _parse_time(label_event[cb_source.event_time]) <= latest_label:
                label = label_event
            else:
                not_yet += 1
        payments.append(
            Payment(
                index=index,
                event=dict(event),
                event_id=event_id,
                entity_id=str(event[tx_source.entity]),
                event_time=_parse_time(event[tx_source.event_time]),
                request_fields={ref: event[name] for ref, name in refs.items() if name in event},
                label=label,
                is_fraud=is_fraud,
            )
        )
    return ScenarioPlan(
        payments_topic=tx_source.topic,
        labels_topic=cb_source.topic,
        model=spec.serving.model,
        payments=tuple(payments),
        sizes=sizes,
        drift_at=drift_at,
        not_yet_labelled=not_yet,
        fraud_rate_before=data.label_rate_before,
        fraud_rate_after=data.label_rate_after,
        start=start,
        end=start + timedelta(days=sizes.days),
        labels_by_index=labels,
    )


def _drift_index(
    spec: ProjectSpec, source: str, sizes: DemoSizes, start: datetime, now: datetime, seed: int
) -> int:
    """Index of the first payment at or after `now - drift_age`.

    The generator draws payment times before anything else, whatever `drift_at`
    is, so a run without drift has the same times as the real one.
    """
    undrifted = generate(
        spec, sizes.payments, drift_at=None, seed=seed, start=start, days=sizes.days
    )
    event_time = spec.sources[source].event_time
    onset = now - sizes.drift_age
    times = undrifted.sources[source].columns[event_time]
    return next((i for i, value in enumerate(times) if _parse_time(value) >= onset), sizes.payments)


def _parse_time(value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def check_first_training(plan: ScenarioPlan, spec: ProjectSpec) -> None:
    """Refuse a bootstrap whose labels cannot reach the spec's `model.min_rows`: the first
    training would fail minutes into the run, after the stack started."""
    labelled = sum(1 for p in plan.bootstrap if p.label is not None)
    if labelled < spec.model.min_rows:
        raise GenerationError(
            f"the {plan.sizes.bootstrap:,} bootstrap payments carry {labelled:,} labels known "
            f"by now (some payments are never charged back, some not yet), fewer than the "
            f"spec's model.min_rows ({spec.model.min_rows:,}), so the first training would "
            "refuse them: send more bootstrap payments"
        )
