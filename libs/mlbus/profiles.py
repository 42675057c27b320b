"""Reference profiles: the distributions a model was trained on, shipped with the model.

The trainer computes one from its training rows (or a user from a sample, for a
model trained elsewhere), the registry stores it with the model version, and
the drift detector compares live windows against it. It is plain JSON:

    profile = ReferenceProfile.from_samples({"amount": amounts, "country": countries},
                                            predictions=scores)
    text = profile.model_dump_json()
    ReferenceProfile.model_validate_json(text).features["amount"].bin_counts(live)

- A numeric feature keeps quantile cut points `edges` (ascending, unique) and
  `counts` of len(edges) + 1 bins: (-inf, e0], (e0, e1], …, (e_last, +inf).
  `bin_counts` bins live values the same way, so both sides always share bins.
- A categorical feature (strings, booleans) keeps category frequencies.
- Missing values (None, NaN) are counted apart, never binned.
- Given the samples' event times, a profile also keeps each column's counts per
  phase of the cycle (`seasonality`: hour of day or of week) and the dependence κ
  of consecutive values (`mlbus.seasons`, ADR 0022), so the drift monitor compares
  a live window with the same hours of the reference, and weighs dependent events
  for what they are worth.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeAlias

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from mlbus.season_choice import choose_seasonality, cycle_shown, finer_phases, spanned_once
from mlbus.seasons import (
    CYCLE_S,
    HOUR_MINUTES,
    UTC_ZONE,
    PhaseMinutes,
    PhaseMinutesChoice,
    Seasonality,
    SeasonalityChoice,
    check_timezone,
    cycle_label,
    cycles_of,
    dependence,
    epoch_seconds,
    local_clock,
    other_cycles_share,
    phase_count,
    phase_distributions,
    phases_of,
)

DEFAULT_BINS = 10
MAX_CATEGORIES = 1000
"""Categories beyond the most frequent `MAX_CATEGORIES` are pooled under `OTHER`."""
OTHER = "__other__"


class _Profile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Column(_Profile):
    """What a column knows of time when its rows had event times (ADR 0022)."""

    phase_counts: tuple[tuple[int, ...], ...] = Field(
        default=(),
        description="Per phase of the profile's seasonality: the counts in the column's bin "
        "(numeric) or `frequencies` (categorical) order, then the missing count.",
    )
    dependence: float = Field(default=1.0, ge=1.0, description="κ of consecutive values.")
    cycles: float = Field(
        default=0.0, ge=0, description="How many cycles of the seasonality its rows span."
    )
    entity_icc: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of its variance between entities (values of one entity are alike).",
    )


class NumericProfile(_Column):
    """Quantile bins of a numeric column."""

    kind: Literal["numeric"] = "numeric"
    edges: tuple[float, ...] = Field(description="Ascending unique cut points (bin upper bounds).")
    counts: tuple[int, ...] = Field(description="len(edges) + 1 counts; the last bin is open.")
    missing: int = Field(default=0, ge=0)
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None

    @property
    def n(self) -> int:
        return sum(self.counts)

    def bin_counts(self, values: Iterable[Any]) -> np.ndarray:
        """Counts of `values` in this profile's bins (missing values left out)."""
        data = _as_float(values)
        data = data[~np.isnan(data)]
        index = np.searchsorted(np.asarray(self.edges, dtype=np.float64), data, side="left")
        return np.bincount(index, minlength=len(self.edges) + 1).astype(np.int64)

    def fractions(self) -> np.ndarray:
        total = self.n
        counts = np.asarray(self.counts, dtype=np.float64)
        return counts / total if total else counts


class CategoricalProfile(_Column):
    """Frequencies of a categorical column (values as strings)."""

    kind: Literal["categorical"] = "categorical"
    frequencies: dict[str, int]
    missing: int = Field(default=0, ge=0)

    @property
    def n(self) -> int:
        return sum(self.frequencies.values())

    def counts_for(self, values: Iterable[Any]) -> dict[str, int]:
        """Live counts keyed like `frequencies`; unseen categories are pooled under OTHER."""
        counts = dict.fromkeys(self.frequencies, 0)
        for value in values:
            if _is_missing(value):
                continue
            key = _category(value)
            if key not in counts:
                key = OTHER
            counts[key] = counts.get(key, 0) + 1
        return counts


ColumnProfile: TypeAlias = Annotated[
    NumericProfile | CategoricalProfile, Field(discriminator="kind")
]


class Calibration(_Profile):
    """A replay of held-out reference rows, in time order, through a drift monitor.

    Data from the reference's own process should raise no alarm; `detections` > 0
    says this profile (or these drift settings) will alarm on a stationary stream.
    """

    events: int = Field(ge=0)
    windows: int = Field(ge=0)
    detections: int = Field(ge=0)
    drifted_windows: int = Field(ge=0)
    tests: tuple[str, ...] = Field(default=(), description="feature:test of each detection")
    span_s: float = Field(default=0.0, ge=0, description="event time the replay covered")

    @property
    def alarms(self) -> bool:
        return self.detections > 0


ErrorMetric: TypeAlias = Literal["brier", "absolute"]
"""A labelled outcome's error: (score - label)² for a classifier (label 0/1, the
Brier score of one row), |label - score| for a regressor (ADR 0031)."""


class PerformanceReference(_Profile):
    """The holdout's errors, what live outcomes' errors are tested against (ADR 0031).

    `errors` is keyed by outcome group: a classifier's "negative" and "positive"
    labels, a regressor's "all"; each a numeric profile of that group's errors in the
    holdout (mean, std, n, κ in event-time order).
    """

    metric: ErrorMetric
    errors: dict[str, NumericProfile]

    def summary(self) -> str:
        shown = ", ".join(
            f"{group} {'?' if e.mean is None else f'{e.mean:.3g}'} (n={e.n:,})"
            for group, e in sorted(self.errors.items())
        )
        return f"holdout {self.metric} error: {shown}"


class ReferenceProfile(_Profile):
    """Per-feature and prediction distributions of the data a model was built on.

    `n_samples` counts the feature rows; the prediction profile may come from
    other rows (the trainer scores the holdout) and carries its own counts.
    """

    n_samples: int = Field(ge=0)
    features: dict[str, ColumnProfile]
    prediction: ColumnProfile | None = None
    bins: int = Field(default=DEFAULT_BINS, ge=1)
    seasonality: Seasonality = Field(
        default="none", description="The cycle the columns' phase_counts follow."
    )
    timezone: str = Field(
        default=UTC_ZONE,
        description="The wall clock the phases are hours of (an IANA name, ADR 0032).",
    )
    phase_minutes: PhaseMinutes = Field(
        default=HOUR_MINUTES,
        description="The phases' width: the hour, or its half or quarter (ADR 0033).",
    )
    calibration: Calibration | None = None
    performance: PerformanceReference | None = Field(
        default=None, description="The holdout's errors (none: the trainer did not label it)."
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @model_validator(mode="after")
    def _counts_per_phase(self) -> ReferenceProfile:
        """Every column's counts have a row per phase of the profile's cycle and width (a
        hand-edited `phase_minutes` would otherwise fail only when a monitor is built)."""
        columns = {**self.features, "prediction": self.prediction}
        if self.performance is not None:
            columns.update({f"error:{g}": e for g, e in self.performance.errors.items()})
        for name, column in columns.items():
            if (
                column is not None
                and column.phase_counts
                and len(column.phase_counts) != self.phases
            ):
                raise ValueError(
                    f"{name}: {len(column.phase_counts)} rows of phase_counts, expected "
                    f"{self.phases} ({self.seasonality}, {self.phase_minutes}-minute phases)"
                )
        return self

    @model_serializer(mode="wrap")
    def _defaults_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """UTC and hourly phases, the defaults, are not written: such a profile reads as
        before for a registry or drift service older than `timezone` and `phase_minutes`
        (they forbid unknown fields)."""
        data: dict[str, Any] = handler(self)
        if data.get("timezone") == UTC_ZONE:
            del data["timezone"]
        if data.get("phase_minutes") == HOUR_MINUTES:
            del data["phase_minutes"]
        return data

    @property
    def phases(self) -> int:
        return phase_count(self.seasonality, self.phase_minutes)

    def summary(self) -> str:
        """One line for people: size, seasonality, dependent columns, and the calibration
        verdict (a profile that alarms on its own held-out data says so first)."""
        parts = [f"{self.n_samples} samples, {len(self.features)} features"]
        if self.prediction is not None:
            parts[0] += ", predictions"
        cycle = cycle_label(self.seasonality, self.timezone, self.phase_minutes)
        parts.append(f"seasonality {cycle}")
        if self.performance is not None:
            parts.append(self.performance.summary())
        columns = dict(self.features)
        if self.prediction is not None:
            columns["prediction"] = self.prediction
        dependent = {name: c.dependence for name, c in columns.items() if c.dependence > 1}
        if dependent:
            shown = ", ".join(f"{n} κ={k:.1f}" for n, k in sorted(dependent.items())[:3])
            more = f" and {len(dependent) - 3} more" if len(dependent) > 3 else ""
            parts.append(f"dependent: {shown}{more}")
        calibration = self.calibration
        if calibration is None:
            parts.append("not calibrated")
        elif calibration.alarms:
            parts.insert(
                0,
                f"ALARMS ON ITS OWN HELD-OUT DATA: {calibration.detections} detection(s) in "
                f"{calibration.events:,} replayed events ({', '.join(calibration.tests[:3])})",
            )
        else:
            parts.append(
                f"calibrated: no alarm in {calibration.events:,} held-out events "
                f"({calibration.windows} windows, {calibration.span_s / 3600:.1f} h)"
            )
        return "; ".join(parts)

    @classmethod
    def from_samples(
        cls,
        columns: Mapping[str, Sequence[Any] | np.ndarray],
        predictions: Sequence[Any] | np.ndarray | None = None,
        *,
        bins: int = DEFAULT_BINS,
        times: Sequence[Any] | np.ndarray | None = None,
        prediction_times: Sequence[Any] | np.ndarray | None = None,
        seasonality: SeasonalityChoice = "auto",
        entities: Sequence[str] | None = None,
        prediction_entities: Sequence[str] | None = None,
        timezone: str = UTC_ZONE,
        phase_minutes: PhaseMinutesChoice = "auto",
    ) -> ReferenceProfile:
        """Profile each column (numeric: quantile bins; strings/booleans: frequencies).

        `times` (aware datetimes or epoch seconds, one per row) are the rows' event
        times: with them each column also gets its counts per phase of `seasonality`
        (`auto`: the longest cycle the times cover twice, see mlbus.seasons) and the
        dependence of its values in time order. `prediction_times` are the times of
        `predictions` when they come from other rows (the trainer scores its holdout).
        `entities` (and `prediction_entities`) are the rows' entity keys: each column
        then measures how alike one entity's values are (`entity_icc`, ADR 0022).
        `timezone` is the wall clock whose hours the phases are (ADR 0032), and
        `phase_minutes` their width (`auto`: the hour, or finer where the columns show
        structure inside the hour, `season_choice.finer_phases`, ADR 0033).
        """
        check_timezone(timezone)
        lengths = {len(values) for values in columns.values()}
        if times is not None:
            lengths.add(len(times))
        if len(lengths) > 1:
            raise ValueError(f"columns and times differ in length: {sorted(lengths)}")
        n_rows = lengths.pop() if lengths else 0
        if prediction_times is None and predictions is not None and times is not None:
            prediction_times = times
        if (
            predictions is not None
            and prediction_times is not None
            and len(predictions) != len(prediction_times)
        ):
            raise ValueError("predictions and prediction_times differ in length")
        if predictions is not None and prediction_times is None and len(predictions) != n_rows:
            raise ValueError(
                f"columns and predictions differ in length: {sorted({n_rows, len(predictions)})}"
            )
        # the rows' clock seconds: every phase below is a part of that clock's day or week
        seconds = None if times is None else local_clock(epoch_seconds(times), timezone)
        season = choose_profile_seasonality(seasonality, seconds, columns)
        minutes = choose_phase_minutes(phase_minutes, seconds, columns, season)
        prediction_seconds = (
            None
            if prediction_times is None
            else local_clock(epoch_seconds(prediction_times), timezone)
        )
        return cls(
            n_samples=n_rows,
            features={
                name: profile_column(values, bins, seconds, season, entities, minutes)
                for name, values in columns.items()
            },
            prediction=None
            if predictions is None
            else profile_column(
                predictions, bins, prediction_seconds, season, prediction_entities, minutes
            ),
            bins=bins,
            seasonality=season,
            timezone=timezone,
            phase_minutes=minutes,
        )


def choose_profile_seasonality(
    choice: SeasonalityChoice,
    seconds: np.ndarray | None,
    columns: Mapping[str, Sequence[Any] | np.ndarray],
) -> Seasonality:
    """`choose_seasonality`, and for `auto` a longer cycle the reference spans only once
    when its columns show it (`season_choice.cycle_shown`): one week of a stream whose
    weekends differ is weekly, one week of a merely daily one stays daily."""
    season = choose_seasonality(choice, seconds)
    longer = spanned_once(season, seconds) if choice == "auto" else None
    if longer is None or seconds is None:
        return season
    coarse = [coarse_bins(np.asarray(values)) for values in columns.values()]
    return longer if cycle_shown(coarse, seconds, longer, season) else season


def choose_phase_minutes(
    choice: PhaseMinutesChoice,
    seconds: np.ndarray | None,
    columns: Mapping[str, Sequence[Any] | np.ndarray],
    season: Seasonality,
) -> PhaseMinutes:
    """The phases' width for a `season` reference: `choice`, or for `auto` the hour unless
    the columns show structure inside it (`season_choice.finer_phases`). Without a cycle there
    is one phase, and the width is the hour's."""
    if season == "none" or seconds is None or len(seconds) == 0:
        return HOUR_MINUTES
    if choice != "auto":
        return choice
    coarse = [coarse_bins(np.asarray(values)) for values in columns.values()]
    return finer_phases(coarse, seconds, season)


COARSE_QUANTILES = (0.25, 0.5, 0.75)
COARSE_CATEGORIES = 3


def coarse_bins(array: np.ndarray) -> tuple[np.ndarray, int]:
    """Each value's bin among a few, missing last, and how many of the first bins are
    ordered: quartiles of a numeric column (3 or 4 ordered), or the most frequent
    categories and the rest (0). Few enough that a phase's reference rows fill them when
    a cycle is tested for (`choose_profile_seasonality`)."""
    if array.ndim != 1:
        raise ValueError(f"expected a one-dimensional column, got shape {array.shape}")
    if _numeric(array):
        data = _as_float(array)
        present = ~np.isnan(data)
        if not present.any():
            return np.zeros(len(data), dtype=np.int64), 0
        edges = np.unique(np.quantile(data[present], COARSE_QUANTILES))
        index = np.searchsorted(edges, data, side="left")
        return np.where(present, index, len(edges) + 1).astype(np.int64), len(edges) + 1
    keys = [None if _is_missing(v) else _category(v) for v in array.tolist()]
    frequent = Counter(k for k in keys if k is not None).most_common(COARSE_CATEGORIES)
    position = {key: i for i, (key, _) in enumerate(frequent)}
    rest, missing = len(position), len(position) + 1
    index = np.asarray([missing if k is None else position.get(k, rest) for k in keys])
    return index.astype(np.int64), 0


def profile_column(
    values: Sequence[Any] | np.ndarray,
    bins: int = DEFAULT_BINS,
    seconds: np.ndarray | None = None,
    seasonality: Seasonality = "none",
    entities: Sequence[str] | None = None,
    phase_minutes: PhaseMinutes = HOUR_MINUTES,
) -> ColumnProfile:
    """A numeric profile for int/float data, a categorical one for anything else.

    With the values' event `seconds` (clock seconds: `seasons.local_clock`), the profile
    also holds its counts per phase of `seasonality` (`phase_minutes` wide) and the
    dependence κ of the values in time order.
    """
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"expected a one-dimensional column, got shape {array.shape}")
    if seconds is not None and len(seconds) != len(array):
        raise ValueError(f"expected {len(array)} times, got {len(seconds)}")
    profile: ColumnProfile = (
        _numeric_profile(array, bins) if _numeric(array) else _categorical_profile(array)
    )
    if entities is not None and len(array):
        if len(entities) != len(array):
            raise ValueError(f"expected {len(array)} entities, got {len(entities)}")
        icc = _entity_icc(profile, _bin_indexes(profile, array), entities)
        profile = profile.model_copy(update={"entity_icc": icc})
    if seconds is None or len(array) == 0:
        return profile
    # each value's bin (missing last), in time order
    order = np.argsort(seconds, kind="stable")
    index = _bin_indexes(profile, array)[order]
    ordered = seconds[order]
    phases = phases_of(ordered, seasonality, phase_minutes)
    row_cycles = cycles_of(ordered, seasonality, phase_minutes)
    kept = profile.counts if isinstance(profile, NumericProfile) else profile.frequencies
    width = len(kept) + 1
    counts = np.zeros((phase_count(seasonality, phase_minutes), width), dtype=np.int64)
    np.add.at(counts, (phases, index), 1)
    cycles = float(np.ptp(seconds)) / CYCLE_S[seasonality]
    update: dict[str, Any] = {
        "dependence": _dependence(
            profile, counts, phases, row_cycles, index, cycles, phases_of(ordered, seasonality)
        )
    }
    if seasonality != "none":
        update["phase_counts"] = tuple(tuple(int(c) for c in row) for row in counts)
        update["cycles"] = cycles
    return profile.model_copy(update=update)


def _bin_indexes(profile: ColumnProfile, array: np.ndarray) -> np.ndarray:
    """Each value's bin in `profile` (numeric bins or categories in order), missing last."""
    if isinstance(profile, NumericProfile):
        data = _as_float(array)
        index = np.searchsorted(np.asarray(profile.edges, dtype=np.float64), data, side="left")
        return np.where(np.isnan(data), len(profile.counts), index)
    position = {category: i for i, category in enumerate(profile.frequencies)}
    other = position.get(OTHER, len(profile.frequencies))
    missing = len(profile.frequencies)
    return np.asarray(
        [missing if _is_missing(v) else position.get(_category(v), other) for v in array.tolist()],
        dtype=np.int64,
    )


SHARES_APART_CYCLES = 4.0
"""From this many cycles on, an indicator's κ is measured less its phase's share over the
whole reference; under it, less its phase's share in the other cycles (see `_dependence`)."""


def _dependence(
    profile: ColumnProfile,
    counts: np.ndarray,
    phases: np.ndarray,
    row_cycles: np.ndarray,
    index: np.ndarray,
    cycles: float,
    hours: np.ndarray,
) -> float:
    """κ of the column in time order: of its CDF positions within their phase (numeric) or
    of each frequent category's indicator, and of its missing indicator; the largest.

    An indicator is taken less its phase's share: a share that follows the hour (online
    payments at night, values missing by night) is the cycle the phases model, not
    dependence (read raw, it made κ 40–120: ADR 0022). From SHARES_APART_CYCLES cycles on
    that share is the phase's over the reference. Under that, an hour's share would be an
    average of two or three days, which a trend across the days (a 7-day aggregate filling
    up) passes for; so each row is taken less its phase's share in the OTHER cycles
    (`other_cycles_share`), against which a trend stays in. That share, read on fewer rows,
    adds its own noise (κ about 1 + 1/(cycles − 1) where the hour explains all): cautious.
    It is the hour's share (`hours`: each row's hourly phase) even when the phases are
    finer (ADR 0033): a quarter hour's share in one or two other days rests on so few rows
    that its noise read as dependence (a categorical κ of 1.5 became 2.7 in quarter hours
    over two days, and a shift of the category was found in 3 of 30 streams, not 20).
    With one cycle there is no other, and the indicator is read raw."""
    missing = counts.shape[1] - 1
    shares = phase_distributions(counts)[0] if cycles >= SHARES_APART_CYCLES else None

    def indicator(column: int) -> np.ndarray:
        hit: np.ndarray = (index == column).astype(np.float64)
        share = (
            other_cycles_share(hit, hours, row_cycles) if shares is None else shares[phases, column]
        )
        residual: np.ndarray = hit - share
        return residual

    series: list[np.ndarray] = [indicator(missing)]
    if isinstance(profile, NumericProfile):
        present = index < missing
        probabilities, _ = phase_distributions(counts[:, :missing])
        positions = cdf_positions(probabilities)
        series.append(positions[phases[present], index[present]])
    else:
        overall = counts[:, :missing].sum(axis=0) / max(len(index), 1)
        frequent = np.flatnonzero(overall >= 0.01)[:20]
        series.extend(indicator(category) for category in frequent)
    varying = [s for s in series if s.size and s.std() > 0]
    return max((dependence(s) for s in varying), default=1.0)


MIN_ENTITIES = 20
"""Fewer entities in a reference measure no intra-entity correlation (ICC reads 0)."""


def _entity_icc(profile: ColumnProfile, index: np.ndarray, entities: Sequence[str]) -> float:
    """The share of the column's variance that lies between entities (one-way ANOVA ICC),
    on its CDF positions (numeric) or each frequent category's indicator, and on its
    missing indicator: the largest. Values of one entity alike (a card's home country)
    read near 1; values that vary per event near 0."""
    keys, group = np.unique(np.asarray(entities, dtype=object), return_inverse=True)
    if len(keys) < MIN_ENTITIES or len(keys) >= len(index):
        return 0.0
    missing = (
        len(profile.counts) if isinstance(profile, NumericProfile) else len(profile.frequencies)
    )
    series: list[np.ndarray] = [(index == missing).astype(np.float64)]
    if isinstance(profile, NumericProfile):
        counts = np.bincount(index[index < missing], minlength=missing).astype(np.float64)
        positions = cdf_positions(counts)[0]
        present = index < missing
        values = np.zeros(len(index))
        values[present] = positions[index[present]]
        series.append(np.where(present, values, 0.0))
    else:
        shares = np.bincount(index, minlength=missing + 1)[:missing] / len(index)
        series.extend((index == c).astype(np.float64) for c in np.flatnonzero(shares >= 0.01)[:20])
    return max((_anova_icc(s, group, len(keys)) for s in series), default=0.0)


def _anova_icc(values: np.ndarray, group: np.ndarray, groups: int) -> float:
    n = len(values)
    sizes = np.bincount(group, minlength=groups).astype(np.float64)
    sums = np.bincount(group, weights=values, minlength=groups)
    mean = values.mean()
    between = float(np.sum(sums * sums / sizes) - n * mean * mean)
    within = float(np.sum(values * values) - np.sum(sums * sums / sizes))
    msb = between / (groups - 1)
    msw = within / (n - groups)
    k0 = (n - float(np.sum(sizes * sizes)) / n) / (groups - 1)
    if msw <= 0 and msb <= 0:
        return 0.0
    icc = (msb - msw) / (msb + (k0 - 1) * msw) if msb + (k0 - 1) * msw > 0 else 0.0
    return float(min(max(icc, 0.0), 1.0))


def cdf_positions(probabilities: np.ndarray) -> np.ndarray:
    """Per row of bin probabilities, each bin's mid-point on the CDF minus 1/2.

    Drawn from those probabilities, the positions average exactly 0, whatever the
    feature's scale or tails (ADR 0016), so a shift in their mean is a shift in the data.
    """
    probabilities = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    totals = probabilities.sum(axis=1, keepdims=True)
    totals[totals == 0] = 1.0
    share = probabilities / totals
    below = np.cumsum(share, axis=1) - share
    positions: np.ndarray = below + share / 2 - 0.5
    return positions


def _numeric(array: np.ndarray) -> bool:
    if array.dtype.kind in "iuf":
        return True
    if array.dtype.kind != "O":
        return False
    present = [v for v in array.tolist() if not _is_missing(v)]
    return bool(present) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in present
    )


def _numeric_profile(array: np.ndarray, bins: int) -> NumericProfile:
    data = _as_float(array)
    missing = int(np.isnan(data).sum())
    present = data[~np.isnan(data)]
    if present.size == 0:
        return NumericProfile(edges=(), counts=(0,), missing=missing)
    quantiles = np.quantile(present, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    edges = tuple(float(e) for e in np.unique(quantiles))
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), present, side="left")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return NumericProfile(
        edges=edges,
        counts=tuple(int(c) for c in counts),
        missing=missing,
        mean=float(present.mean()),
        std=float(present.std()),
        min=float(present.min()),
        max=float(present.max()),
    )


def _categorical_profile(array: np.ndarray) -> CategoricalProfile:
    values = array.tolist()
    missing = sum(1 for v in values if _is_missing(v))
    counter = Counter(_category(v) for v in values if not _is_missing(v))
    frequencies = dict(counter.most_common(MAX_CATEGORIES))
    pooled = sum(counter.values()) - sum(frequencies.values())
    if pooled:
        frequencies[OTHER] = frequencies.get(OTHER, 0) + pooled
    return CategoricalProfile(frequencies=frequencies, missing=missing)


def _as_float(values: Iterable[Any]) -> np.ndarray:
    array = values if isinstance(values, np.ndarray) else np.asarray(list(values), dtype=object)
    if array.dtype.kind in "iuf":
        return array.astype(np.float64)
    return np.asarray([math.nan if _is_missing(v) else float(v) for v in array.tolist()])


def is_missing(value: object) -> bool:
    """None or NaN: counted apart from the bins (the drift detector keys live values alike)."""
    return _is_missing(value)


def category_key(value: object) -> str:
    """The key a categorical value is counted under (booleans as "true"/"false")."""
    return _category(value)


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _category(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
