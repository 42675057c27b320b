"""The `model` section: what the trainer builds, how it is measured, and the promotion gates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeAlias

from pydantic import Field, JsonValue, model_validator

from mlbus.spec._base import Identifier, ProblemList, SpecModel, one_of
from mlbus.spec._durations import PositiveSeconds
from mlbus.spec._search import SearchSpec

Task: TypeAlias = Literal["classification", "regression"]
Estimator: TypeAlias = Literal["hist_gradient_boosting", "logistic_regression", "random_forest"]
Metric: TypeAlias = Literal["auc", "log_loss", "f1", "rmse", "mae"]

HIGHER_IS_BETTER: dict[str, bool] = {
    "auc": True,
    "f1": True,
    "log_loss": False,
    "rmse": False,
    "mae": False,
}
TASK_METRICS: dict[str, frozenset[str]] = {
    "classification": frozenset({"auc", "log_loss", "f1"}),
    "regression": frozenset({"rmse", "mae"}),
}
LABEL_TYPES: dict[str, frozenset[str]] = {
    "classification": frozenset({"bool", "int", "enum", "string"}),
    "regression": frozenset({"int", "float"}),
}


def metric_gain(metric: str, candidate: float, champion: float) -> float:
    """How much better `candidate` is than `champion` on `metric` (negative: worse)."""
    return candidate - champion if HIGHER_IS_BETTER[metric] else champion - candidate


class LabelRef(SpecModel):
    """The training target: a field of a source (usually a labels source)."""

    source: str
    field: str


class Gates(SpecModel):
    """What a new model must reach before it is promoted.

    `min_improvement`: gain over the champion on the model's metric, measured on
    the same recent window. `minimums`: a floor per metric, read as "at least"
    for auc/f1 and "at most" for log_loss/rmse/mae. `promote_to`: the alias a
    version that passes takes when the model has a champion — `champion` (it
    replaces the champion at once) or `canary` (it serves `serving.canary_weight`
    of the entities until an experiment, `outcomes.experiments`, decides). The
    first version to pass always becomes champion: there is nothing to compare.
    """

    min_improvement: float = 0.0
    minimums: dict[Metric, float] = Field(default_factory=dict)
    promote_to: Literal["champion", "canary"] = "champion"


class ModelSpec(SpecModel):
    """The model the trainer builds and the registry versions.

    `features` lists `view.feature` refs or whole views (`view`). `threshold` is
    the decision threshold of a classifier. `evaluation_window_s`: candidate and
    champion are compared on the most recent window this long.
    """

    name: Identifier
    task: Task
    label: LabelRef
    features: tuple[str, ...] = Field(min_length=1)
    estimator: Estimator = "hist_gradient_boosting"
    params: dict[str, JsonValue] = Field(default_factory=dict)
    metric: Metric
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    evaluation_window_s: PositiveSeconds = 86_400
    gates: Gates = Field(default_factory=Gates)
    schedule_every_min: int | None = Field(default=None, ge=1)
    min_rows: int = Field(default=1000, ge=1)
    search: SearchSpec | None = None
    """A hyperparameter search over `params` (ADR 0023); None: fit `params` as they are."""

    @property
    def search_metric(self) -> str:
        """The metric the search optimises: `search.metric`, else `metric`."""
        if self.search is not None and self.search.metric is not None:
            return self.search.metric
        return self.metric

    @model_validator(mode="after")
    def _metrics_fit_task(self) -> ModelSpec:
        problems = ProblemList()
        allowed = TASK_METRICS[self.task]
        if self.metric not in allowed:
            problems.add(
                ("metric",),
                f"expected a {self.task} metric ({one_of(allowed)}), got {self.metric!r}",
            )
        for metric in self.gates.minimums:
            if metric not in allowed:
                problems.add(
                    ("gates", "minimums", metric),
                    f"expected a {self.task} metric ({one_of(allowed)}), got {metric!r}",
                )
        if self.search is not None and self.search.metric not in (None, *allowed):
            problems.add(
                ("search", "metric"),
                f"expected a {self.task} metric ({one_of(allowed)}), got {self.search.metric!r}",
            )
        problems.raise_if_any()
        return self

    def gate_failures(
        self, candidate: Mapping[str, float], champion: Mapping[str, float] | None = None
    ) -> list[str]:
        """Why `candidate` may not be promoted over `champion` (empty: it may)."""
        reasons: list[str] = []
        for metric, bound in self.gates.minimums.items():
            value = candidate.get(metric)
            if value is None:
                reasons.append(f"{metric} was not measured")
            elif metric_gain(metric, value, bound) < 0:
                side = "at least" if HIGHER_IS_BETTER[metric] else "at most"
                reasons.append(f"{metric} {value:.4f} is not {side} {bound}")
        if champion is not None and self.metric in champion:
            if self.metric not in candidate:
                reasons.append(f"{self.metric} was not measured")
            else:
                gain = metric_gain(self.metric, candidate[self.metric], champion[self.metric])
                if gain < self.gates.min_improvement:
                    reasons.append(
                        f"{self.metric} gain {gain:+.4f} over the champion is below "
                        f"min_improvement {self.gates.min_improvement}"
                    )
        return reasons
