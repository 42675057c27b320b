"""A labelled outcome's error: one definition for the trainer's holdout and the live join.

The performance channel tests the live errors against the holdout's (ADR 0031), so
both must be the same number for the same prediction and label: the trainer's
`performance_reference` and the drift service's label join both call
`outcome_error` and `outcome_group`.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from mlbus.profiles import ErrorMetric, NumericProfile, PerformanceReference, profile_column
from mlbus.seasons import HOUR_MINUTES, PhaseMinutes, Seasonality

Number = TypeVar("Number", float, np.ndarray)

ALL = "all"
POSITIVE = "positive"
NEGATIVE = "negative"


def error_metric(task: str) -> ErrorMetric:
    """The error a task's outcomes are measured with: Brier for a classifier (its score
    is a probability; a 0/1 decision error barely moves when a rare class's ranking
    collapses), absolute error for a regressor."""
    return "absolute" if task == "regression" else "brier"


def metric_groups(metric: ErrorMetric) -> tuple[str, ...]:
    """The outcome groups a metric's errors are tested in: a classifier's by their label
    (so the share of each label among the labels that arrived does not count, ADR 0031);
    a regressor's all together."""
    return (ALL,) if metric == "absolute" else (NEGATIVE, POSITIVE)


def outcome_group(metric: ErrorMetric, actual: float) -> str:
    """The group of one outcome (`actual`: a classifier's label as 0/1): its label's for a
    classifier, "all" for a regressor."""
    if metric == "absolute":
        return ALL
    return POSITIVE if actual >= 0.5 else NEGATIVE


def outcome_error(metric: ErrorMetric, actual: Number, score: Number) -> Number:
    """The error of `score` given `actual` (a classifier's label as 0/1, a regressor's
    value); element-wise on arrays."""
    gap = score - actual
    return gap * gap if metric == "brier" else abs(gap)


def performance_reference(
    metric: ErrorMetric,
    actual: np.ndarray,
    scores: np.ndarray,
    seconds: np.ndarray,
    seasonality: Seasonality,
    bins: int,
    phase_minutes: PhaseMinutes = HOUR_MINUTES,
) -> PerformanceReference:
    """The holdout's errors by outcome group, each profiled with its event times (so its
    κ is measured in time order; `seconds` are clock seconds, `seasons.local_clock`): what
    the trainer ships in the profile."""
    errors = outcome_error(metric, actual, scores)
    groups = np.asarray([outcome_group(metric, float(a)) for a in actual])
    profiles: dict[str, NumericProfile] = {}
    for group in metric_groups(metric):
        rows = groups == group
        if rows.any():
            column = profile_column(
                errors[rows], bins, seconds[rows], seasonality, phase_minutes=phase_minutes
            )
            assert isinstance(column, NumericProfile)  # errors are floats
            profiles[group] = column
    return PerformanceReference(metric=metric, errors=profiles)
