"""Seasonal references and dependent data (ADR 0022): a cycle or a correlation is not drift,
a change still is."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from pydantic import ValidationError

from mlbus.driftstats import DriftMonitor, calibrate
from mlbus.driftstats._entities import SKETCH_SIZE, EntitySketch, design_effect
from mlbus.driftstats._rate import LiveRate
from mlbus.profiles import SHARES_APART_CYCLES, ReferenceProfile, profile_column
from mlbus.season_choice import choose_seasonality
from mlbus.seasons import (
    _zone_year,
    check_timezone,
    dependence,
    known_phases,
    local_clock,
    local_clock_one,
    other_cycles_share,
    phase_of,
    phases_of,
    reference_rows_until,
)
from mlbus.spec import DriftSpec

DAY = 86_400.0
T0 = datetime(2026, 1, 5, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC
DIURNAL = np.array([1, 1, 1, 1, 1, 2, 4, 6, 8, 9, 9, 10, 10, 9, 9, 9, 10, 10, 9, 8, 6, 4, 2, 1.0])
SPEC = DriftSpec(
    window_size=1000,
    min_samples=100,
    persistence=2,
    alpha=0.01,
    prediction_drift=False,
    performance_drift=False,
)


def daily_stream(
    rng: np.random.Generator,
    days: int,
    start: float,
    per_day: int = 2500,
    weekend_lift: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Amounts whose level follows the hour, with ten times the traffic by day (and
    `weekend_lift` more on Saturdays and Sundays); and a category whose share follows
    the hour too. Sorted by time."""
    n = days * per_day
    hour = rng.choice(24, size=n, p=DIURNAL / DIURNAL.sum())
    seconds = np.sort(
        start + rng.integers(0, days, n) * DAY + hour * 3600 + rng.uniform(0, 3600, n)
    )
    level = np.sin(2 * np.pi * (((seconds // 3600) % 24) - 8) / 24)
    weekend = ((seconds - T0) // DAY) % 7 >= 5
    amounts = rng.lognormal(3 + 0.6 * level + weekend_lift * weekend, 1.0)
    online = np.where(rng.random(n) < 0.3 + 0.2 * level, "online", "pos")
    return seconds, amounts, online


def sampled(rng: np.random.Generator, share: float, *columns: np.ndarray) -> list[np.ndarray]:
    """A random `share` of the rows, in time order (all of them, drawing nothing, at 1)."""
    if share >= 1.0:
        return list(columns)
    keep = np.sort(rng.choice(len(columns[0]), int(len(columns[0]) * share), replace=False))
    return [column[keep] for column in columns]


def ar1(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    noise = rng.normal(size=n) * np.sqrt(1 - rho * rho)
    values = np.empty(n)
    values[0] = rng.normal()
    for i in range(1, n):
        values[i] = rho * values[i - 1] + noise[i]
    return values


def detections(
    profile: ReferenceProfile, columns: dict[str, np.ndarray], seconds: np.ndarray
) -> list[int]:
    kinds = {
        name: "numeric" if v.dtype.kind == "f" else "categorical" for name, v in columns.items()
    }
    tests = {name: ("psi", "ks") if k == "numeric" else ("chi2",) for name, k in kinds.items()}
    monitor = DriftMonitor("m", 1, profile, SPEC, kinds, tests)
    names = list(columns)
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    verdicts = monitor.observe_many(
        rows,
        None,
        at=[datetime.fromtimestamp(s, UTC) for s in seconds],
        source="s",
        offsets=range(len(rows)),
    )
    return [v.offsets["s"][1] for v in verdicts if v.detection]


def test_phases_are_utc_hours_of_the_day_or_of_the_week_from_monday() -> None:
    assert phase_of(T0, "weekly") == 0
    assert phase_of(T0 + 3 * DAY + 5 * 3600 + 59, "weekly") == 3 * 24 + 5
    assert phase_of(T0 + 7 * DAY + 3600, "daily") == 1
    assert phase_of(T0 + 1234, "none") == 0
    seconds = T0 + np.arange(0, 14 * DAY, 1800.0)
    assert phases_of(seconds, "weekly").tolist() == [phase_of(s, "weekly") for s in seconds]


def test_auto_takes_the_longest_cycle_the_reference_covers_twice() -> None:
    assert choose_seasonality("auto", T0 + np.array([0, 1.9 * DAY])) == "none"
    assert choose_seasonality("auto", T0 + np.array([0, 2 * DAY])) == "daily"
    assert choose_seasonality("auto", T0 + np.array([0, 14 * DAY])) == "weekly"
    # two weeks of events, the first after Monday 00:00 and the last before the next
    # Monday: they fall in 336 hours, two weeks' worth, though they span a bit less
    assert choose_seasonality("auto", T0 + np.array([600, 14 * DAY - 600])) == "weekly"
    assert choose_seasonality("auto", T0 + np.array([600, 14 * DAY - 4000])) == "daily"
    assert choose_seasonality("auto", None) == "none"
    assert choose_seasonality("daily", T0 + np.array([0, 3600.0])) == "daily"
    with pytest.raises(ValueError, match="needs the reference's event times"):
        choose_seasonality("weekly", None)


def test_reference_rows_until_counts_each_hour_by_its_phase() -> None:
    weekly = np.arange(168, dtype=np.float64) + 1  # phase h (Monday 00:00 is 0) has h + 1 rows

    def between(start: float, end: float, rows: np.ndarray, cycle: str) -> float:
        until = reference_rows_until(np.asarray([end, start]), rows, cycle)  # type: ignore[arg-type]
        return float(until[0] - until[1])

    assert between(T0, T0 + 3600, weekly, "weekly") == 1
    assert between(T0 + 3600, T0 + 3 * 3600, weekly, "weekly") == 2 + 3
    assert between(T0 + 1800, T0 + 3600 + 900, weekly, "weekly") == 0.5 + 0.25 * 2
    week = float(weekly.sum())
    assert between(T0 + 5 * DAY, T0 + 19 * DAY, weekly, "weekly") == 2 * week
    daily = np.full(24, 10.0)
    assert between(T0 + 7200, T0 + 7200 + 3 * DAY, daily, "daily") == 3 * 240


@pytest.mark.parametrize("live_per_day", [2500, 25_000])
def test_the_live_rate_is_live_rows_per_cycle_over_the_reference_rows(live_per_day: int) -> None:
    rng = np.random.default_rng(8)
    ref_t, _, _ = daily_stream(rng, 7, T0)  # 2,500 rows a day: 17,500 over 7 cycles
    phase_rows = np.bincount(phases_of(ref_t, "daily"), minlength=24)
    rate = LiveRate(phase_rows, "daily", cycles=7.0, minutes=60)
    assert rate.rate == 1 / 7  # before any live row: the reference's own density
    prior = len(ref_t) / 24  # one average hour's reference rows at that density

    live_t, _, _ = daily_stream(rng, 3, T0 + 7 * DAY, per_day=live_per_day)
    # an afternoon's rows are weighed against the reference's rows of those hours
    start = T0 + 7 * DAY + 13 * 3600
    afternoon = live_t[(live_t >= start) & (live_t < start + 4 * 3600)]
    of_those_hours = np.isin(phases_of(ref_t, "daily"), [13, 14, 15, 16]).sum()
    asked = np.concatenate(([start], afternoon, [start + 4 * 3600]))
    inflation = rate.inflations(asked, phases_of(asked, "daily"))
    assert rate.rows == 0  # inflations() counts nothing
    average = (len(afternoon) + 2 + prior / 7) / (of_those_hours + prior)
    # the last row opens 17:00: its own phase's ρ, the average (its prior) and one row
    # over that hour's reference rows, is the larger
    at_five = np.count_nonzero(phases_of(ref_t, "daily") == 17) + 1
    assert inflation[-1] - 1 == pytest.approx(average + 1 / at_five)
    rate.count(live_t, phases_of(live_t, "daily"))
    assert rate.rate == pytest.approx(live_per_day / len(ref_t), rel=0.03)


def test_an_hour_denser_live_than_the_average_says_is_inflated_by_its_own_rate() -> None:
    phase_rows = np.full(24, 100.0)  # the reference: 100 rows an hour over 2 days
    rate = LiveRate(phase_rows, "daily", cycles=2.0, minutes=60)
    start = T0 + 7 * DAY
    # two live days: 50 rows an hour, but 200 at 18:00
    hours = np.arange(48)
    per_hour = np.where(hours % 24 == 18, 200, 50)
    stamps = np.concatenate(
        [start + h * 3600 + np.linspace(0, 3599, n) for h, n in zip(hours, per_hour, strict=True)]
    )
    rate.count(stamps, phases_of(stamps, "daily"))
    assert rate.rate == pytest.approx(len(stamps) / (48 * 100.0 + 100) + 0.5 / 49, rel=0.01)
    # rows inside the hours counted: the average stands (one row more)
    morning, evening = start + DAY + 9.5 * 3600, start + DAY + 18.5 * 3600
    asked = np.asarray([morning, evening])
    inflation = rate.inflations(asked, phases_of(asked, "daily"))
    average = (len(stamps) + 1 + 0.5 * 100) / (48 * 100 + 100)
    assert inflation[0] - 1 == pytest.approx(average, rel=0.01)  # its own is lower
    # 18:00's own: 400 rows (and this one) in 2 passes, a prior pass at the average, of
    # 100 rows (and the phase's prior row)
    assert inflation[1] - 1 == pytest.approx((401 + average * 101) / (3 * 101), rel=0.01)
    assert rate.phase_live.sum() == len(stamps)
    assert rate.phase_live[18] == 400


@pytest.mark.parametrize("seed", [37, 68])
def test_a_live_rhythm_off_the_reference_s_does_not_alarm(seed: int) -> None:
    """The reference's traffic rhythm 0.6 h off the live one's: with one ρ averaged over
    the hours, 6 of 40 such streams alarmed (seeds 31-70, these among them); with each
    hour's own, 1."""
    rng = np.random.default_rng(seed)
    ref_t, ref_x, _ = daily_stream(rng, 3, T0 - 0.6 * DAY)
    live_t, live_x, _ = daily_stream(rng, 4, T0 + 3 * DAY)
    profile = ReferenceProfile.from_samples({"x": ref_x}, times=ref_t)
    assert detections(profile, {"x": live_x}, live_t) == []


def test_a_state_saved_before_rows_per_phase_spreads_its_rows_as_the_average() -> None:
    rng = np.random.default_rng(9)
    ref_t, ref_x, _ = daily_stream(rng, 3, T0)
    live_t, live_x, _ = daily_stream(rng, 1, T0 + 3 * DAY)
    profile = ReferenceProfile.from_samples({"x": ref_x}, times=ref_t)
    monitor = DriftMonitor("m", 1, profile, SPEC, {"x": "numeric"}, {"x": ("psi", "ks")})
    monitor.observe_columns(
        {"x": live_x.tolist()},
        None,
        n=len(live_t),
        stamps=live_t,
        source="s",
        offsets=range(len(live_t)),
    )
    old = monitor.snapshot().model_copy(update={"live_phase_rows": ()})
    again = DriftMonitor.restore(old, profile, SPEC, {"x": "numeric"}, {"x": ("psi", "ks")})
    spread = np.asarray(again.snapshot().live_phase_rows)
    assert spread.sum() == pytest.approx(len(live_t))
    assert again.status().live_rate == monitor.status().live_rate


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("share", [1.0, 0.3])
def test_auto_takes_a_cycle_covered_once_when_the_reference_shows_it(
    seed: int, share: float
) -> None:
    rng = np.random.default_rng(40 + seed)
    week = sampled(rng, share, *daily_stream(rng, 7, T0, weekend_lift=0.4))
    merely_daily = sampled(rng, share, *daily_stream(rng, 7, T0))
    one_day = sampled(rng, share, *daily_stream(rng, 1, T0))
    flat_day_t = np.sort(T0 + rng.uniform(0, DAY, len(one_day[0])))
    flat_day = (flat_day_t, rng.lognormal(3, 1, len(flat_day_t)))

    def chosen(stream: tuple[np.ndarray, ...]) -> str:
        profile = ReferenceProfile.from_samples({"x": stream[1]}, times=stream[0])
        return profile.seasonality

    assert chosen(week) == "weekly"
    assert chosen(merely_daily) == "daily"
    assert chosen(one_day) == "daily"
    assert chosen(flat_day) == "none"
    explicit = ReferenceProfile.from_samples({"x": week[1]}, times=week[0], seasonality="daily")
    assert explicit.seasonality == "daily"


def test_one_week_of_a_weekly_rhythm_is_modelled_not_taken_for_dependence() -> None:
    rng = np.random.default_rng(12)
    ref_t, ref_x, _ = daily_stream(rng, 7, T0, weekend_lift=0.4)
    live_t, live_x, _ = daily_stream(rng, 14, T0 + 7 * DAY, weekend_lift=0.4)
    weekly = ReferenceProfile.from_samples({"x": ref_x}, times=ref_t)
    assert weekly.seasonality == "weekly"
    assert weekly.features["x"].dependence == 1.0
    # By the hour of the day alone, the weekends read as a dependence so strong that a
    # shift of 60 % goes unseen
    daily = ReferenceProfile.from_samples({"x": ref_x}, times=ref_t, seasonality="daily")
    assert daily.features["x"].dependence > 50
    assert detections(weekly, {"x": live_x}, live_t) == []
    change = int(np.searchsorted(live_t, T0 + 16 * DAY))  # a Wednesday
    live_x[change:] *= 1.6
    found = detections(weekly, {"x": live_x}, live_t)
    assert found
    assert change <= found[0] < change + 2500  # within a day's traffic
    assert not any(change <= at < change + 2500 for at in detections(daily, {"x": live_x}, live_t))


def test_a_share_that_follows_the_hour_is_the_cycle_not_dependence() -> None:
    """Online payments and missing amounts by night: their indicators follow the hour,
    which the phases model. Read raw, they made κ 46 (the category) and 122 (the
    amounts, by their missing indicator), and a 10-point rise of the online share went
    unseen for the rest of the stream (5,000 payments)."""
    rng = np.random.default_rng(21)

    def by_night(seconds: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        night = np.cos(2 * np.pi * (((seconds // 3600) % 24) - 3) / 24) > 0
        amounts = amounts.copy()
        amounts[rng.random(len(amounts)) < np.where(night, 0.25, 0.02)] = np.nan
        return amounts

    ref_t, ref_x, ref_c = daily_stream(rng, 7, T0)
    profile = ReferenceProfile.from_samples({"x": by_night(ref_t, ref_x), "c": ref_c}, times=ref_t)
    assert profile.seasonality == "daily"
    assert profile.features["c"].dependence == 1.0
    assert profile.features["x"].dependence == 1.0
    live_t, live_x, live_c = daily_stream(rng, 4, T0 + 7 * DAY)
    live = {"x": by_night(live_t, live_x), "c": live_c}
    assert detections(profile, live, live_t) == []
    change = int(np.searchsorted(live_t, T0 + 9 * DAY))
    rises = (rng.random(len(live_c)) < 0.1 / 0.7) & (np.arange(len(live_c)) >= change)
    live["c"] = np.where(rises, "online", live_c)  # +10 points from the pos share
    found = detections(profile, live, live_t)
    assert found
    assert change <= found[0] < change + 2500  # within a day's traffic


def test_under_four_cycles_a_share_is_taken_less_its_hour_on_the_other_days() -> None:
    """Over 2.4 days an hour's share over the reference is an average of two or three
    days, which a trend across them passes for (the demo's 7-day aggregate filling up:
    missing 12 % → 4 % → 2 %, κ 66 read raw, 2.8 less those shares, and a control run
    alarmed). Each day's rows are taken less the OTHER days' share of their hour: a share
    that follows the hour is the cycle (κ about 1, where raw it was over 10 and a rise of
    the share went unseen), and a trend stays dependence."""
    rng = np.random.default_rng(41)
    ref_t, ref_x, ref_c = daily_stream(rng, 3, T0)
    short = ref_t < T0 + 2.4 * DAY
    ref_t, ref_x, ref_c = ref_t[short], ref_x[short], ref_c[short]
    day = (ref_t - T0) // DAY
    filling = ref_x.copy()  # a 7-day aggregate filling up: fewer missing every day
    filling[rng.random(len(ref_x)) < np.select([day == 0, day == 1], [0.12, 0.04], 0.02)] = np.nan
    profile = ReferenceProfile.from_samples({"c": ref_c, "x": filling}, times=ref_t)
    assert profile.seasonality == "daily"
    assert profile.features["c"].cycles < SHARES_APART_CYCLES
    assert profile.features["c"].dependence < 2.0
    assert profile.features["x"].dependence > 20
    live_t, _, live_c = daily_stream(rng, 4, T0 + 3 * DAY)
    assert detections(profile, {"c": live_c}, live_t) == []
    change = int(np.searchsorted(live_t, T0 + 5 * DAY))
    rises = (rng.random(len(live_c)) < 0.1 / 0.7) & (np.arange(len(live_c)) >= change)
    found = detections(profile, {"c": np.where(rises, "online", live_c)}, live_t)
    assert found
    assert change <= found[0] < change + 2500  # within a day's traffic


def test_a_row_s_share_is_its_phase_s_in_the_other_cycles_shrunk_to_theirs() -> None:
    hit = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    phases = np.array([0, 1, 0, 1, 0, 1])
    cycles = np.array([0, 0, 1, 1, 2, 2])
    share = other_cycles_share(hit, phases, cycles)
    # row 0 (phase 0, cycle 0): phase 0 elsewhere is rows 2 and 4, 1 of 2; the other
    # cycles' pooled share is 2 of 4, its prior weight one row
    assert share[0] == pytest.approx((1 + 0.5) / (2 + 1))
    # row 3 (phase 1, cycle 1): phase 1 elsewhere is rows 1 and 5, 0 of 2; pooled 1 of 4
    assert share[3] == pytest.approx((0 + 0.25) / (2 + 1))
    one_cycle = other_cycles_share(hit, phases, np.zeros(6, dtype=np.int64))
    assert one_cycle == pytest.approx(np.full(6, 0.5))  # no other cycle: the series' share


def test_known_phases_are_those_covered_about_as_well_as_the_best() -> None:
    fullest = np.array([100.0, 100.0, 50.0, 10.0, 0.0])
    known, thinner = known_phases(np.array([40.0, 30.0, 20.0, 1.0, 5.0]), fullest)
    # coverage 0.4, 0.3, 0.4, 0.1 and none (no features' rows to compare with)
    assert known.tolist() == [True, True, True, False, False]
    assert thinner == pytest.approx(1 / 0.3)  # the thinnest known phase's
    assert known_phases(np.zeros(5), fullest)[0].tolist() == [False] * 5


def prediction_profile(seed: int) -> tuple[ReferenceProfile, np.ndarray, np.ndarray, np.ndarray]:
    """As the trainer profiles: features on 2.4 days, the prediction on the last fifth
    (the holdout, half a day); scores that follow the hour (fraud is likelier by night).
    Returns the profile and four live days: times, amounts, scores."""
    rng = np.random.default_rng(seed)
    ref_t, ref_x, _ = daily_stream(rng, 3, T0 - DAY)
    keep = ref_t < T0 + 1.4 * DAY
    ref_t, ref_x = ref_t[keep], ref_x[keep]
    live_t, live_x, _ = daily_stream(rng, 4, T0 + 3 * DAY)

    def score(seconds: np.ndarray) -> np.ndarray:  # riskier by night
        logit = 1.5 * np.cos(2 * np.pi * ((seconds // 3600) % 24) / 24) - 2
        return 1 / (1 + np.exp(-(logit + rng.normal(0, 1, len(seconds)))))

    profile = ReferenceProfile.from_samples({"x": ref_x}, times=ref_t)
    holdout = slice(int(len(ref_t) * 0.8), None)
    prediction = profile_column(
        score(ref_t[holdout]), profile.bins, ref_t[holdout], profile.seasonality
    )
    return profile.model_copy(update={"prediction": prediction}), live_t, live_x, score(live_t)


def prediction_detections(
    profile: ReferenceProfile, times: np.ndarray, amounts: np.ndarray, scores: np.ndarray
) -> tuple[list[int], DriftMonitor]:
    spec = SPEC.model_copy(update={"prediction_drift": True})
    monitor = DriftMonitor("m", 1, profile, spec, {"x": "numeric"}, {"x": ("psi", "ks")})
    verdicts = monitor.observe_columns(
        {"x": amounts.tolist()},
        scores.tolist(),
        n=len(times),
        stamps=times,
        source="s",
        offsets=range(len(times)),
    )
    return [v.offsets["s"][1] for v in verdicts if v.detection], monitor


@pytest.mark.parametrize("seed", [31, 32])
def test_a_prediction_profiled_on_half_a_day_is_tested_in_the_hours_it_knows(seed: int) -> None:
    """Tested against the pooled hours, the other hours' scores read as drift (about 20
    detections a week on such streams before)."""
    profile, live_t, live_x, live_s = prediction_profile(seed)
    assert profile.seasonality == "daily"
    found, monitor = prediction_detections(profile, live_t, live_x, live_s)
    assert found == []
    assert "prediction:hours" in monitor.skipped
    change = int(np.searchsorted(live_t, T0 + 5 * DAY))
    shifted = np.where(np.arange(len(live_s)) >= change, 1 / (1 + (1 / live_s - 1) / 2.7), live_s)
    found, _ = prediction_detections(profile, live_t, live_x, shifted)  # odds × 2.7
    assert found
    assert change <= found[0] < change + 2500  # within a day's traffic


def test_dependence_is_one_for_independent_values_and_about_19_for_ar1_at_0_9() -> None:
    rng = np.random.default_rng(3)
    assert dependence(rng.normal(size=20_000)) == 1.0
    assert dependence(rng.lognormal(3, 1, 20_000)) == 1.0
    kappa = dependence(ar1(rng, 20_000, 0.9))  # (1 + ρ) / (1 − ρ) = 19, raised to a bound
    assert 17 < kappa < 30


@pytest.mark.parametrize("seed", [1, 2])
def test_a_daily_cycle_alarms_against_a_pooled_reference_and_not_against_a_seasonal_one(
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    ref_t, ref_x, ref_c = daily_stream(rng, 7, T0)
    live_t, live_x, live_c = daily_stream(rng, 7, T0 + 7 * DAY)
    columns = {"x": ref_x, "c": ref_c}
    seasonal = ReferenceProfile.from_samples(columns, times=ref_t)
    assert seasonal.seasonality == "daily"
    assert len(seasonal.features["x"].phase_counts) == 24
    pooled = ReferenceProfile.from_samples(columns)
    live = {"x": live_x, "c": live_c}
    assert detections(pooled, live, live_t), "the stream must be one that fools a pooled reference"
    assert detections(seasonal, live, live_t) == []


# a reference sampled from its days (5 %) leans on fewer rows an hour: found within a day
@pytest.mark.parametrize(("seed", "share", "within"), [(5, 1.0, 1000), (7, 0.05, 2500)])
def test_a_change_within_the_cycle_is_still_detected_soon(
    seed: int, share: float, within: int
) -> None:
    rng = np.random.default_rng(seed)
    ref_t, ref_x = sampled(rng, share, *daily_stream(rng, 7, T0)[:2])
    live_t, live_x, _ = daily_stream(rng, 4, T0 + 7 * DAY)
    change = int(np.searchsorted(live_t, T0 + 9 * DAY))
    live_x[change:] *= 1.6
    profile = ReferenceProfile.from_samples({"x": ref_x}, times=ref_t)
    found = detections(profile, {"x": live_x}, live_t)
    assert found
    assert found[0] >= change
    assert found[0] - change < within


@pytest.mark.parametrize("seed", range(6))
def test_a_reference_sampled_from_its_days_does_not_alarm_on_the_full_traffic(seed: int) -> None:
    # A reference that is a 5 % sample of its week has ~37 rows per hour of the day; each
    # hour's CDF errs by its sample's noise, shared by ~100 live rows of every such hour.
    # ADWIN counting that as 1 + 1/C (the reference's own density) alarmed on every seed.
    rng = np.random.default_rng(100 + seed)
    ref_t, ref_x, ref_c = sampled(rng, 0.05, *daily_stream(rng, 7, T0))
    live_t, live_x, live_c = daily_stream(rng, 14, T0 + 7 * DAY)
    profile = ReferenceProfile.from_samples({"x": ref_x, "c": ref_c}, times=ref_t)
    assert profile.seasonality == "daily"
    assert detections(profile, {"x": live_x, "c": live_c}, live_t) == []


def test_a_seasonal_monitor_reports_its_live_rate() -> None:
    rng = np.random.default_rng(2)
    ref_t, ref_x = sampled(rng, 0.1, *daily_stream(rng, 7, T0)[:2])
    live_t, live_x, _ = daily_stream(rng, 2, T0 + 7 * DAY)
    profile = ReferenceProfile.from_samples({"x": ref_x}, times=ref_t)
    monitor = DriftMonitor("m", 1, profile, SPEC, {"x": "numeric"}, {"x": ("psi", "ks")})
    assert monitor.status().live_rate == 1 / profile.features["x"].cycles  # 6.9 days
    monitor.observe_many(
        [{"x": x} for x in live_x.tolist()],
        None,
        at=[datetime.fromtimestamp(s, UTC) for s in live_t],
        source="s",
        offsets=range(len(live_x)),
    )
    assert monitor.status().live_rate == pytest.approx(2500 / len(ref_t), rel=0.05)


@pytest.mark.parametrize("seed", [1, 2])
def test_autocorrelated_stationary_data_does_not_alarm_once_its_dependence_is_known(
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    values = ar1(rng, 60_000, 0.9)
    seconds = T0 + np.arange(len(values), dtype=np.float64)
    reference, live = slice(0, 20_000), slice(20_000, None)
    dependent = ReferenceProfile.from_samples({"x": values[reference]}, times=seconds[reference])
    assert dependent.seasonality == "none"
    assert dependent.features["x"].dependence > 10
    naive = ReferenceProfile.from_samples({"x": values[reference]})
    assert naive.features["x"].dependence == 1.0
    assert detections(naive, {"x": values[live]}, seconds[live])
    assert detections(dependent, {"x": values[live]}, seconds[live]) == []


def test_a_shift_in_autocorrelated_data_is_detected() -> None:
    rng = np.random.default_rng(9)
    values = ar1(rng, 50_000, 0.9)
    values[35_000:] += 1.0
    seconds = T0 + np.arange(len(values), dtype=np.float64)
    profile = ReferenceProfile.from_samples({"x": values[:20_000]}, times=seconds[:20_000])
    found = detections(profile, {"x": values[20_000:]}, seconds[20_000:])
    assert found
    assert found[0] >= 15_000


@pytest.mark.parametrize(
    ("share", "change", "minutes"), [(1.0, 1.3, 60), (0.1, 1.6, 60), (1.0, 1.3, 15)]
)
def test_a_seasonal_monitor_restores_mid_window_and_continues_exactly(
    share: float, change: float, minutes: Literal[60, 15]
) -> None:
    rng = np.random.default_rng(4)
    ref_t, ref_x, ref_c = sampled(rng, share, *daily_stream(rng, 3, T0))
    live_t, live_x, live_c = daily_stream(rng, 2, T0 + 3 * DAY)
    live_x[2500:] *= change
    profile = ReferenceProfile.from_samples(
        {"x": ref_x, "c": ref_c}, times=ref_t, phase_minutes=minutes
    )
    assert profile.phases == 24 * 60 // minutes
    features = {"x": "numeric", "c": "categorical"}
    tests = {"x": ("psi", "ks"), "c": ("chi2",)}
    rows = [{"x": x, "c": c} for x, c in zip(live_x.tolist(), live_c.tolist(), strict=True)]
    at = [datetime.fromtimestamp(s, UTC) for s in live_t]

    whole = DriftMonitor("m", 1, profile, SPEC, features, tests)
    expected = whole.observe_many(rows, None, at=at, source="s", offsets=range(len(rows)))
    first = DriftMonitor("m", 1, profile, SPEC, features, tests)
    cut = 1717
    got = first.observe_many(rows[:cut], None, at=at[:cut], source="s", offsets=range(cut))
    state = first.snapshot()
    assert sum(state.phase_rows) == state.n_in_window > 0
    again = DriftMonitor.restore(
        type(state).model_validate_json(state.model_dump_json()), profile, SPEC, features, tests
    )
    got += again.observe_many(
        rows[cut:], None, at=at[cut:], source="s", offsets=range(cut, len(rows))
    )
    assert got == expected
    assert any(v.detection for v in expected)
    assert again.snapshot() == whole.snapshot()
    assert whole.snapshot().live_rows == sum(whole.snapshot().live_phase_rows) == len(rows)
    one_by_one = DriftMonitor("m", 1, profile, SPEC, features, tests)
    singles = [
        v
        for i, row in enumerate(rows)
        if (v := one_by_one.observe(row, None, at=at[i], source="s", offset=i)) is not None
    ]
    assert singles == expected
    assert one_by_one.snapshot() == whole.snapshot()


def test_calibration_replays_held_out_rows_and_flags_a_profile_that_alarms_on_them() -> None:
    rng = np.random.default_rng(6)
    ref_t, ref_x, _ = daily_stream(rng, 4, T0)
    held_t, held_x, _ = daily_stream(rng, 2, T0 + 4 * DAY)
    profile = ReferenceProfile.from_samples({"x": ref_x}, times=ref_t)
    at = [datetime.fromtimestamp(s, UTC) for s in held_t]
    quiet = calibrate(
        profile,
        SPEC,
        {"x": "numeric"},
        {"x": ("psi", "ks")},
        [{"x": x} for x in held_x.tolist()],
        at,
    )
    assert quiet.detections == 0
    assert quiet.windows >= 4
    assert quiet.events == len(held_x)
    assert "calibrated: no alarm" in profile.model_copy(update={"calibration": quiet}).summary()
    loud = calibrate(
        profile,
        SPEC,
        {"x": "numeric"},
        {"x": ("psi", "ks")},
        [{"x": 2 * x} for x in held_x.tolist()],
        at,
    )
    assert loud.detections > 0
    assert loud.alarms
    flagged = profile.model_copy(update={"calibration": loud}).summary()
    assert flagged.startswith("ALARMS ON ITS OWN HELD-OUT DATA")


def clustered(
    rng: np.random.Generator, entities: np.ndarray, n: int, shifted: float = 0.0
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Events of `entities`: each has a home country and a usual amount (values alike within
    an entity). `shifted` of the events go abroad to a country nobody has at home."""
    who = rng.choice(entities, size=n)
    home = np.asarray(["US", "GB", "DE", "FR"])[HOME[who]]
    country = np.where(rng.random(n) < shifted, "BR", home)
    amount = LEVEL[who] * rng.lognormal(0, 0.5, n)
    return [f"card_{e}" for e in who], country, amount


HOME = np.random.default_rng(70).choice(4, size=1_000, p=[0.55, 0.25, 0.12, 0.08])
LEVEL = np.random.default_rng(71).lognormal(3, 0.5, size=1_000)


def clustered_verdicts(
    profile: ReferenceProfile,
    keys: list[str],
    country: np.ndarray,
    amount: np.ndarray,
    *,
    with_entities: bool,
) -> list[int]:
    monitor = DriftMonitor(
        "m", 1, profile, SPEC, {"c": "categorical", "a": "numeric"}, {"c": ("chi2",), "a": ("ks",)}
    )
    rows = [{"c": c, "a": a} for c, a in zip(country.tolist(), amount.tolist(), strict=True)]
    verdicts = monitor.observe_many(
        rows,
        None,
        at=[datetime.fromtimestamp(T0 + i, UTC) for i in range(len(rows))],
        source="s",
        offsets=range(len(rows)),
        entities=keys if with_entities else None,
    )
    return [v.offsets["s"][1] for v in verdicts if v.detection]


def test_a_partition_of_alike_entities_is_not_drift_once_the_reference_knows_them() -> None:
    """One partition's monitor sees a third of the cards, each many times: their own mix
    of countries and amounts is not all cards' mix, and that is no drift (ADR 0022)."""
    rng = np.random.default_rng(12)
    everyone = np.arange(60)
    keys, country, amount = clustered(rng, everyone, 12_000)
    profile = ReferenceProfile.from_samples({"c": country, "a": amount}, entities=keys)
    assert profile.features["c"].entity_icc > 0.9  # a card's country is its home's
    assert 0.2 < profile.features["a"].entity_icc < 0.8
    third = everyone[everyone % 3 == 0]
    live_keys, live_country, live_amount = clustered(rng, third, 20_000)
    blind = clustered_verdicts(profile, live_keys, live_country, live_amount, with_entities=False)
    assert blind, "the stream must be one whose partition mix fools a test blind to entities"
    assert (
        clustered_verdicts(profile, live_keys, live_country, live_amount, with_entities=True) == []
    )
    # a real change still shows: a fifth of the payments abroad, where nobody lives
    keys2, country2, amount2 = clustered(rng, third, 6_000, shifted=0.2)
    assert clustered_verdicts(profile, keys2, country2, amount2, with_entities=True)


def sessions_of(
    rng: np.random.Generator, activity: np.ndarray, pool: np.ndarray, n: int, shifted: float = 0.0
) -> tuple[list[str], np.ndarray]:
    """Payments of the cards in `pool` in sessions (3 a session on average), a card's
    sessions as frequent as its `activity`: some cards pay ten times as often as others.
    A card pays in its home country; `shifted` of the payments go abroad to BR."""
    sessions = rng.choice(pool, size=n, p=activity[pool] / activity[pool].sum())
    who = np.repeat(sessions, rng.geometric(1 / 3, size=n))[:n]
    country = np.asarray(["US", "GB", "DE", "FR", "ES", "IT"])[UNEVEN_HOME[who]]
    return [f"card_{e}" for e in who], np.where(rng.random(n) < shifted, "BR", country)


UNEVEN_HOME = np.random.default_rng(72).choice(6, size=1_500, p=[0.5, 0.15, 0.12, 0.1, 0.08, 0.05])


@pytest.mark.parametrize("seed", range(20))
def test_unevenly_active_entities_are_weighed_by_the_cluster_an_event_sits_in(seed: int) -> None:
    """Cards of uneven activity: the mean rows per card understates the design effect
    by 1 + CV² of the cards' rows (Kish). Weighed by the mean, 4 of these 20 partitions
    (seeds 8, 14, 18, 19; 7 of seeds 0–39) alarmed on their own country mix, as the
    demo's control run on seed 40 did; weighed by Σm²/Σm none of 0–39 does, and 4 % of
    payments abroad is still found (ADR 0022)."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0, 1.0, size=1_500)
    everyone = np.arange(1_500)
    keys, country = sessions_of(rng, activity, everyone, 12_000)
    profile = ReferenceProfile.from_samples({"c": country}, entities=keys)
    assert profile.features["c"].entity_icc > 0.9
    third = everyone[everyone % 3 == seed % 3]

    def detections(keys: list[str], country: np.ndarray) -> list[int]:
        monitor = DriftMonitor("m", 1, profile, SPEC, {"c": "categorical"}, {"c": ("chi2",)})
        verdicts = monitor.observe_many(
            [{"c": c} for c in country.tolist()],
            None,
            at=[datetime.fromtimestamp(T0 + i, UTC) for i in range(len(keys))],
            source="s",
            offsets=range(len(keys)),
            entities=keys,
        )
        return [v.offsets["s"][1] for v in verdicts if v.detection]

    assert detections(*sessions_of(rng, activity, third, 30_000)) == []
    assert detections(*sessions_of(rng, activity, third, 6_000, shifted=0.04))


def test_the_entity_sketch_measures_the_cluster_an_event_sits_in() -> None:
    """Exact below SKETCH_SIZE entities (every window of the default 1,000 rows), a close
    estimate above, and a saved state carries on as if never saved."""
    small = EntitySketch()
    small.add_many(["a", "b", "c", None] + ["d"] * 7)
    assert (small.distinct, small.rows) == (4, 10)
    assert small.cluster_size == pytest.approx((1 + 1 + 1 + 49) / 10)
    assert design_effect(1.0, small.cluster_size) == pytest.approx(5.2)
    assert design_effect(0.5, small.cluster_size) == pytest.approx(3.1)
    assert design_effect(0.0, small.cluster_size) == 1.0

    def uneven(entities: int, rows: int) -> tuple[list[str], float, int]:
        rng = np.random.default_rng(entities)
        activity = rng.lognormal(0, 0.8, size=entities)  # as the example's cards
        keys = [f"e{i}" for i in rng.choice(entities, size=rows, p=activity / activity.sum())]
        sizes = np.unique(keys, return_counts=True)[1]
        return keys, float(np.sum(sizes * sizes)) / rows, len(sizes)

    def sketched(keys: list[str]) -> EntitySketch:
        sketch = EntitySketch()
        for begin in range(0, len(keys), 700):
            sketch.add_many(keys[begin : begin + 700])
        return sketch

    keys, exact, distinct = uneven(900, 4_000)
    assert distinct < SKETCH_SIZE
    assert exact > 1.3 * len(keys) / distinct  # uneven: the mean rows per entity is far off
    assert sketched(keys).cluster_size == pytest.approx(exact, rel=1e-12)

    keys, exact, distinct = uneven(20_000, 60_000)
    assert distinct > 10 * SKETCH_SIZE
    whole = sketched(keys)
    assert whole.cluster_size == pytest.approx(exact, rel=0.2)
    assert whole.distinct == pytest.approx(distinct, rel=0.1)
    half = sketched(keys[:30_000])
    resumed = EntitySketch(*half.state(), rows=half.rows)
    for begin in range(30_000, 60_000, 700):
        resumed.add_many(keys[begin : begin + 700])
    assert resumed.state() == whole.state()  # cut elsewhere than `whole`'s batches
    assert resumed.cluster_size == whole.cluster_size


def test_an_entity_state_saved_before_counts_reads_as_even_clusters() -> None:
    """States written before the sketch kept rows per entity restore with even sizes."""
    sketch = EntitySketch()
    sketch.add_many([f"e{i % 50}" for i in range(400)])
    hashes, _ = sketch.state()
    old = EntitySketch(hashes, rows=sketch.rows)
    assert old.distinct == 50
    assert old.cluster_size == pytest.approx(8.0)
    with pytest.raises(ValueError, match="counts"):
        EntitySketch(hashes, (1, 2), rows=sketch.rows)


def test_one_entity_keeps_the_full_weight_of_its_events() -> None:
    """A single machine's stream: no between-entity variance to measure, so its events are
    not discounted and a shift is seen as soon as without entity keys."""
    rng = np.random.default_rng(13)
    values = rng.normal(size=30_000)
    values[20_000:] += 0.3
    keys = ["machine-1"] * len(values)
    profile = ReferenceProfile.from_samples({"x": values[:10_000]}, entities=keys[:10_000])
    assert profile.features["x"].entity_icc == 0.0
    monitor = DriftMonitor("m", 1, profile, SPEC, {"x": "numeric"}, {"x": ("ks",)}, adaptive=False)
    verdicts = monitor.observe_many(
        [{"x": v} for v in values[10_000:].tolist()],
        None,
        at=[datetime.fromtimestamp(T0 + i, UTC) for i in range(20_000)],
        source="s",
        offsets=range(20_000),
        entities=keys[10_000:],
    )
    found = [v.offsets["s"][1] for v in verdicts if v.detection]
    assert found
    assert found[0] >= 10_000


# ── the wall clock of drift.timezone (ADR 0032) ─────────────────────────────

BERLIN = "Europe/Berlin"
SPRING_CHANGE = datetime(2027, 3, 28, 1, tzinfo=UTC).timestamp()  # Berlin: 02:00 CET → 03:00 CEST


def test_the_local_clock_is_epoch_seconds_plus_the_zone_s_offset_at_each() -> None:
    seconds = np.random.default_rng(3).uniform(1.5e9, 2.0e9, 4_000)  # 2017–2033
    for zone in (BERLIN, "America/New_York", "Australia/Sydney", "Asia/Kolkata"):
        info = ZoneInfo(zone)
        expected = [s + _offset(datetime.fromtimestamp(s, info)) for s in seconds.tolist()]
        assert local_clock(seconds, zone).tolist() == expected
        assert [local_clock_one(s, zone) for s in seconds[:300].tolist()] == expected[:300]
    assert local_clock(seconds, "UTC").tolist() == seconds.tolist()
    # the last second of CET reads 01:59:59, the next one 03:00:00 CEST
    around = local_clock(np.asarray([SPRING_CHANGE - 1, SPRING_CHANGE]), BERLIN)
    assert phases_of(around, "daily").tolist() == [1, 3]


def _offset(at: datetime) -> float:
    offset = at.utcoffset()
    assert offset is not None
    return offset.total_seconds()


def test_an_unknown_time_zone_is_refused_saying_what_is_expected() -> None:
    with pytest.raises(ValueError, match=r"unknown time zone 'Mars/Olympus'.*IANA name"):
        check_timezone("Mars/Olympus")
    with pytest.raises(ValidationError, match=r"timezone\n.*unknown time zone '\.\./etc'"):
        DriftSpec(timezone="../etc")
    with pytest.raises(ValidationError, match="unknown time zone"):
        ReferenceProfile(n_samples=0, features={}, timezone="Berlin")
    for machine_dependent in ("Europe", "localtime", "posixrules", "right/UTC"):
        with pytest.raises(ValueError, match="unknown time zone"):
            check_timezone(machine_dependent)
    assert DriftSpec(timezone=BERLIN).timezone == BERLIN


def test_a_utc_profile_is_written_as_before_and_another_clock_is_named() -> None:
    """UTC is left out of the JSON, so readers older than `timezone` take it as before."""
    times = T0 + np.arange(100) * 3600.0
    utc = ReferenceProfile.from_samples({"x": np.arange(100.0)}, times=times)
    assert "timezone" not in utc.model_dump_json()
    assert ReferenceProfile.model_validate_json(utc.model_dump_json()) == utc
    local = ReferenceProfile.from_samples({"x": np.arange(100.0)}, times=times, timezone=BERLIN)
    assert '"timezone":"Europe/Berlin"' in local.model_dump_json()
    assert ReferenceProfile.model_validate_json(local.model_dump_json()) == local
    assert local.features["x"] != utc.features["x"]  # the same rows in other phases


def test_the_clock_reads_the_offsets_of_the_years_its_times_fall_in_only() -> None:
    """A stray time (0, or milliseconds read as seconds) costs its own year, not every
    year between it and the others."""
    zone = "Pacific/Auckland"  # not read by any other test
    seconds = np.asarray([0.0, T0, 1.8e12])
    before = _zone_year.cache_info().misses
    clock = local_clock(seconds, zone)
    assert _zone_year.cache_info().misses - before == 3  # 1970, 2026 and (clamped) 2199
    assert clock.tolist() == [
        s + _offset(datetime.fromtimestamp(min(s, 7e9), ZoneInfo(zone))) for s in seconds.tolist()
    ]


def shop_hours_stream(
    rng: np.random.Generator, start: float, days: int, zone: str
) -> tuple[np.ndarray, np.ndarray]:
    """Payments by a shop's hours on `zone`'s wall clock: from 09:00 to 18:00 ten times the
    traffic and twice the amounts. (times, amounts), sorted by time."""
    hours = start + 3600.0 * np.arange(days * 24)
    local_hour = phases_of(local_clock(hours + 1800, zone), "daily")
    open_ = (local_hour >= 9) & (local_hour < 18)
    counts = rng.poisson(np.where(open_, 200, 20))
    times = np.repeat(hours, counts) + rng.uniform(0, 3600, int(counts.sum()))
    order = np.argsort(times)
    amounts = rng.lognormal(3 + np.log(2) * np.repeat(open_, counts), 0.5)
    return times[order], amounts[order]


@pytest.mark.parametrize("seed", [1, 2])
def test_a_rhythm_kept_in_local_time_does_not_alarm_across_a_daylight_saving_change(
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    # a week of reference in CET, then a week live, CEST from its fourth day
    times, amounts = shop_hours_stream(rng, SPRING_CHANGE - 10 * DAY, 14, BERLIN)
    live = int(np.searchsorted(times, SPRING_CHANGE - 3 * DAY))
    reference = {"x": amounts[:live]}
    in_utc = ReferenceProfile.from_samples(reference, times=times[:live], seasonality="daily")
    local = ReferenceProfile.from_samples(
        reference, times=times[:live], seasonality="daily", timezone=BERLIN
    )
    assert (local.timezone, local.seasonality) == (BERLIN, "daily")
    assert "seasonality daily (Europe/Berlin time)" in local.summary()
    # the shop opens at 09:00 Berlin time, 08:00 UTC in winter: phase 9 of the local clock
    assert sum(local.features["x"].phase_counts[9]) > 5 * sum(local.features["x"].phase_counts[8])
    changed = int(np.searchsorted(times, SPRING_CHANGE)) - live  # the first live row in CEST
    after_change = {"x": amounts[live:]}
    found = detections(in_utc, after_change, times[live:])
    assert found, "UTC hours must take the shop's hours for drift once the clocks change"
    assert min(found) > changed
    assert detections(local, after_change, times[live:]) == []
    # a real change on the local clock is still found within a day of traffic
    moved = amounts[live:] * np.where(times[live:] >= SPRING_CHANGE, 1.5, 1.0)
    found = detections(local, {"x": moved}, times[live:])
    assert found
    assert changed <= min(found) <= changed + 2_500


# ── phases finer than the hour (ADR 0033) ─────────────────────────────────────


def opening_stream(
    rng: np.random.Generator, days: int, opens_h: float = 9.5, lift: float = 0.8
) -> tuple[np.ndarray, np.ndarray]:
    """Payments from T0 on, ten times denser from 09:00 to 18:00 (UTC), whose level is `lift`
    higher while a shop is open, from `opens_h` for eight hours: a step inside an hour
    when it opens at 09:30. (times, amounts), sorted by time."""
    hours = T0 + 3600.0 * np.arange(days * 24)
    hour_of_day = (hours % DAY) // 3600
    counts = rng.poisson(np.where((hour_of_day >= 9) & (hour_of_day < 18), 200, 20))
    times = np.sort(np.repeat(hours, counts) + rng.uniform(0, 3600, int(counts.sum())))
    clock_h = (times % DAY) / 3600
    opened = (clock_h >= opens_h) & (clock_h < opens_h + 8)
    return times, rng.lognormal(3 + lift * opened, 1.0)


def test_finer_phases_split_each_hour_and_keep_monday_first() -> None:
    assert phase_of(T0 + 9 * 3600 + 1799, "daily", 30) == 18
    assert phase_of(T0 + 9 * 3600 + 1800, "daily", 30) == 19
    assert phase_of(T0 + 9 * 3600 + 2700, "daily", 15) == 39
    assert phase_of(T0 + DAY + 900, "weekly", 15) == 24 * 4 + 1  # Tuesday 00:15
    assert phase_of(T0 - 900, "weekly", 15) == 7 * 24 * 4 - 1  # the Sunday before, 23:45
    seconds = T0 + np.arange(0, 14 * DAY, 450.0)
    for minutes in (60, 30, 15):
        assert phases_of(seconds, "weekly", minutes).tolist() == [
            phase_of(s, "weekly", minutes) for s in seconds
        ]
    daily = np.full(96, 2.0)  # 2 rows in every quarter of the day
    until = reference_rows_until(np.asarray([T0 + 450, T0 + DAY + 900]), daily, "daily", None, 15)
    assert float(until[1] - until[0]) == 96 * 2 + 2 - 1  # a day, a quarter, less half a quarter


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_auto_takes_finer_phases_where_the_reference_steps_inside_the_hour(seed: int) -> None:
    rng = np.random.default_rng(seed)

    def width(times: np.ndarray, amounts: np.ndarray, choice: str | int = "auto") -> int:
        return ReferenceProfile.from_samples(
            {"x": amounts},
            times=times,
            seasonality="daily",
            phase_minutes=choice,  # type: ignore[arg-type]
        ).phase_minutes

    assert width(*opening_stream(rng, 7, opens_h=9.5)) == 30
    assert width(*opening_stream(rng, 7, opens_h=9.25)) == 15
    assert width(*opening_stream(rng, 7, opens_h=9.0)) == 60  # steps on the hour
    ref_t, ref_x, _ = daily_stream(rng, 7, T0)
    assert width(ref_t, ref_x) == 60
    assert width(ref_t, ref_x, 15) == 15  # as the spec says
    flat = ReferenceProfile.from_samples({"x": ref_x}, times=ref_t, seasonality="none")
    assert flat.phase_minutes == 60


@pytest.mark.parametrize("seed", [1, 2])
def test_a_shop_that_opens_at_half_past_is_modelled_in_half_hours_not_taken_for_drift(
    seed: int,
) -> None:
    """In hourly phases the hour from 09:00 mixes the closed and the open shop: its first
    half reads low and its second high, every day. That reads as dependence (κ > 1, and
    a real change is found days late) or, with a smaller step, as drift."""
    rng = np.random.default_rng(seed)
    times, amounts = opening_stream(rng, 10)
    live = int(np.searchsorted(times, T0 + 7 * DAY))
    reference = {"x": amounts[:live]}
    hourly = ReferenceProfile.from_samples(reference, times=times[:live], phase_minutes=60)
    halves = ReferenceProfile.from_samples(reference, times=times[:live])
    assert (halves.seasonality, halves.phase_minutes) == ("daily", 30)
    assert "seasonality daily (30-minute phases)" in halves.summary()
    assert hourly.features["x"].dependence > 1.3
    assert halves.features["x"].dependence == 1.0
    assert ReferenceProfile.model_validate_json(halves.model_dump_json()) == halves
    assert '"phase_minutes":30' in halves.model_dump_json()
    assert "phase_minutes" not in hourly.model_dump_json()  # as written before ADR 0033
    # amounts ×1.3 from the second live day on
    changed = int(np.searchsorted(times, T0 + 8 * DAY)) - live
    moved = amounts[live:] * np.where(np.arange(len(amounts) - live) >= changed, 1.3, 1.0)
    in_halves = detections(halves, {"x": moved}, times[live:])
    in_hours = detections(hourly, {"x": moved}, times[live:])
    assert in_halves
    assert changed <= min(in_halves) <= changed + 2_000
    assert min(in_hours, default=len(moved)) > min(in_halves) + 1_000
    assert detections(halves, {"x": amounts[live:]}, times[live:]) == []


def test_auto_keeps_the_hour_on_a_short_sparse_reference_with_nothing_inside_the_hour() -> None:
    """Two days of 500 rows: a quarter of an hour expects a few rows per bin, where a G
    test reads high (it took a finer width on 30 % of such references); X² does not."""
    finer = 0
    for seed in range(60):
        rng = np.random.default_rng(500 + seed)
        seconds = np.sort(T0 + rng.uniform(0, 2 * DAY, 1000))
        columns = {"x": rng.lognormal(3, 1, 1000), "c": rng.choice(["a", "b", "c"], 1000)}
        profile = ReferenceProfile.from_samples(columns, times=seconds, seasonality="daily")
        finer += profile.phase_minutes != 60
    assert finer <= 3  # about 1 % by the bar; G took 14 of these 60


def test_finer_phases_keep_the_hour_s_share_under_four_cycles_and_judge_coverage_by_hour() -> None:
    rng = np.random.default_rng(21)
    ref_t, ref_x, ref_c = daily_stream(rng, 2, T0)  # two cycles: shares from the other day

    def profile(minutes: Literal[60, 15]) -> ReferenceProfile:
        return ReferenceProfile.from_samples(
            {"x": ref_x, "c": ref_c}, times=ref_t, seasonality="daily", phase_minutes=minutes
        )

    hourly, quarters = profile(60), profile(15)
    assert quarters.features["c"].dependence == hourly.features["c"].dependence
    # the holdout (the last half day) covers the same hours in either width
    holdout = ref_t[ref_t >= ref_t[-1] - DAY / 2]
    known_h, thinner_h = known_phases(
        np.bincount(phases_of(holdout, "daily"), minlength=24),
        np.bincount(phases_of(ref_t, "daily"), minlength=24),
    )
    known_q, thinner_q = known_phases(
        np.bincount(phases_of(holdout, "daily", 15), minlength=96),
        np.bincount(phases_of(ref_t, "daily", 15), minlength=96),
        per_hour=4,
    )
    assert known_q.tolist() == np.repeat(known_h, 4).tolist()
    assert thinner_q == pytest.approx(thinner_h)
    assert 0 < known_h.sum() < 24


def test_a_profile_s_counts_must_match_its_phases() -> None:
    times = T0 + np.arange(3000) * 60.0
    profile = ReferenceProfile.from_samples({"x": np.arange(3000.0)}, times=times)
    data = profile.model_dump(mode="json")
    data["phase_minutes"] = 15  # 24 rows of counts, 96 phases
    with pytest.raises(ValidationError, match="x: 24 rows of phase_counts, expected 96"):
        ReferenceProfile.model_validate(data)
    with pytest.raises(ValueError, match="expected a one-dimensional column"):
        ReferenceProfile.from_samples({"x": np.ones((3000, 2))}, times=times)
