"""The `drift` section: which tests the drift detector runs, on what windows, and what a
detection triggers."""

from __future__ import annotations

from typing import Literal, TypeAlias

from pydantic import Field, field_validator, model_validator

from mlbus.seasons import check_timezone
from mlbus.spec._base import ProblemList, SpecModel
from mlbus.spec._durations import Seconds
from mlbus.spec._features import FeatureDef

DriftTest: TypeAlias = Literal["psi", "ks", "chi2", "jensen_shannon"]
NumericDriftTest: TypeAlias = Literal["psi", "ks"]
CategoricalDriftTest: TypeAlias = Literal["psi", "chi2", "jensen_shannon"]
Correction: TypeAlias = Literal["none", "bonferroni", "benjamini-hochberg"]


class DriftTests(SpecModel):
    """Default tests by feature kind."""

    numeric: tuple[NumericDriftTest, ...] = ("psi", "ks")
    categorical: tuple[CategoricalDriftTest, ...] = ("chi2",)


class DriftSpec(SpecModel):
    """How the drift detector compares live windows with the model's reference.

    `features` overrides the default tests per `view.feature` ([] skips one).
    `alpha` is the p-value level of ks/chi2 after `correction`; `psi_threshold`
    and `jensen_shannon_threshold` bound the distances. A detection needs
    `persistence` consecutive drifted windows; then `trigger` fires, at most
    once per `cooldown_s` and `max_retrains_per_hour`. `seasonality` is the cycle
    the reference is keyed by (hour of day or of week, ADR 0022); `auto` takes the
    longest one the training window covers twice. `timezone` is the wall clock whose
    hours those are (an IANA name, ADR 0032): a rhythm people keep in local time moves
    an hour against UTC at each daylight-saving change, and its phases with it.
    `phase_minutes` is the phases' width: `auto` takes the hour, or its half or quarter
    when the training window shows structure inside the hour (a shop that opens at
    09:30, ADR 0033).
    """

    tests: DriftTests = Field(default_factory=DriftTests)
    features: dict[str, tuple[DriftTest, ...]] = Field(default_factory=dict)
    window_size: int = Field(default=1000, ge=10)
    min_samples: int = Field(default=200, ge=10)
    psi_threshold: float = Field(default=0.2, gt=0.0)
    jensen_shannon_threshold: float = Field(default=0.1, gt=0.0, le=1.0)
    alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    correction: Correction = "benjamini-hochberg"
    persistence: int = Field(default=2, ge=1)
    cooldown_s: Seconds = 3600
    max_retrains_per_hour: int = Field(default=2, ge=0)
    trigger: Literal["retrain", "alert"] = "retrain"
    prediction_drift: bool = True
    performance_drift: bool = True
    adwin_delta: float = Field(default=0.002, gt=0.0, lt=1.0)
    seasonality: Literal["auto", "none", "daily", "weekly"] = "auto"
    timezone: str = "UTC"
    phase_minutes: Literal["auto", 60, 30, 15] = "auto"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @model_validator(mode="after")
    def _window_holds_samples(self) -> DriftSpec:
        if self.min_samples > self.window_size:
            problems = ProblemList()
            problems.add(
                ("min_samples",),
                f"expected min_samples <= window_size ({self.window_size}), got {self.min_samples}",
            )
            problems.raise_if_any()
        return self

    def tests_for(self, feature: FeatureDef) -> tuple[DriftTest, ...]:
        """The tests run on `feature`: its override, else the default for its kind."""
        if feature.ref in self.features:
            return self.features[feature.ref]
        if feature.kind == "numeric":
            return self.tests.numeric
        if feature.kind == "categorical":
            return self.tests.categorical
        return ()
