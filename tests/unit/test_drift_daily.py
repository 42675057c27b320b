"""A daily cycle is not drift: ADWIN looks for changes beyond the reference's cycle.

Streams with a stationary daily cycle (the level of a feature follows the hour of
day, as payments do) made ADWIN cut within a day. The reference profile learns
each numeric feature's mean CDF position per UTC hour (`daily_pit`); the monitor
takes it out of every value before ADWIN sees it. Streams generated here, seeded
apart from the reference's; the cycle's shape is not the one of any example.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from mlbus.driftstats import DriftMonitor
from mlbus.profiles import NumericProfile, ReferenceProfile
from mlbus.spec import DriftSpec

T0 = datetime(2026, 11, 2, tzinfo=UTC)
STEP = timedelta(seconds=40)  # 2,160 events a day
DAY = 2_160
FEATURE = "tx.amount"
# Windows that never fill: only ADWIN can detect here.
SPEC = DriftSpec(window_size=10**6, min_samples=10, prediction_drift=False)


def seasonal(rng: np.random.Generator, start: int, n: int, *, shift: float = 0.0) -> list[float]:
    """Log-amounts whose level follows the hour of day, plus a slower second harmonic."""
    hours = ((np.arange(start, start + n) * STEP.total_seconds()) / 3600) % 24
    level = 3.0 + 0.8 * np.sin(2 * np.pi * hours / 24) + 0.3 * np.cos(4 * np.pi * hours / 24)
    return rng.lognormal(level + shift, 0.6).tolist()


def profile_of(values: list[float], *, daily: bool) -> ReferenceProfile:
    profile = ReferenceProfile.from_samples({FEATURE: values})
    if not daily:
        return profile
    column = profile.features[FEATURE]
    assert isinstance(column, NumericProfile)
    times = [int((T0 + i * STEP).timestamp() * 1000) for i in range(len(values))]
    cycled = column.with_daily_cycle(values, times)
    assert cycled.daily_pit is not None
    return profile.model_copy(update={"features": {FEATURE: cycled}})


def detections(profile: ReferenceProfile, values: list[float], start: int) -> list[int]:
    """Stream positions (from `start`) of the windows that ended in a detection."""
    monitor = DriftMonitor("m", 1, profile, SPEC, {FEATURE: "numeric"}, {FEATURE: ("ks",)})
    rows: list[dict[str, Any]] = [{FEATURE: v} for v in values]
    verdicts = monitor.observe_many(
        rows,
        None,
        at=[T0 + (start + i) * STEP for i in range(len(values))],
        source="s:0",
        offsets=list(range(start, start + len(values))),
    )
    return [v.offsets["s:0"][1] for v in verdicts if v.detection]


@pytest.fixture(scope="module")
def reference() -> list[float]:
    return seasonal(np.random.default_rng(101), 0, 4 * DAY)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_stationary_daily_cycle_raises_nothing_once_the_reference_knows_it(
    reference: list[float], seed: int
) -> None:
    live = seasonal(np.random.default_rng(seed), 4 * DAY, 4 * DAY)
    assert detections(profile_of(reference, daily=True), live, 4 * DAY) == []


def test_without_the_cycle_adwin_mistakes_the_hours_for_drift(reference: list[float]) -> None:
    """The control: the same stream against a profile without `daily_pit` alarms."""
    live = seasonal(np.random.default_rng(1), 4 * DAY, 4 * DAY)
    assert detections(profile_of(reference, daily=False), live, 4 * DAY)


def test_a_shift_beyond_the_cycle_is_still_caught_within_hours(reference: list[float]) -> None:
    rng = np.random.default_rng(4)
    before = seasonal(rng, 4 * DAY, 2 * DAY)
    after = seasonal(rng, 6 * DAY, DAY, shift=0.5)
    found = detections(profile_of(reference, daily=True), before + after, 4 * DAY)
    assert found, "a shift of the level by 0.5 (log scale) went unseen"
    assert 6 * DAY <= found[0] < 6 * DAY + DAY // 4  # after the shift, within six hours


def test_the_cycle_is_learned_only_from_two_days_or_more(reference: list[float]) -> None:
    column = ReferenceProfile.from_samples({FEATURE: reference}).features[FEATURE]
    assert isinstance(column, NumericProfile)
    day_and_a_half = DAY * 3 // 2
    times = [int((T0 + i * STEP).timestamp() * 1000) for i in range(day_and_a_half)]
    assert column.with_daily_cycle(reference[:day_and_a_half], times).daily_pit is None
