"""Channels: one feature's (or the prediction's) reference bins and live counts, plus the ADWIN
that watches a numeric channel's values on the reference CDF (ADR 0016); `channels_for` picks
a monitor's channels from its profile and spec."""

from __future__ import annotations

import hashlib
import json
import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from itertools import repeat
from numbers import Real
from typing import Any, Literal, TypeAlias

import numpy as np

from mlbus.driftstats._models import FeatureKind
from mlbus.errors import ConfigError
from mlbus.profiles import (
    OTHER,
    CategoricalProfile,
    ColumnProfile,
    NumericProfile,
    ReferenceProfile,
    category_key,
    cdf_positions,
    is_missing,
)
from mlbus.seasons import phase_distributions
from mlbus.spec import DriftSpec

ChannelKind: TypeAlias = Literal["covariate", "prediction"]
KNOWN_TESTS = ("psi", "ks", "chi2", "jensen_shannon")
NUMERIC_PREDICTION_TESTS = ("psi", "ks")
CATEGORICAL_PREDICTION_TESTS = ("chi2",)
PREDICTION: Literal["prediction"] = "prediction"

MIN_EXPECTED_PER_BIN = 5
"""A reference category expected fewer times than this in a full window is pooled under OTHER,
so chi-square's expected counts stay large enough for its distribution to hold."""
ADAPTIVE_CLOCK = 16

DEPENDENT_ADWIN_MARGIN = 2.0
ABSENT: Any = object()  # a feature not in the observation: no sample at all
NOT_COUNTED = -1
INVALID = -2
PLAIN_NUMBERS = {float, int, type(None)}
_STRINGS = {str}
EXACT_INT = 2.0**53
"""ints beyond this may round to a cut point as floats: bin_of compares them exactly."""


class Channel:
    """One feature's (or the prediction's) bins: reference counts and live counts.

    A seasonal reference (ADR 0022) also has the bins' probabilities per phase
    (`phase_probabilities`, phases × bins) and how many rows stand behind each
    (`phase_weight`); a window is then compared with the mix of the phases it holds.
    `kappa` is the reference's dependence: the tests weigh n values as n/κ.
    """

    def __init__(
        self,
        name: str,
        kind: ChannelKind,
        tests: tuple[str, ...],
        reference: np.ndarray,
        phase_counts: np.ndarray | None,
        kappa: float,
        cycles: float = 0.0,
    ) -> None:
        self.name = name
        self.kind = kind
        self.tests = tests
        self.reference = reference  # per bin, the missing bin last
        self.missing = len(reference) - 1
        self.counts = [0] * len(reference)
        self.invalid = 0
        self.kappa = kappa
        self.icc = 0.0  # values alike within an entity: set from the profile (ADR 0022)
        self.cycles = cycles
        # ADWIN's tail bound treats n/κ values as independent; dependent data that comes
        # in clumps (regimes, bursts) has heavier tails than its κ says, so a dependent
        # channel's ADWIN doubles κ (measured in ADR 0022; its window tests need no margin).
        # A seasonal channel's ADWIN multiplies it by 1 + ρ as the traffic goes (see _rate);
        # its window tests count the same error through the reference's effective size.
        self.adaptive_kappa = kappa * DEPENDENT_ADWIN_MARGIN if kappa > 1 else 1.0
        self.phase_counts = phase_counts
        if phase_counts is None:
            self.phase_probabilities = None
            self.phase_weight = None
        else:
            self.phase_probabilities, self.phase_weight = phase_distributions(phase_counts)
        # the phases this channel's reference knows (None: all); the monitor leaves the
        # others' values uncounted (a prediction profiled on half a day, `known_phases`)
        self.known: np.ndarray | None = None
        # ADWIN on the reference CDF at each value's bin (numeric channels, see enable_adaptive):
        # pits[phase, bin], and the delta of its checks (None: no ADWIN)
        self.adaptive_delta: float | None = None
        self.pits = np.zeros((0, 0), dtype=np.float64)

    def expected(self, phase_rows: np.ndarray | None) -> np.ndarray:
        """The reference counts a window holding `phase_rows` rows per phase is tested against.

        Without phases: the reference as profiled. With them: the phases' distributions
        mixed in the window's proportions, as counts of the effective number of reference
        rows behind that mix (1 / Σ w²/rows: a window of one hour has one hour's rows).
        """
        if self.phase_probabilities is None or phase_rows is None:
            return self.reference
        if self.known is not None:  # rows of other phases were not counted here
            phase_rows = phase_rows * self.known
        if phase_rows.sum() == 0:
            return self.reference
        assert self.phase_weight is not None
        share = phase_rows / phase_rows.sum()
        mix = share @ self.phase_probabilities
        effective = 1.0 / float(np.sum(share * share / self.phase_weight))
        counts: np.ndarray = mix * effective
        return counts

    def _fingerprint_extra(self) -> list[object]:
        """What a seasonal or dependent reference adds to the layout (nothing otherwise, so
        states written before ADR 0022 restore into channels of the same profile)."""
        extra: list[object] = []
        if self.phase_counts is not None:
            extra.append(self.phase_counts.tolist())
        if self.kappa != 1.0:
            extra.append(self.kappa)
        return extra

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    def layout(self) -> str:
        raise NotImplementedError

    def bin_of(self, value: Any) -> int:
        raise NotImplementedError

    def add(self, value: Any) -> int:
        """Count one value; its bin index (or NOT_COUNTED, INVALID)."""
        index = self.bin_of(value)
        if index >= 0:
            self.counts[index] += 1
        elif index == INVALID:
            self.invalid += 1
        return index

    def bins_of(self, values: list[Any]) -> np.ndarray:
        """`bin_of` for many values (the batch path)."""
        return np.asarray([self.bin_of(v) for v in values], dtype=np.int64)

    def positions(self, indexes: np.ndarray, phases: np.ndarray) -> np.ndarray:
        """Each value's position on its phase's reference CDF (NaN where there is no value)."""
        present = (indexes >= 0) & (indexes < self.missing)
        if present.all():
            return self.pits[phases, indexes]  # type: ignore[no-any-return]
        positions = np.full(len(indexes), np.nan)
        positions[present] = self.pits[phases[present], indexes[present]]
        return positions

    def count(self, indexes: np.ndarray) -> None:
        """Count bin indexes from bin_of (the batch path of `add`, without ADWIN)."""
        counted = indexes[indexes >= 0]
        if counted.size:
            added = np.bincount(counted, minlength=len(self.counts))
            self.counts = [c + int(a) for c, a in zip(self.counts, added, strict=True)]
        self.invalid += int(np.count_nonzero(indexes == INVALID))

    def reset(self) -> None:
        self.counts = [0] * len(self.counts)
        self.invalid = 0

    @property
    def samples(self) -> int:
        return sum(self.counts)

    @property
    def present(self) -> int:
        return self.samples - self.counts[self.missing]


class NumericChannel(Channel):
    feature_kind: FeatureKind = "numeric"

    def __init__(
        self, name: str, kind: ChannelKind, tests: tuple[str, ...], profile: NumericProfile
    ) -> None:
        self.edges = list(profile.edges)
        self.edges_array = np.asarray(self.edges, dtype=np.float64)
        super().__init__(
            name,
            kind,
            tests,
            np.asarray((*profile.counts, profile.missing), dtype=np.float64),
            np.asarray(profile.phase_counts, dtype=np.float64) if profile.phase_counts else None,
            profile.dependence,
            profile.cycles,
        )
        self.icc = profile.entity_icc

    def layout(self) -> str:
        return fingerprint(
            ["numeric", self.edges, self.reference.tolist(), *self._fingerprint_extra()]
        )

    def enable_adaptive(self, delta: float) -> None:
        """Run ADWIN on F_ref(value) - 1/2, F_ref(value) being its bin's mid-point on the CDF.

        Whatever the feature's scale or tails, the values are bounded, so ADWIN's
        bound holds, and a shift in location moves their mean. Drawn from the
        reference, F_ref's mean is exactly 1/2 (Σ p_b (C_b-1 + p_b/2) = 1/2), so
        centred values keep |x - mean| <= max |x| = ADWIN's range R (< 1/2).
        Checked every 16 values (River: 32) with `delta` per check, against the
        Bennett-Hoeffding bound (the tightest for a given variance and range; see
        Adwin's `bound` and ADR 0016). A seasonal reference has one CDF per phase, so
        a value is placed among the reference values of its own hour (ADR 0022); a
        dependent one (κ > 1) makes ADWIN count n values as n/κ.
        """
        if self.phase_probabilities is None:
            present = self.reference[:-1]
            total = present.sum()
            below = np.cumsum(present) - present
            self.pits = ((below + present / 2) / total - 0.5)[None, :]
        else:
            self.pits = cdf_positions(self.phase_probabilities[:, :-1])
        self.adaptive_delta = delta

    def bin_of(self, value: Any) -> int:
        kind = type(value)
        if kind is float:
            return self.missing if value != value else bisect_left(self.edges, value)
        if kind is int:
            return bisect_left(self.edges, value)  # exact even beyond float range
        if value is None or value is ABSENT:
            return NOT_COUNTED if value is ABSENT else self.missing
        return self._bin_of_other(value)

    def bins_of(self, values: list[Any]) -> np.ndarray:
        """`bin_of` for many values: numpy's search when they are all floats and ints."""
        kinds = set(map(type, values))
        if kinds <= PLAIN_NUMBERS:
            try:
                numbers = np.asarray(values, dtype=np.float64)  # None: NaN
            except OverflowError:  # an int no float holds: compared exactly below
                return super().bins_of(values)
            if int not in kinds or not (np.abs(numbers) >= EXACT_INT).any():
                indexes = np.searchsorted(self.edges_array, numbers, side="left")
                indexes[np.isnan(numbers)] = self.missing
                return indexes.astype(np.int64, copy=False)
        return super().bins_of(values)

    def _bin_of_other(self, value: Any) -> int:
        if isinstance(value, bool):
            return bisect_left(self.edges, int(value))
        if not isinstance(value, Real):  # strings, bytes, containers: a contract problem
            return INVALID
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            return INVALID
        return self.missing if math.isnan(number) else bisect_left(self.edges, number)


class CategoricalChannel(Channel):
    feature_kind: FeatureKind = "categorical"

    def __init__(
        self,
        name: str,
        kind: ChannelKind,
        tests: tuple[str, ...],
        profile: CategoricalProfile,
        window_size: int,
    ) -> None:
        total = profile.n
        # frequent categories keep a bin; rare ones, the profile's own OTHER and unseen ones pool
        self.categories = [
            category
            for category, count in profile.frequencies.items()
            if category != OTHER and count * window_size >= MIN_EXPECTED_PER_BIN * total
        ]
        self.index = {category: i for i, category in enumerate(self.categories)}
        self.other = len(self.categories)
        reference = np.zeros(len(self.categories) + 2, dtype=np.float64)
        for category, count in profile.frequencies.items():
            reference[self.index.get(category, self.other)] += count
        reference[-1] = profile.missing
        phase_counts = None
        if profile.phase_counts:
            # the profile's columns (frequencies order, then missing) onto this channel's bins
            target = [self.index.get(category, self.other) for category in profile.frequencies]
            target.append(len(reference) - 1)
            mapping = np.zeros((len(target), len(reference)), dtype=np.float64)
            mapping[np.arange(len(target)), target] = 1.0
            phase_counts = np.asarray(profile.phase_counts, dtype=np.float64) @ mapping
        super().__init__(
            name, kind, tests, reference, phase_counts, profile.dependence, profile.cycles
        )
        self.icc = profile.entity_icc

    def layout(self) -> str:
        return fingerprint(
            ["categorical", self.categories, self.reference.tolist(), *self._fingerprint_extra()]
        )

    def bin_of(self, value: Any) -> int:
        if type(value) is str:
            return self.index.get(value, self.other)
        if value is None or value is ABSENT:
            return NOT_COUNTED if value is ABSENT else self.missing
        return self._bin_of_other(value)

    def bins_of(self, values: list[Any]) -> np.ndarray:
        if set(map(type, values)) == _STRINGS:
            return np.asarray(list(map(self.index.get, values, repeat(self.other))), np.int64)
        return super().bins_of(values)

    def _bin_of_other(self, value: Any) -> int:
        if not isinstance(value, str | bytes | bool | Real | np.generic):
            return INVALID
        try:
            if is_missing(value) or (isinstance(value, Real) and math.isnan(float(value))):
                return self.missing
            key = category_key(value)
        except (TypeError, ValueError, OverflowError, UnicodeError):
            return INVALID
        return self.index.get(key, self.other)


def fingerprint(value: object) -> str:
    text = json.dumps(value, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def channels_for(
    profile: ReferenceProfile,
    spec: DriftSpec,
    features: Mapping[str, str],
    tests: Mapping[str, Sequence[str]],
) -> tuple[list[Channel], dict[str, str]]:
    """The channels a monitor watches (the `features` its profile has, then the prediction),
    and what was skipped and why. An unknown test name is a ConfigError."""
    channels: list[Channel] = []
    skipped: dict[str, str] = {}
    for name, declared in features.items():
        wanted = tuple(tests.get(name, ()))
        unknown = [t for t in wanted if t not in KNOWN_TESTS]
        if unknown:
            raise ConfigError(
                f"drift tests for {name!r}: unknown {unknown}, expected some of {KNOWN_TESTS}"
            )
        column = profile.features.get(name)
        if column is None:
            skipped[name] = "not in the model's reference profile"
            continue
        if declared not in ("numeric", "categorical"):
            skipped[name] = f"kind {declared!r} is not tested for drift"
            continue
        if column.kind != declared:
            skipped[f"{name}:kind"] = (
                f"declared {declared}, profiled {column.kind}: tested as {column.kind}"
            )
        channel = _channel(name, "covariate", wanted, column, spec.window_size, skipped)
        if channel is not None:
            channels.append(channel)
    if spec.prediction_drift:
        if profile.prediction is None:
            skipped[PREDICTION] = "the reference profile has no prediction column"
        else:
            column = profile.prediction
            numeric = column.kind == "numeric"
            wanted = NUMERIC_PREDICTION_TESTS if numeric else CATEGORICAL_PREDICTION_TESTS
            channel = _channel(PREDICTION, PREDICTION, wanted, column, spec.window_size, skipped)
            if channel is not None:
                channels.append(channel)
    return channels, skipped


def _channel(
    name: str,
    kind: ChannelKind,
    wanted: tuple[str, ...],
    column: ColumnProfile,
    window_size: int,
    skipped: dict[str, str],
) -> Channel | None:
    if not wanted:
        skipped[name] = "no tests configured"
        return None
    if column.n == 0:
        skipped[name] = "the reference profile has no values for it"
        return None
    if isinstance(column, NumericProfile):
        return NumericChannel(name, kind, wanted, column)
    applicable = tuple(t for t in wanted if t != "ks")
    if len(applicable) < len(wanted):
        skipped[f"{name}:ks"] = "ks needs ordered values; the feature is categorical"
    if not applicable:
        return None
    return CategoricalChannel(name, kind, applicable, column, window_size)
