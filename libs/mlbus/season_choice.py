"""Which cycle, and which width of phase, a reference takes under `auto` (ADR 0022, 0033).

A cycle the reference covers at least MIN_CYCLES times is taken by counting its hours.
A cycle covered once (`cycle_shown`) and structure inside the hour (`finer_phases`) are
taken only when the reference's columns show them: the same tests, of the finer phases
against what the coarser ones expect, each divided by the column's dependence κ. The
profile builder (`profiles.choose_profile_seasonality`, `choose_phase_minutes`) cuts the
columns into the few bins these tests read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mlbus.seasons import (
    HOUR_MINUTES,
    HOUR_S,
    PHASES,
    PhaseMinutes,
    Seasonality,
    SeasonalityChoice,
    dependence,
    phase_count,
    phases_of,
)

LONGER_CYCLE: dict[Seasonality, Seasonality] = {"none": "daily", "daily": "weekly"}
MIN_CYCLES = 2
"""`auto` uses a cycle when the reference spans at least this many of it."""
ONE_CYCLE_P_VALUE = 0.01
"""`auto` uses a cycle the reference spans once (but not MIN_CYCLES times) when its columns
differ between that cycle's phases beyond what the shorter cycle explains, at this p-value
(Bonferroni over the columns and their tests): a reference of one week whose weekends
differ (see `cycle_shown`). Lenient, because the two errors cost differently: keeping the
shorter cycle wrongly alarms every cycle; taking the longer one wrongly costs sensitivity
(ADR 0022). `finer_phases` uses the same bar, for the same reason."""


def choose_seasonality(choice: SeasonalityChoice, seconds: np.ndarray | None) -> Seasonality:
    """What `choice` means for a reference whose events happened at `seconds`.

    `auto` takes the longest cycle the reference covers at least MIN_CYCLES times
    (weekly from two weeks, daily from two days), counted in the hours its events
    fall in (two weeks of events from Monday 00:10 to Sunday 23:50 cover 336 hours:
    two weeks); without times it is `none`. An explicit cycle needs times: without
    them nothing can be keyed by phase.
    """
    if seconds is None or len(seconds) == 0:
        if choice in ("daily", "weekly"):
            raise ValueError(f"seasonality {choice!r} needs the reference's event times")
        return "none"
    if choice != "auto":
        return choice
    hours = hours_covered(seconds)
    for cycle in ("weekly", "daily"):
        if hours >= MIN_CYCLES * PHASES[cycle]:
            return cycle
    return "none"


def hours_covered(seconds: np.ndarray) -> int:
    """How many hours, first to last, the events fall in (both ends' hours counted)."""
    return int(np.max(seconds) // HOUR_S - np.min(seconds) // HOUR_S) + 1


def spanned_once(season: Seasonality, seconds: np.ndarray | None) -> Seasonality | None:
    """The next cycle longer than `season` when `seconds` span it once, not MIN_CYCLES
    times (what `auto` chose instead): a candidate for `cycle_shown`."""
    longer = LONGER_CYCLE.get(season)
    if longer is None or seconds is None or len(seconds) == 0:
        return None
    hours = hours_covered(seconds)
    return longer if PHASES[longer] <= hours < MIN_CYCLES * PHASES[longer] else None


def cycle_shown(
    columns: Sequence[tuple[np.ndarray, int]],
    seconds: np.ndarray,
    longer: Seasonality,
    shorter: Seasonality,
) -> bool:
    """Whether the reference shows the `longer` cycle beyond the `shorter` one: some column
    differs between the longer cycle's phases within a phase of the shorter one (that
    hour on each weekday), at ONE_CYCLE_P_VALUE with Bonferroni over the columns and
    their tests. A column is (its values as small bin indexes in the order of `seconds`,
    how many of the first bins are ordered: quantile bins; 0 for categories).

    The phases of the longer cycle are summed by day (a weekday that differs in every
    hour is one strong difference, not 24 faint ones) and compared with what the
    shorter cycle expects of them: a G test of the bins, and for ordered bins a test of
    their mean (a shift of level, the usual weekend). Both statistics are divided by the
    column's dependence κ measured with the longer cycle's phases taken out (κ measured
    with them left in would take the very pattern being tested for dependence).
    """
    fine, coarse = phases_of(seconds, longer), phases_of(seconds, shorter)
    days = 1 if shorter == "none" else PHASES[shorter]  # hours of a day; days of a week
    group = np.arange(PHASES[longer]) // days
    blocks = np.zeros(int(group[-1]) + 1, dtype=np.int64)
    return _finer_shown(columns, seconds, fine, coarse, group, blocks, pearson=False)


def finer_phases(
    columns: Sequence[tuple[np.ndarray, int]], seconds: np.ndarray, season: Seasonality
) -> PhaseMinutes:
    """The phase width, in minutes, that `auto` takes for a `season` reference: the hour,
    unless some column differs between the quarters of an hour beyond what its hour
    explains (`_finer_shown`, at ONE_CYCLE_P_VALUE). Then the half hour, or the quarter
    when the quarters also differ within their half hours. `columns` as for `cycle_shown`.

    A level that steps at 09:30 (a shop's or a market's opening) mixes two levels in
    one hourly phase: its first half reads low and its second high against the hour's
    reference, every day, which the ADWINs took for drift (ADR 0033). The quarters are
    compared per quarter of the day (summed over a week's days), so a step that comes
    every day is one strong difference. The bins are compared by Pearson's X², not G:
    a quarter of an hour often expects a few rows in a bin, where G reads high (under a
    null, 2 days of 500 rows took a finer width 30 % of the time with G, 1 % with X²).

    Lenient for the reason `cycle_shown` is: a width finer than needed only spreads the
    reference's rows over more phases; one too coarse alarms every day.
    """
    if season == "none" or len(seconds) == 0:
        return HOUR_MINUTES
    quarters = phases_of(seconds, season, 15)
    of_day = np.arange(phase_count(season, 15)) % (24 * 4)  # the quarter of the day
    hour, half = np.arange(24 * 4) // 4, np.arange(24 * 4) // 2
    hours = phases_of(seconds, season)
    if not _finer_shown(columns, seconds, quarters, hours, of_day, hour, pearson=True):
        return HOUR_MINUTES
    halves = phases_of(seconds, season, 30)
    return (
        15 if _finer_shown(columns, seconds, quarters, halves, of_day, half, pearson=True) else 30
    )


def _finer_shown(
    columns: Sequence[tuple[np.ndarray, int]],
    seconds: np.ndarray,
    fine: np.ndarray,
    coarse: np.ndarray,
    group: np.ndarray,
    block: np.ndarray,
    *,
    pearson: bool,
) -> bool:
    """Whether some column's `fine` phases (each within one `coarse` phase), summed by
    `group` (per fine phase), differ from what their coarse phases expect, at
    ONE_CYCLE_P_VALUE with Bonferroni over the columns and their tests (see
    `cycle_shown`). `block` (per group): groups whose deviations sum to 0 by
    construction, one degree of freedom fewer each (a day's quarters within its hour).
    `pearson`: the bins by Pearson's X² instead of G (see `finer_phases`)."""
    order = np.argsort(seconds, kind="stable")
    p_values = [
        p
        for index, ordered in columns
        for p in _cycle_p_values(index, ordered, fine, coarse, order, group, block, pearson)
    ]
    return bool(p_values) and min(p_values) * len(p_values) < ONE_CYCLE_P_VALUE


def _cycle_p_values(
    index: np.ndarray,
    ordered: int,
    fine: np.ndarray,
    coarse: np.ndarray,
    order: np.ndarray,
    group_of: np.ndarray,
    block: np.ndarray,
    pearson: bool,
) -> list[float]:
    """The bins' test's p-value and, for ordered bins, the mean's (see `_finer_shown`)."""
    bins = int(index.max()) + 1 if index.size else 0
    if bins < 2:
        return []
    phases = int(fine.max()) + 1
    counts = np.zeros((phases, bins), dtype=np.float64)
    np.add.at(counts, (fine, index), 1.0)
    parent = np.zeros(phases, dtype=np.int64)
    parent[fine] = coarse  # each fine phase lies in one coarse phase
    pooled = np.zeros((int(coarse.max()) + 1, bins), dtype=np.float64)
    np.add.at(pooled, parent, counts)
    group = group_of[:phases]
    kappa = _residual_kappa(index, fine, counts, order)
    tests = [_bins_test(counts, pooled, parent, group, block, pearson)]
    if ordered >= 2:
        tests.append(_mean_test(counts[:, :ordered], pooled[:, :ordered], parent, group, block))
    return [chi2_upper_tail(statistic / kappa, dof) for statistic, dof in tests if dof > 0]


def _bins_test(
    counts: np.ndarray,
    pooled: np.ndarray,
    parent: np.ndarray,
    group: np.ndarray,
    block: np.ndarray,
    pearson: bool,
) -> tuple[float, int]:
    """G (or Pearson's X²) and degrees of freedom of the groups' bins against the coarse
    phases'."""
    shares = pooled / np.maximum(pooled.sum(axis=1, keepdims=True), 1.0)
    expected = counts.sum(axis=1, keepdims=True) * shares[parent]
    observed_in, expected_in = _by_group(counts, group), _by_group(expected, group)
    if pearson:
        cells = expected_in > 0
        gap = observed_in[cells] - expected_in[cells]
        statistic = float(np.sum(gap * gap / expected_in[cells]))
    else:
        seen = observed_in > 0
        ratio = observed_in[seen] / expected_in[seen]
        statistic = 2.0 * float(np.sum(observed_in[seen] * np.log(ratio)))
    seen_groups = np.flatnonzero(observed_in.sum(axis=1))
    free = len(seen_groups) - len(np.unique(block[seen_groups]))
    return statistic, free * (int(np.count_nonzero(pooled.sum(axis=0))) - 1)


def _mean_test(
    counts: np.ndarray, pooled: np.ndarray, parent: np.ndarray, group: np.ndarray, block: np.ndarray
) -> tuple[float, int]:
    """Σ z² of the groups' sums of ordered bin indexes against the coarse phases' means."""
    scores = np.arange(counts.shape[1], dtype=np.float64)
    shares = pooled / np.maximum(pooled.sum(axis=1, keepdims=True), 1.0)
    mean = shares @ scores
    variance = shares @ (scores * scores) - mean * mean
    rows = counts.sum(axis=1)
    deviation = _by_group((counts @ scores - rows * mean[parent])[:, None], group)[:, 0]
    spread = _by_group((rows * variance[parent])[:, None], group)[:, 0]
    tested = spread > 0
    statistic = float(np.sum(deviation[tested] ** 2 / spread[tested]))
    tested_groups = np.flatnonzero(tested)
    return statistic, len(tested_groups) - len(np.unique(block[tested_groups]))


def _by_group(per_phase: np.ndarray, group: np.ndarray) -> np.ndarray:
    summed = np.zeros((int(group.max()) + 1, per_phase.shape[1]), dtype=np.float64)
    np.add.at(summed, group, per_phase)
    return summed


def _residual_kappa(
    index: np.ndarray, fine: np.ndarray, counts: np.ndarray, order: np.ndarray
) -> float:
    """The largest κ of the bins' indicators, each with its fine phase's share taken out."""
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    kappa = 1.0
    for b in range(counts.shape[1]):
        if 0 < counts[:, b].sum() < len(index):
            residual = (index == b).astype(np.float64) - shares[fine, b]
            kappa = max(kappa, dependence(residual[order]))
    return kappa


def chi2_upper_tail(statistic: float, dof: int) -> float:
    """P(χ²(dof) ≥ statistic), Wilson and Hilferty's cube-root normal approximation:
    within a few per cent of the exact tail down to 1e-6 once dof is in the tens."""
    if statistic <= 0:
        return 1.0
    ninth = 2.0 / (9.0 * dof)
    z = ((statistic / dof) ** (1.0 / 3.0) - (1.0 - ninth)) / math.sqrt(ninth)
    return 0.5 * math.erfc(z / math.sqrt(2.0))
