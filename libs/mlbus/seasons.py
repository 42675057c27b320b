"""The time structure of a reference: which phase of a cycle an event is in, and how dependent
consecutive events are (ADR 0022). Pure numpy; the profile builder and the drift monitor share it.

- A *phase* is the hour of the day (`daily`, 24 phases) or of the week (`weekly`, 168,
  Monday 00:00 first) on the wall clock of the spec's `drift.timezone` (UTC by default,
  ADR 0032), or a half or quarter of that hour where the reference shows structure inside
  the hour (`phase_minutes`, ADR 0033). A reference keeps its counts per phase, so a live
  window is compared with the reference of the hours it holds, not with the whole day's
  mix. Every function here that takes phases reads *clock seconds*: epoch seconds as that
  clock shows them (`local_clock`), so a rhythm kept in local time stays in its phases
  across a daylight-saving change.
- *Dependence* is the variance inflation κ of a series' mean: Var(mean of n) ≈ κ·σ²/n. For
  independent events κ = 1; an AR(1) stream with lag-1 correlation ρ has κ = (1+ρ)/(1−ρ)
  (19 at ρ = 0.9). The tests divide their counts by κ: n dependent events carry the
  evidence of n/κ independent ones.

Which cycle and which width of phase a reference takes under `auto` is `season_choice`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final, Literal, TypeAlias
from zoneinfo import ZoneInfo, available_timezones

import numpy as np

Seasonality: TypeAlias = Literal["none", "daily", "weekly"]
SeasonalityChoice: TypeAlias = Literal["auto", "none", "daily", "weekly"]
PhaseMinutes: TypeAlias = Literal[60, 30, 15]
PhaseMinutesChoice: TypeAlias = Literal["auto", 60, 30, 15]

PHASES: dict[Seasonality, int] = {"none": 1, "daily": 24, "weekly": 168}
CYCLE_S: dict[Seasonality, float] = {"none": math.inf, "daily": 86_400.0, "weekly": 604_800.0}
PHASE_PRIOR_ROWS = 1.0
"""A phase's distribution is shrunk toward the whole reference's by this many pseudo-rows,
so a phase seen a few times is not taken at its word (and one never seen is the whole's)."""
HOUR_MINUTES: Final = 60
"""The phases' width unless the reference shows structure inside the hour (`PhaseMinutes`:
its half or quarter, for a shop that opens at 09:30; `season_choice.finer_phases`)."""
HOUR_S = 3600
_MONDAY_OFFSET_H = 72  # 1970-01-01 was a Thursday: hour 0 of the epoch is hour 72 of its week
MAX_LAG_FRACTION = 0.25
"""Autocorrelations are summed up to a quarter of the series at most."""


def epoch_seconds(times: Sequence[datetime | float | int] | np.ndarray) -> np.ndarray:
    """Times as float epoch seconds (aware datetimes, or numbers already in seconds)."""
    if isinstance(times, np.ndarray) and times.dtype.kind in "iuf":
        return times.astype(np.float64)
    return np.asarray(
        [t.timestamp() if isinstance(t, datetime) else float(t) for t in times], dtype=np.float64
    )


UTC_ZONE = "UTC"


_MACHINE_ZONES = frozenset({"localtime", "posixrules", "Factory"})
"""Names in the tz database that mean this machine's setting, or nothing: refused, so a
trainer and a drift service on differently set machines cannot key phases apart."""


def check_timezone(name: str) -> str:
    """`name` if it is an IANA time zone (e.g. Europe/Berlin), else a ValueError that says
    what is expected."""
    if name != UTC_ZONE and name not in _known_zones():
        raise ValueError(
            f"unknown time zone {name!r}: expected an IANA name such as 'UTC', "
            "'Europe/Berlin' or 'America/New_York'"
        )
    return name


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones()) - _MACHINE_ZONES


def local_clock(seconds: np.ndarray, timezone: str) -> np.ndarray:
    """Epoch seconds as the wall clock of `timezone` shows them, counted as if it were UTC
    (epoch seconds plus the UTC offset in force at each): what phases are taken from.

    Across a daylight-saving change the clock skips an hour or shows one twice, as the
    people whose rhythm the traffic follows live it. UTC returns `seconds` unchanged."""
    seconds = np.asarray(seconds, dtype=np.float64)
    if timezone == UTC_ZONE or len(seconds) == 0:
        return seconds
    finite = seconds[np.isfinite(seconds)]
    if len(finite) == 0:
        return seconds
    starts, offsets = _offsets_in(timezone, finite)
    at = np.searchsorted(starts, seconds, side="right") - 1
    clock: np.ndarray = seconds + offsets[np.clip(at, 0, len(offsets) - 1)]
    return clock


def local_clock_one(second: float, timezone: str) -> float:
    """`local_clock` for one time (the monitor's row-by-row path)."""
    if timezone == UTC_ZONE:
        return second
    return float(local_clock(np.asarray([second]), timezone)[0])


_LAST_YEAR_S = 7_258_118_400.0  # 2200-01-01 00:00 UTC: later times take 2199's offsets


def cycle_label(seasonality: str, timezone: str, minutes: int = HOUR_MINUTES) -> str:
    """'daily (Europe/Berlin time, 15-minute phases)', 'weekly' (UTC hours) or 'none': a
    cycle for people."""
    notes = [] if timezone == UTC_ZONE else [f"{timezone} time"]
    if minutes != HOUR_MINUTES:
        notes.append(f"{minutes}-minute phases")
    if seasonality == "none" or not notes:
        return seasonality
    return f"{seasonality} ({', '.join(notes)})"


def _offsets_in(timezone: str, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, offsets): from each start (epoch s) on, the zone's UTC offset in seconds,
    for the years `seconds` (finite) fall in (before 1970: 1970's): those only, so one
    stray time costs one year's table, not every year between."""
    clamped = np.clip(seconds, 0.0, _LAST_YEAR_S - 1.0)
    years = np.unique(clamped.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64))
    starts: list[float] = []
    offsets: list[float] = []
    for year in (years + 1970).tolist():
        year_starts, year_offsets = _zone_year(timezone, year)
        starts += year_starts
        offsets += year_offsets
    return np.asarray(starts), np.asarray(offsets)


@lru_cache(maxsize=512)
def _zone_year(timezone: str, year: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The zone's UTC offsets within one year: from each start (epoch s) on, the offset
    (seconds). Found by reading the offset every hour and bisecting each change to the
    second (zoneinfo keeps its transitions private); ~10 ms a year, once per process."""
    zone = ZoneInfo(timezone)

    def offset(second: int) -> float:
        shown = datetime.fromtimestamp(second, zone).utcoffset()
        return 0.0 if shown is None else shown.total_seconds()

    begin = int(datetime(year, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp())
    starts, offsets = [float(begin)], [offset(begin)]
    for low in range(begin, end, HOUR_S):
        high = min(low + HOUR_S, end)
        if offset(high) == offsets[-1]:
            continue
        while high - low > 1:  # offset(low) is the old one, offset(high) the new one
            middle = (low + high) // 2
            low, high = (middle, high) if offset(middle) == offsets[-1] else (low, middle)
        starts.append(float(high))
        offsets.append(offset(high))
    return tuple(starts), tuple(offsets)


def phase_count(seasonality: Seasonality, minutes: int = HOUR_MINUTES) -> int:
    """Phases in one cycle: its hours, or its `minutes`-wide parts (1 without a cycle)."""
    return 1 if seasonality == "none" else PHASES[seasonality] * HOUR_MINUTES // minutes


def _cycles_and_phases(
    seconds: np.ndarray, seasonality: Seasonality, minutes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each clock second's cycle (days or weeks since the epoch) and phase in it (the hour
    of the day, or of the week from Monday, or its `minutes`-wide part); all 0 without
    seasonality."""
    if seasonality == "none":
        zeros = np.zeros(len(seconds), dtype=np.int64)
        return zeros, zeros
    units = np.floor_divide(seconds, minutes * 60).astype(np.int64)
    if seasonality == "weekly":
        units = units + _MONDAY_OFFSET_H * HOUR_MINUTES // minutes
    cycles, phases = np.divmod(units, phase_count(seasonality, minutes))
    return np.asarray(cycles, dtype=np.int64), np.asarray(phases, dtype=np.int64)


def phases_of(
    seconds: np.ndarray, seasonality: Seasonality, minutes: int = HOUR_MINUTES
) -> np.ndarray:
    """The phase index of each clock second (all 0 without seasonality); `minutes`: the
    phases' width (the hour unless a profile says otherwise, `phase_minutes`)."""
    return _cycles_and_phases(seconds, seasonality, minutes)[1]


def cycles_of(
    seconds: np.ndarray, seasonality: Seasonality, minutes: int = HOUR_MINUTES
) -> np.ndarray:
    """The cycle each clock second falls in, aligned with `phases_of`: an hour of one day
    (or week) is one phase of one cycle. All 0 without seasonality."""
    return _cycles_and_phases(seconds, seasonality, minutes)[0]


def other_cycles_share(hit: np.ndarray, phases: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """For each row of a 0/1 series, the share of 1s among the rows of its phase in the
    OTHER cycles, shrunk toward the other cycles' pooled share by PHASE_PRIOR_ROWS as
    `phase_distributions` shrinks a phase. With no other cycle it is the series' share.

    Taken out of the row, it leaves what the phase does not explain, and a trend across
    the cycles stays in it whatever their number: each day's rows are measured against
    the other days', never against an average that includes their own."""
    n = len(hit)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    cycle = cycles - cycles.min()
    width = int(cycle.max()) + 1
    cell = phases * width + cycle  # one (phase, cycle) pair
    size = (int(phases.max()) + 1) * width
    rows_pc = np.bincount(cell, minlength=size).reshape(-1, width).astype(np.float64)
    hits_pc = np.bincount(cell, weights=hit, minlength=size).reshape(-1, width)
    rows_c, hits_c = rows_pc.sum(axis=0), hits_pc.sum(axis=0)
    other_rows = rows_c.sum() - rows_c[cycle]
    pooled = np.where(
        other_rows > 0, (hits_c.sum() - hits_c[cycle]) / np.maximum(other_rows, 1.0), hit.mean()
    )
    phase_rows = rows_pc.sum(axis=1)[phases] - rows_pc[phases, cycle]
    phase_hits = hits_pc.sum(axis=1)[phases] - hits_pc[phases, cycle]
    share: np.ndarray = (phase_hits + PHASE_PRIOR_ROWS * pooled) / (phase_rows + PHASE_PRIOR_ROWS)
    return share


def cycle_phases(
    seconds: np.ndarray, seasonality: Seasonality, minutes: int = HOUR_MINUTES
) -> np.ndarray:
    """Phases since the start of the epoch's cycle, fractional: `minutes`-wide units since
    1970-01-01 00:00, or since the Monday before it for a weekly cycle (its whole part's
    remainder by the cycle's phases is the phase)."""
    units: np.ndarray = np.asarray(seconds, dtype=np.float64) * (1 / (minutes * 60))
    if seasonality == "weekly":
        return units + _MONDAY_OFFSET_H * HOUR_MINUTES // minutes
    return units


def phase_of(second: float, seasonality: Seasonality, minutes: int = HOUR_MINUTES) -> int:
    """`phases_of` for one time (the monitor's hot path)."""
    if seasonality == "none":
        return 0
    unit = int(second // (minutes * 60))
    if seasonality == "weekly":
        unit += _MONDAY_OFFSET_H * HOUR_MINUTES // minutes
    return unit % phase_count(seasonality, minutes)


def reference_rows_until(
    seconds: np.ndarray,
    phase_rows: np.ndarray,
    seasonality: Seasonality,
    before: np.ndarray | None = None,
    minutes: int = HOUR_MINUTES,
) -> np.ndarray:
    """Per clock second, the reference rows of every phase from the epoch up to it: each
    phase counts its rows (`phase_rows`, summed over the reference's cycles), the last one
    in proportion to the part of it that has passed. The difference of two of these is
    the reference's rows for the hours between two times. `before`: the phases' running
    sum, 0 first (a caller that asks often keeps it); `minutes`: the phases' width."""
    per_phase = np.asarray(phase_rows, dtype=np.float64)
    if before is None:
        before = np.concatenate(([0.0], np.cumsum(per_phase)))
    units = cycle_phases(seconds, seasonality, minutes)
    whole = np.floor(units)
    cycles, phase = np.divmod(whole.astype(np.int64), len(per_phase))
    rows: np.ndarray = cycles * before[-1] + before[phase] + (units - whole) * per_phase[phase]
    return rows


def phase_distributions(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per phase, the bin probabilities shrunk toward the pooled ones, and the rows behind them.

    `counts` is phases × bins. Returns (probabilities phases × bins, weight per phase =
    rows + PHASE_PRIOR_ROWS). A phase with no rows has the pooled distribution.
    """
    counts = np.asarray(counts, dtype=np.float64)
    pooled = counts.sum(axis=0)
    total = pooled.sum()
    overall = pooled / total if total > 0 else np.full(counts.shape[1], 1.0 / counts.shape[1])
    rows = counts.sum(axis=1)
    weight = rows + PHASE_PRIOR_ROWS
    probabilities = (counts + PHASE_PRIOR_ROWS * overall) / weight[:, None]
    return probabilities, weight


KNOWN_COVERAGE = 0.5
"""A phase is known to a column's reference when it holds at least this share of the rows the
best-covered phase holds, each against the monitor's fullest reference (see `known_phases`)."""


def known_phases(
    rows: np.ndarray, fullest: np.ndarray, per_hour: int = 1
) -> tuple[np.ndarray, float]:
    """Which phases a column's reference knows, and how much thinner it is there.

    `rows` are the column's reference rows per phase and `fullest` those of the
    monitor's fullest reference (the features'). The prediction is profiled on the
    holdout alone, often half a day: its other hours have no rows, and testing their
    predictions against the pooled hours would call the cycle drift. Returns (a mask of
    the phases covered at least KNOWN_COVERAGE as well as the best one, fullest / rows in
    the thinnest of them): the column's live rate per cycle is at most the fullest's
    times that, in every hour it is tested in.

    Coverage is judged per hour, `per_hour` phases at a time (phases finer than the hour,
    ADR 0033): a quarter hour of a half-day holdout holds so few rows that its coverage
    is noise, and judged alone, a third of the covered quarters fell under the bar.
    """
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, per_hour).sum(axis=1)
    fullest = np.asarray(fullest, dtype=np.float64).reshape(-1, per_hour).sum(axis=1)
    coverage = np.divide(rows, fullest, out=np.zeros_like(rows), where=fullest > 0)
    best = float(coverage.max(initial=0.0))
    if best <= 0:
        return np.zeros(len(rows) * per_hour, dtype=bool), 1.0
    known = coverage >= KNOWN_COVERAGE * best
    return np.repeat(known, per_hour), 1.0 / float(coverage[known].min())


def dependence(series: np.ndarray) -> float:
    """κ: how much dependence inflates the variance of the series' mean (1 when independent).

    Geyer's initial monotone sequence estimator (1992): sums of adjacent pairs of
    autocovariances, kept while positive and non-increasing. A κ within twice its
    standard error of 1 is noise of the estimate and reads as 1, so an independent
    reference does not slow the detectors down. Otherwise the estimate is raised by
    three of its standard errors (≈ κ·√(2·(2·lags + 1)/n), the spectral estimator's):
    an upper bound, since a κ read low makes every test over-confident. (Measured on a
    regime-switching stream whose κ is 14: estimates from 40,000 rows ranged 9.8–18.7.)
    """
    x = np.asarray(series, dtype=np.float64)
    n = len(x)
    if n < 50:
        return 1.0
    x = x - x.mean()
    variance = float(x @ x) / n
    if variance <= 0:
        return 1.0
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(x, size)
    max_lag = max(2, int(n * MAX_LAG_FRACTION))
    autocov = np.fft.irfft(spectrum * np.conj(spectrum), size)[:max_lag] / n
    total = -autocov[0]
    previous = math.inf
    pairs = 0
    for m in range(0, max_lag // 2):
        pair = float(autocov[2 * m] + autocov[2 * m + 1])
        if pair <= 0:
            break
        pair = min(pair, previous)  # the monotone sequence
        total += 2 * pair
        previous = pair
        pairs += 1
    kappa = max(float(total) / variance, 1.0)
    lags = 2 * pairs  # autocorrelations summed beyond lag 0
    noise = 2 * math.sqrt(max(lags, 1) / n) * 2  # two standard errors of 2·Σρ_k
    if kappa - 1.0 <= noise:
        return 1.0
    return kappa * (1.0 + 3 * math.sqrt(2 * (2 * lags + 1) / n))
