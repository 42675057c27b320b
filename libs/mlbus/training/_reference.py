"""The drift reference a trained model ships with, and its calibration (ADR 0020, ADR 0022).

- Features are profiled on the most recent stretch of the training period, the
  stretch closest to what will be served: the holdout, widened to two cycles
  (days for `daily`, weeks for `weekly`) when the reference is seasonal, so each
  hour of the cycle has reference rows. Rows carry their event times: the profile
  keys its counts by phase and measures the dependence of consecutive values.
- The prediction is profiled on the holdout, which the model has not seen: on its
  own training rows a fitted model is over-confident.
- The holdout's errors (its labels against its scores, `outcome_error`) are the
  baseline the live outcomes' errors are tested against (ADR 0031).
- Calibration replays the holdout, in time order, through a monitor whose features
  reference is the stretch before it (or, when there is none, the holdout's first
  half against its second): the deployment in miniature. The prediction is not
  replayed: no scores outside the holdout exist to be its reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from mlbus.driftstats import calibrate, error_metric, performance_reference
from mlbus.profiles import (
    Calibration,
    ReferenceProfile,
    choose_profile_seasonality,
    profile_column,
)
from mlbus.season_choice import MIN_CYCLES
from mlbus.seasons import CYCLE_S, PhaseMinutes, Seasonality, local_clock
from mlbus.spec import ProjectSpec


def reference_profile(
    spec: ProjectSpec,
    raw: dict[str, list[Any]],
    times_ms: np.ndarray,
    holdout: np.ndarray,
    holdout_scores: np.ndarray,
    entities: Sequence[str] | None = None,
    holdout_labels: np.ndarray | None = None,
    task: str = "classification",
) -> ReferenceProfile:
    """The profile to register: features on the recent stretch, prediction and errors on
    the holdout, calibrated (see the module docstring). `times_ms` are ascending, one per
    row; `holdout_labels` (a classifier's as 0/1) give the errors, none leaves them out."""
    seconds = times_ms.astype(np.float64) / 1000
    timezone = spec.drift.timezone
    clock = local_clock(seconds, timezone)  # what the phases are hours of (ADR 0032)
    season = choose_profile_seasonality(spec.drift.seasonality, clock, raw)
    first_holdout = int(holdout[0]) if len(holdout) else len(seconds)
    stretch_start = _stretch_start(seconds, first_holdout, CYCLE_S[season])
    stretch = np.arange(stretch_start, len(seconds))
    features = ReferenceProfile.from_samples(
        {ref: [values[i] for i in stretch] for ref, values in raw.items()},
        times=seconds[stretch],
        seasonality=season,
        entities=None if entities is None else [entities[int(i)] for i in stretch],
        timezone=timezone,
        phase_minutes=spec.drift.phase_minutes,
    )
    minutes = features.phase_minutes  # what the stretch shows: every column keeps it
    prediction = profile_column(
        np.asarray(holdout_scores),
        features.bins,
        clock[holdout],
        season,
        None if entities is None else [entities[int(i)] for i in holdout],
        minutes,
    )
    performance = None
    if holdout_labels is not None and len(holdout):
        performance = performance_reference(
            error_metric(task),
            np.asarray(holdout_labels, dtype=np.float64),
            np.asarray(holdout_scores, dtype=np.float64),
            clock[holdout],
            season,
            features.bins,
            minutes,
        )
    calibration = _calibration(spec, raw, seconds, stretch_start, first_holdout, season, minutes)
    return features.model_copy(
        update={"prediction": prediction, "calibration": calibration, "performance": performance}
    )


def _stretch_start(seconds: np.ndarray, first_holdout: int, cycle_s: float) -> int:
    """The first row of the profiled stretch: the holdout's, or two cycles before the end."""
    if not np.isfinite(cycle_s) or len(seconds) == 0:
        return first_holdout
    start = seconds[-1] - MIN_CYCLES * cycle_s
    return min(first_holdout, int(np.searchsorted(seconds, start, side="left")))


def _calibration(
    spec: ProjectSpec,
    raw: dict[str, list[Any]],
    seconds: np.ndarray,
    stretch_start: int,
    first_holdout: int,
    season: Seasonality,
    minutes: PhaseMinutes,
) -> Calibration | None:
    n = len(seconds)
    if first_holdout - stretch_start >= spec.drift.min_samples:
        reference, replay = np.arange(stretch_start, first_holdout), np.arange(first_holdout, n)
    else:  # no stretch before the holdout: its first half against its second
        middle = (first_holdout + n) // 2
        reference, replay = np.arange(first_holdout, middle), np.arange(middle, n)
    if len(reference) < spec.drift.min_samples or len(replay) == 0:
        return None
    profile = ReferenceProfile.from_samples(
        {ref: [values[i] for i in reference] for ref, values in raw.items()},
        times=seconds[reference],
        seasonality=season,
        timezone=spec.drift.timezone,
        phase_minutes=minutes,
    )
    watched = [f for f in spec.model_features() if f.kind in ("numeric", "categorical")]
    drift = spec.drift.model_copy(update={"prediction_drift": False, "performance_drift": False})
    rows = [{f.ref: raw[f.ref][i] for f in watched} for i in replay]
    return calibrate(
        profile,
        drift,
        {f.ref: f.kind for f in watched},
        {f.ref: drift.tests_for(f) for f in watched},
        rows,
        [datetime.fromtimestamp(float(seconds[i]), UTC) for i in replay],
    )
