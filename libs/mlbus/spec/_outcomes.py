"""The `outcomes` section: labelled outcomes per model version, experiments, labeling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlbus.spec._base import SpecModel
from mlbus.spec._durations import PositiveSeconds


class ExperimentSpec(SpecModel):
    """How champion and challenger (canary or shadow) are compared (ADR 0024).

    The verdict comes from an mSPRT on the model's metric (AUC for f1), with an
    always-valid p-value compared with `alpha` at every look. Each arm needs
    `min_samples` labelled outcomes (classification: `min_class_count` of each
    class too) before a first look. `effect_scale` is the mixture's τ: the size
    of a difference worth finding on the tested metric (None: 0.02 for AUC and
    log-loss, else 5% of the champion's value at the first look). `on_better`:
    promote the challenger to champion through the spec's gates (`model.gates`,
    on the experiment's outcomes), or only report; `on_worse`: roll the canary
    back (a shadow is only reported), or only report.
    """

    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    min_samples: int = Field(default=500, ge=10)
    min_class_count: int = Field(default=50, ge=2)
    effect_scale: float | None = Field(default=None, gt=0.0)
    on_better: Literal["promote", "report"] = "report"
    on_worse: Literal["rollback", "report"] = "report"


class LabelingSpec(SpecModel):
    """Which predictions ask a person for a label (`mlbus.labeling.requested.v1`).

    `band`: a champion score within this distance of `model.threshold`
    (classification); `disagreement`: champion and shadow scores of one event at
    least this far apart; `sample_rate`: a share of events chosen by a hash of their
    id (an unbiased sample for evaluation). At most `max_open` requests wait (the
    lowest priority goes first); one waits at most `expire_s`.
    """

    band: float | None = Field(default=0.1, gt=0.0, le=0.5)
    disagreement: float | None = Field(default=0.3, gt=0.0)
    sample_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    max_open: int = Field(default=10_000, ge=1)
    expire_s: PositiveSeconds = 7 * 86_400


class OutcomesSpec(SpecModel):
    """Labelled outcomes per (model, version, alias): sliding `windows`, experiments, and
    the labeling queue (off unless `labeling` is given)."""

    windows: tuple[PositiveSeconds, ...] = Field(default=(3600, 86_400), min_length=1)
    experiments: ExperimentSpec = Field(default_factory=ExperimentSpec)
    labeling: LabelingSpec | None = None
