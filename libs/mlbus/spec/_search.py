"""`model.search`: a hyperparameter search inside a budget (issue #23, ADR 0023).

    search:
      trials: 20                 # at most this many trials
      timeout_s: 10m             # and no new trial after this long
      seed: 7                    # TPE's seed: the same data and seed, the same trials
      metric: auc                # default: model.metric
      validation_fraction: 0.2   # the latest share of the training part (never the holdout)
      space:
        learning_rate: {type: float, low: 0.01, high: 0.3, log: true}
        max_leaf_nodes: {type: int, low: 8, high: 128, log: true}
        class_weight: {type: categorical, choices: [balanced, null]}

A parameter in `space` overrides the same key of `model.params`; the other
params stay fixed in every trial. Without `search` a run fits `model.params`
exactly as before.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from pydantic import Field, model_validator

from mlbus.spec._base import Identifier, ProblemList, SpecModel
from mlbus.spec._durations import PositiveSeconds

ParamKind: TypeAlias = Literal["int", "float", "categorical"]
Choice: TypeAlias = bool | int | float | str | None
Sampler: TypeAlias = Literal["tpe", "random"]


class ParamSpace(SpecModel):
    """The values one estimator parameter may take in the search.

    `int` and `float` need `low` < `high`; `log: true` samples on a log scale
    (then `low` > 0); `step` spaces an int's values (not with `log`).
    `categorical` needs `choices` (numbers, strings, booleans or null).
    """

    type: ParamKind
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = Field(default=None, ge=1)
    choices: tuple[Choice, ...] | None = None

    @model_validator(mode="after")
    def _fits_its_type(self) -> ParamSpace:
        problems = ProblemList()
        if self.type == "categorical":
            if not self.choices:
                problems.add(("choices",), "expected at least one choice for a categorical")
            elif len(set(map(repr, self.choices))) != len(self.choices):
                problems.add(("choices",), "expected distinct choices")
            for name in ("low", "high", "step"):
                if getattr(self, name) is not None:
                    problems.add((name,), "expected only on int or float parameters")
            if self.log:
                problems.add(("log",), "expected only on int or float parameters")
        else:
            if self.choices is not None:
                problems.add(("choices",), f"expected only on categorical, got it on {self.type}")
            if self.low is None:
                problems.add(("low",), "required field is missing")
            if self.high is None:
                problems.add(("high",), "required field is missing")
            if self.low is not None and self.high is not None:
                if not self.low < self.high:
                    problems.add(("high",), f"expected a value > low ({self.low}), got {self.high}")
                if self.log and self.low <= 0:
                    problems.add(("low",), f"expected a value > 0 with log: true, got {self.low}")
                if self.type == "int":
                    for name in ("low", "high"):
                        value = getattr(self, name)
                        if not float(value).is_integer():
                            problems.add((name,), f"expected a whole number, got {value}")
            if self.step is not None and self.type == "float":
                problems.add(("step",), "expected only on int parameters")
            if self.step is not None and self.log:
                problems.add(("step",), "expected either step or log: true, not both")
        problems.raise_if_any()
        return self


class SearchSpec(SpecModel):
    """How to search `model.params`: budget, space, metric, seed (see the module doc)."""

    trials: int = Field(ge=1, le=10_000)
    timeout_s: PositiveSeconds = 3600
    seed: int = Field(default=0, ge=0)
    metric: Literal["auc", "log_loss", "f1", "rmse", "mae"] | None = None
    sampler: Sampler = "tpe"
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    space: dict[Identifier, ParamSpace] = Field(min_length=1)
