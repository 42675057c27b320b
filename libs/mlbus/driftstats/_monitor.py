"""DriftMonitor: live windows of one served model version against its reference profile.

Each watched feature (and the prediction) is a channel: the reference's bins
plus a missing bin, and the live window's counts over the same bins. A window
closes after `spec.window_size` observations; its tests run on the counts, the
p-values are corrected together, and the verdict says whether the window
drifted and whether that makes a detection (`spec.persistence` windows in a
row with the same test drifting). Numeric channels also feed an ADWIN with
each value's reference-CDF position; a cut there closes the window early as
a detection. The performance channel is an ADWIN over labelled errors.
Everything is counts and a few floats, so `snapshot()` is small and
`restore()` continues exactly where the snapshot was taken (ADR 0016).
"""

from __future__ import annotations

import hashlib
import json
import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from numbers import Real
from typing import Any, Literal, TypeAlias

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from mlbus.driftstats import _stats
from mlbus.driftstats._adwin import Adwin, AdwinChange, AdwinState
from mlbus.errors import ConfigError, InvalidInput
from mlbus.events import DriftTestResult, Scalar
from mlbus.profiles import (
    OTHER,
    CategoricalProfile,
    ColumnProfile,
    NumericProfile,
    ReferenceProfile,
    category_key,
    is_missing,
)
from mlbus.spec import DriftSpec

FeatureKind: TypeAlias = Literal["numeric", "categorical"]
Correction: TypeAlias = Literal["none", "bonferroni", "benjamini-hochberg"]
ChannelKind: TypeAlias = Literal["covariate", "prediction"]

KNOWN_TESTS = ("psi", "ks", "chi2", "jensen_shannon")
NUMERIC_PREDICTION_TESTS = ("psi", "ks")
CATEGORICAL_PREDICTION_TESTS = ("chi2",)
PREDICTION: Literal["prediction"] = "prediction"
ERROR = "error"
MIN_EXPECTED_PER_BIN = 5
"""A reference category expected fewer times than this in a full window is pooled under OTHER,
so chi-square's expected counts stay large enough for its distribution to hold."""
RECENT_VERDICTS = 5
ADAPTIVE_CLOCK = 16
STATE_FORMAT: Literal[1] = 1

_ABSENT: Any = object()  # a feature not in the observation: no sample at all
_NOT_COUNTED = -1
_INVALID = -2


class DriftStateMismatch(InvalidInput):
    """A snapshot does not fit the monitor it is restored into (other profile, features, bins)."""


# ── public models ────────────────────────────────────────────────────────────


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WindowVerdict(_Frozen):
    """What one closed window (or one ADWIN cut) says; `detection` maps onto a DriftDetected."""

    model: str
    version: int
    results: tuple[DriftTestResult, ...] = Field(
        description="Every test run; p_value is the corrected p-value, compared with alpha."
    )
    drifted: bool
    detection: bool
    window_start: AwareDatetime
    window_end: AwareDatetime
    offsets: dict[str, tuple[int, int]] = Field(
        description="source → (lowest, highest) offset observed in the window"
    )
    n_reference: int = Field(ge=0)
    n_live: int = Field(ge=0)
    correction: Correction
    window_index: int = Field(ge=0, description="Numbers every verdict of this monitor.")
    origin: Literal["window", "performance"] = "window"
    samples: dict[str, int] = Field(
        default_factory=dict, description="channel → values counted in the window (missing incl.)"
    )


class TestStatus(_Frozen):
    """One test on the window being filled: its score so far against the threshold."""

    feature: str
    kind: Literal["covariate", "prediction", "performance"]
    test: str
    score: float
    p_value: float | None
    threshold: float
    samples: int
    enough_samples: bool
    streak: int = Field(description="consecutive closed windows in which this test drifted")


class PerformanceStatus(_Frozen):
    outcomes: int
    window: int
    mean_error: float
    detections: int
    invalid: int


class MonitorStatus(_Frozen):
    """What an operator looks at before trusting an alarm."""

    model: str
    version: int
    window_index: int
    window_size: int
    n_in_window: int
    window_start: AwareDatetime | None
    window_end: AwareDatetime | None
    n_reference: int
    tests: tuple[TestStatus, ...]
    skipped: dict[str, str] = Field(description="feature or feature:test → why it is not tested")
    invalid_values: dict[str, int] = Field(description="channel → values of the wrong type so far")
    adaptive_windows: dict[str, int] = Field(
        default_factory=dict, description="channel → values in its ADWIN window"
    )
    drifted_windows_in_row: int
    performance: PerformanceStatus | None
    recent: tuple[WindowVerdict, ...]
    detections: tuple[WindowVerdict, ...]


class ChannelState(_Frozen):
    layout: str = Field(description="fingerprint of the bins these counts are over")
    counts: tuple[int, ...]
    invalid: int = Field(default=0, ge=0)
    adwin: AdwinState | None = None


class MonitorState(_Frozen):
    """A monitor's whole state: counts over the profile's bins, never raw values."""

    format: Literal[1] = STATE_FORMAT
    model: str
    version: int
    window_index: int = Field(ge=0)
    n_in_window: int = Field(ge=0)
    window_start: AwareDatetime | None = None
    window_end: AwareDatetime | None = None
    offsets: dict[str, tuple[int, int]] = Field(default_factory=dict)
    channels: dict[str, ChannelState]
    streaks: dict[str, int] = Field(default_factory=dict)
    drifted_windows_in_row: int = Field(default=0, ge=0)
    adwin: AdwinState | None = None
    invalid_outcomes: int = Field(default=0, ge=0)
    recent: tuple[WindowVerdict, ...] = ()
    detections: tuple[WindowVerdict, ...] = ()


# ── channels ─────────────────────────────────────────────────────────────────


class _Channel:
    """One feature's (or the prediction's) bins: reference counts and live counts."""

    def __init__(
        self, name: str, kind: ChannelKind, tests: tuple[str, ...], reference: np.ndarray
    ) -> None:
        self.name = name
        self.kind = kind
        self.tests = tests
        self.reference = reference  # per bin, the missing bin last
        self.missing = len(reference) - 1
        self.counts = [0] * len(reference)
        self.invalid = 0
        # ADWIN on the reference CDF at each value's bin (numeric channels, see enable_adaptive)
        self.adwin: Adwin | None = None
        self.pit: list[float] = []

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    def layout(self) -> str:
        raise NotImplementedError

    def bin_of(self, value: Any) -> int:
        raise NotImplementedError

    def add(self, value: Any, at: float) -> AdwinChange | None:
        """Count one value; the change if this channel's ADWIN cut on it."""
        index = self.bin_of(value)
        if index >= 0:
            self.counts[index] += 1
            return self.adapt(index, at)
        if index == _INVALID:
            self.invalid += 1
        return None

    def adapt(self, index: int, at: float) -> AdwinChange | None:
        if self.adwin is None or index >= self.missing or index < 0:
            return None
        return self.adwin.add(self.pit[index], at)

    def count(self, indexes: np.ndarray) -> None:
        """Count bin indexes from bin_of (the batch path of `add`, without ADWIN)."""
        counted = indexes[indexes >= 0]
        if counted.size:
            added = np.bincount(counted, minlength=len(self.counts))
            self.counts = [c + int(a) for c, a in zip(self.counts, added, strict=True)]
        self.invalid += int(np.count_nonzero(indexes == _INVALID))

    def reset(self) -> None:
        self.counts = [0] * len(self.counts)
        self.invalid = 0

    @property
    def samples(self) -> int:
        return sum(self.counts)

    @property
    def present(self) -> int:
        return self.samples - self.counts[self.missing]


class _NumericChannel(_Channel):
    feature_kind: FeatureKind = "numeric"

    def __init__(
        self, name: str, kind: ChannelKind, tests: tuple[str, ...], profile: NumericProfile
    ) -> None:
        self.edges = list(profile.edges)
        super().__init__(
            name, kind, tests, np.asarray((*profile.counts, profile.missing), dtype=np.float64)
        )

    def layout(self) -> str:
        return _fingerprint(["numeric", self.edges, self.reference.tolist()])

    def enable_adaptive(self, delta: float) -> None:
        """Run ADWIN on F_ref(value) - 1/2, F_ref(value) being its bin's mid-point on the CDF.

        Whatever the feature's scale or tails, the values are bounded, so ADWIN's
        bound holds, and a shift in location moves their mean. Drawn from the
        reference, F_ref's mean is exactly 1/2 (Σ p_b (C_b-1 + p_b/2) = 1/2), so
        centred values keep |x - mean| <= max |x| = ADWIN's range R (< 1/2).
        """
        present = self.reference[:-1]
        total = present.sum()
        below = np.cumsum(present) - present
        self.pit = ((below + present / 2) / total - 0.5).tolist()
        # checked every 16 values (River: 32): half the wait, at twice the checking cost
        self.adwin = Adwin(delta, clock=ADAPTIVE_CLOCK)

    def bin_of(self, value: Any) -> int:
        kind = type(value)
        if kind is float:
            return self.missing if value != value else bisect_left(self.edges, value)
        if kind is int:
            return bisect_left(self.edges, value)  # exact even beyond float range
        if value is None or value is _ABSENT:
            return _NOT_COUNTED if value is _ABSENT else self.missing
        return self._bin_of_other(value)

    def _bin_of_other(self, value: Any) -> int:
        if isinstance(value, bool):
            return bisect_left(self.edges, int(value))
        if not isinstance(value, Real):  # strings, bytes, containers: a contract problem
            return _INVALID
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            return _INVALID
        return self.missing if math.isnan(number) else bisect_left(self.edges, number)


class _CategoricalChannel(_Channel):
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
        super().__init__(name, kind, tests, reference)

    def layout(self) -> str:
        return _fingerprint(["categorical", self.categories, self.reference.tolist()])

    def bin_of(self, value: Any) -> int:
        if type(value) is str:
            return self.index.get(value, self.other)
        if value is None or value is _ABSENT:
            return _NOT_COUNTED if value is _ABSENT else self.missing
        return self._bin_of_other(value)

    def _bin_of_other(self, value: Any) -> int:
        if not isinstance(value, str | bytes | bool | Real | np.generic):
            return _INVALID
        try:
            if is_missing(value) or (isinstance(value, Real) and math.isnan(float(value))):
                return self.missing
            key = category_key(value)
        except (TypeError, ValueError, OverflowError, UnicodeError):
            return _INVALID
        return self.index.get(key, self.other)


def _fingerprint(value: object) -> str:
    text = json.dumps(value, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ── the monitor ──────────────────────────────────────────────────────────────


class DriftMonitor:
    """Drift of one served model version against its ReferenceProfile. Pure and deterministic.

    `features`: the refs to watch (keys of PredictionLogged.features) with the
    kind the spec gives them; `tests`: per feature the tests to run (from
    DriftSpec.tests_for; empty skips it). The profile decides the bins: a
    feature whose profile kind disagrees with `features` is tested as the
    profile has it (noted in status()); a test that does not apply (ks on a
    categorical) and features missing from the profile are skipped and listed
    in status().skipped. An unknown test name is a ConfigError.

    `adaptive` (default on): every numeric channel also runs ADWIN on its
    values' reference-CDF positions, with spec.adwin_delta shared among them
    (Bonferroni). When one cuts, the window closes at once with a detection
    whose results include that "adwin" result: an abrupt shift is caught in
    about a hundred events instead of `persistence` whole windows.
    """

    def __init__(
        self,
        model: str,
        version: int,
        profile: ReferenceProfile,
        spec: DriftSpec,
        features: Mapping[str, str],
        tests: Mapping[str, Sequence[str]],
        *,
        adaptive: bool = True,
    ) -> None:
        self.model = model
        self.version = version
        self.profile = profile
        self.spec = spec
        self.skipped: dict[str, str] = {}
        self._channels = self._build_channels(features, tests)
        self._prediction = next((c for c in self._channels if c.kind == PREDICTION), None)
        self._covariates = [c for c in self._channels if c.kind == "covariate"]
        numeric = [c for c in self._channels if isinstance(c, _NumericChannel)]
        if adaptive:
            for channel in numeric:
                channel.enable_adaptive(spec.adwin_delta / len(numeric))
        self._adwin = Adwin(spec.adwin_delta) if spec.performance_drift else None
        self._invalid_outcomes = 0
        self._window_index = 0
        self._n = 0
        self._start: datetime | None = None
        self._end: datetime | None = None
        self._offsets: dict[str, tuple[int, int]] = {}
        self._streaks: dict[str, int] = {}
        self._drifted_in_row = 0
        self._recent: tuple[WindowVerdict, ...] = ()
        self._detections: tuple[WindowVerdict, ...] = ()

    def _build_channels(
        self, features: Mapping[str, str], tests: Mapping[str, Sequence[str]]
    ) -> list[_Channel]:
        channels: list[_Channel] = []
        for name, declared in features.items():
            wanted = tuple(tests.get(name, ()))
            unknown = [t for t in wanted if t not in KNOWN_TESTS]
            if unknown:
                raise ConfigError(
                    f"drift tests for {name!r}: unknown {unknown}, expected some of {KNOWN_TESTS}"
                )
            column = self.profile.features.get(name)
            if column is None:
                self.skipped[name] = "not in the model's reference profile"
                continue
            if declared not in ("numeric", "categorical"):
                self.skipped[name] = f"kind {declared!r} is not tested for drift"
                continue
            if column.kind != declared:
                self.skipped[f"{name}:kind"] = (
                    f"declared {declared}, profiled {column.kind}: tested as {column.kind}"
                )
            channel = self._channel(name, "covariate", wanted, column)
            if channel is not None:
                channels.append(channel)
        if self.spec.prediction_drift:
            if self.profile.prediction is None:
                self.skipped[PREDICTION] = "the reference profile has no prediction column"
            else:
                column = self.profile.prediction
                wanted = (
                    NUMERIC_PREDICTION_TESTS
                    if column.kind == "numeric"
                    else CATEGORICAL_PREDICTION_TESTS
                )
                channel = self._channel(PREDICTION, PREDICTION, wanted, column)
                if channel is not None:
                    channels.append(channel)
        return channels

    def _channel(
        self, name: str, kind: ChannelKind, wanted: tuple[str, ...], column: ColumnProfile
    ) -> _Channel | None:
        if not wanted:
            self.skipped[name] = "no tests configured"
            return None
        if column.n == 0:
            self.skipped[name] = "the reference profile has no values for it"
            return None
        if isinstance(column, NumericProfile):
            return _NumericChannel(name, kind, wanted, column)
        applicable = tuple(t for t in wanted if t != "ks")
        if len(applicable) < len(wanted):
            self.skipped[f"{name}:ks"] = "ks needs ordered values; the feature is categorical"
        if not applicable:
            return None
        return _CategoricalChannel(name, kind, applicable, column, self.spec.window_size)

    # ── observing ────────────────────────────────────────────────────────────

    def observe(
        self,
        features: Mapping[str, Scalar],
        prediction: float | None,
        *,
        at: datetime,
        source: str,
        offset: int,
    ) -> WindowVerdict | None:
        """One served prediction; the verdict when it closes a window, else None.

        A window closes after `spec.window_size` observations, or earlier when
        an adaptive ADWIN cuts on this observation (then it is a detection).

        Values never make this raise: None/NaN count as missing, values of the
        wrong type are counted as invalid (see status()), unseen categories pool
        under OTHER. A None prediction is not counted; a naive `at` is read as UTC.
        """
        if self._n >= self.spec.window_size:  # restored under a smaller window_size
            self._close_window([])
        if not isinstance(features, Mapping):
            features = {}
        at = _aware(at)
        stamp = at.timestamp()
        changes: list[tuple[_Channel, AdwinChange]] = []
        for channel in self._covariates:
            change = channel.add(features.get(channel.name, _ABSENT), stamp)
            if change is not None:
                changes.append((channel, change))
        if self._prediction is not None:
            change = self._prediction.add(_ABSENT if prediction is None else prediction, stamp)
            if change is not None:
                changes.append((self._prediction, change))
        self._extend_window(at, at, source, offset, offset)
        self._n += 1
        if changes or self._n >= self.spec.window_size:
            return self._close_window(changes)
        return None

    def observe_many(
        self,
        rows: Sequence[Mapping[str, Scalar]],
        predictions: Sequence[float | None] | None,
        *,
        at: Sequence[datetime],
        source: str,
        offsets: Sequence[int],
    ) -> list[WindowVerdict]:
        """`observe` for a batch from one source, counted per channel at once.

        Exactly equivalent to calling `observe` row by row (same counts, same
        windows, same verdicts), only faster.
        """
        n = len(rows)
        if len(at) != n or len(offsets) != n or (predictions is not None and len(predictions) != n):
            raise ValueError(
                f"rows ({n}), at ({len(at)}), offsets ({len(offsets)}) and predictions "
                f"({'none' if predictions is None else len(predictions)}) must be as long"
            )
        verdicts: list[WindowVerdict] = []
        begin = 0
        while begin < n:
            if self._n >= self.spec.window_size:
                verdicts.append(self._close_window([]))
            end = min(n, begin + self.spec.window_size - self._n)
            chunk = [row if isinstance(row, Mapping) else {} for row in rows[begin:end]]
            indexes: list[list[int]] = []
            for channel in self._channels:
                if channel is self._prediction:
                    scores = [None] * len(chunk) if predictions is None else predictions[begin:end]
                    values: list[Any] = [_ABSENT if p is None else p for p in scores]
                else:
                    values = [row.get(channel.name, _ABSENT) for row in chunk]
                indexes.append([channel.bin_of(v) for v in values])
            times = [_aware(t) for t in at[begin:end]]
            changes, taken = self._adapt_many(indexes, times)
            for channel, channel_indexes in zip(self._channels, indexes, strict=True):
                channel.count(np.asarray(channel_indexes[:taken], dtype=np.int64))
            end = begin + taken
            span = offsets[begin:end]
            times = times[:taken]
            self._extend_window(min(times), max(times), source, min(span), max(span))
            self._n += taken
            begin = end
            if changes or self._n >= self.spec.window_size:
                verdicts.append(self._close_window(changes))
        return verdicts

    def _adapt_many(
        self, indexes: list[list[int]], times: list[datetime]
    ) -> tuple[list[tuple[_Channel, AdwinChange]], int]:
        """Feed the ADWINs row by row, as observe() would; stop after the first row that cuts."""
        feeds = [
            (channel, channel_indexes, channel.pit, channel.missing, channel.adwin)
            for channel, channel_indexes in zip(self._channels, indexes, strict=True)
            if channel.adwin is not None
        ]
        if not feeds:
            return [], len(times)
        changes: list[tuple[_Channel, AdwinChange]] = []
        for row, at in enumerate(times):
            stamp = at.timestamp()
            for channel, channel_indexes, pit, missing, adwin in feeds:
                index = channel_indexes[row]
                if 0 <= index < missing:  # what channel.adapt does, inlined: the hot loop
                    change = adwin.add(pit[index], stamp)
                    if change is not None:
                        changes.append((channel, change))
            if changes:
                return changes, row + 1
        return changes, len(times)

    def _extend_window(
        self, first: datetime, last: datetime, source: str, low: int, high: int
    ) -> None:
        self._start = first if self._start is None else min(self._start, first)
        self._end = last if self._end is None else max(self._end, last)
        known = self._offsets.get(source)
        self._offsets[source] = (
            (low, high) if known is None else (min(known[0], low), max(known[1], high))
        )

    def observe_outcome(self, error: float, *, at: datetime) -> WindowVerdict | None:
        """One labelled outcome's error (0/1 misclassification, |y - ŷ|, …).

        Returns a verdict (a detection) when ADWIN cuts its window and the error
        went up; a drop in error is a change too, but nothing to retrain for.
        Non-finite or non-numeric errors are counted as invalid and ignored.
        """
        if self._adwin is None:
            return None
        try:
            value = float(error)
        except (TypeError, ValueError, OverflowError):
            value = math.nan
        if not math.isfinite(value):
            self._invalid_outcomes += 1
            return None
        at = _aware(at)
        change = self._adwin.update(value, at.timestamp())
        if change is None or not change.increased:
            return None
        result = DriftTestResult(
            feature=ERROR,
            kind="performance",
            test="adwin",
            statistic=change.mean_recent - change.mean_old,
            threshold=change.epsilon,
            drifted=True,
        )
        verdict = WindowVerdict(
            model=self.model,
            version=self.version,
            results=(result,),
            drifted=True,
            detection=True,
            window_start=min(datetime.fromtimestamp(change.since, UTC), at),
            window_end=at,
            offsets={},
            n_reference=change.n_old,
            n_live=change.n_recent,
            correction="none",
            window_index=self._window_index,
            origin="performance",
            samples={f"performance:{ERROR}": change.n_old + change.n_recent},
        )
        self._window_index += 1
        self._recent = (*self._recent, verdict)[-RECENT_VERDICTS:]
        self._detections = (*self._detections, verdict)[-RECENT_VERDICTS:]
        return verdict

    # ── testing a window ─────────────────────────────────────────────────────

    def _run_tests(self, *, require_samples: bool) -> list[tuple[_Channel, DriftTestResult, int]]:
        spec = self.spec
        raw: list[tuple[_Channel, str, float, float | None, float, int]] = []
        for channel in self._channels:
            live = np.asarray(channel.counts, dtype=np.float64)
            for test in channel.tests:
                samples = channel.present if test == "ks" else channel.samples
                if samples == 0 or (require_samples and samples < spec.min_samples):
                    continue
                if test == "ks":
                    d, p = _stats.binned_ks(channel.reference[:-1], live[:-1])
                    raw.append((channel, test, d, p, spec.alpha, samples))
                elif test == "chi2":
                    statistic, p, _ = _stats.chi2_homogeneity(channel.reference, live)
                    raw.append((channel, test, statistic, p, spec.alpha, samples))
                elif test == "psi":
                    score = _stats.psi(channel.reference, live)
                    raw.append((channel, test, score, None, spec.psi_threshold, samples))
                else:
                    distance = _stats.jensen_shannon_distance(channel.reference, live)
                    raw.append(
                        (channel, test, distance, None, spec.jensen_shannon_threshold, samples)
                    )
        p_values = [entry[3] for entry in raw if entry[3] is not None]
        adjusted = iter(_correct(p_values, spec.correction))
        results: list[tuple[_Channel, DriftTestResult, int]] = []
        for channel, test, statistic, raw_p, threshold, samples in raw:
            corrected = None if raw_p is None else next(adjusted)
            drifted = statistic > threshold if corrected is None else corrected <= threshold
            result = DriftTestResult(
                feature=channel.name,
                kind=channel.kind,
                test=test,
                statistic=statistic,
                p_value=corrected,
                threshold=threshold,
                drifted=drifted,
            )
            results.append((channel, result, samples))
        return results

    def _close_window(self, changes: list[tuple[_Channel, AdwinChange]]) -> WindowVerdict:
        """Test the window; `changes` (ADWIN cuts) close it early and are detections."""
        tested = self._run_tests(require_samples=True)
        adaptive = [
            DriftTestResult(
                feature=channel.name,
                kind=channel.kind,
                test="adwin",
                statistic=abs(change.mean_recent - change.mean_old),  # vs threshold, like PSI
                threshold=change.epsilon,
                drifted=True,
            )
            for channel, change in changes
        ]
        results = (*(result for _, result, _ in tested), *adaptive)
        drifted = any(result.drifted for result in results)
        streaks = {
            f"{channel.key}:{result.test}": self._streaks.get(f"{channel.key}:{result.test}", 0) + 1
            for channel, result, _ in tested
            if result.drifted
        }  # a test that did not drift (or did not run) starts again from zero
        # ADWIN's own confidence (delta) stands in for persistence
        detection = bool(adaptive) or any(s >= self.spec.persistence for s in streaks.values())
        # after a detection every test needs `persistence` drifted windows again: debounce
        self._streaks = {} if detection else streaks
        self._drifted_in_row = self._drifted_in_row + 1 if drifted else 0
        assert self._start is not None  # a window holds at least one row
        assert self._end is not None
        verdict = WindowVerdict(
            model=self.model,
            version=self.version,
            results=results,
            drifted=drifted,
            detection=detection,
            window_start=self._start,
            window_end=self._end,
            offsets=dict(self._offsets),
            n_reference=self.profile.n_samples,
            n_live=self._n,
            correction=self.spec.correction,
            window_index=self._window_index,
            samples={channel.key: channel.samples for channel in self._channels},
        )
        self._window_index += 1
        self._recent = (*self._recent, verdict)[-RECENT_VERDICTS:]
        if detection:
            self._detections = (*self._detections, verdict)[-RECENT_VERDICTS:]
        self._n = 0
        self._start = self._end = None
        self._offsets = {}
        for channel in self._channels:
            channel.reset()
        return verdict

    # ── status and state ─────────────────────────────────────────────────────

    def status(self) -> MonitorStatus:
        """Scores of the window being filled (corrected among themselves) and recent verdicts."""
        tests = tuple(
            TestStatus(
                feature=result.feature,
                kind=result.kind,
                test=result.test,
                score=result.statistic,
                p_value=result.p_value,
                threshold=result.threshold,
                samples=samples,
                enough_samples=samples >= self.spec.min_samples,
                streak=self._streaks.get(f"{channel.key}:{result.test}", 0),
            )
            for channel, result, samples in self._run_tests(require_samples=False)
        )
        performance = None
        if self._adwin is not None:
            performance = PerformanceStatus(
                outcomes=self._adwin.seen,
                window=self._adwin.width,
                mean_error=self._adwin.mean,
                detections=self._adwin.detections,
                invalid=self._invalid_outcomes,
            )
        return MonitorStatus(
            model=self.model,
            version=self.version,
            window_index=self._window_index,
            window_size=self.spec.window_size,
            n_in_window=self._n,
            window_start=self._start,
            window_end=self._end,
            n_reference=self.profile.n_samples,
            tests=tests,
            skipped=dict(self.skipped),
            invalid_values={c.key: c.invalid for c in self._channels if c.invalid},
            adaptive_windows={c.key: c.adwin.width for c in self._channels if c.adwin is not None},
            drifted_windows_in_row=self._drifted_in_row,
            performance=performance,
            recent=self._recent,
            detections=self._detections,
        )

    def snapshot(self) -> MonitorState:
        return MonitorState(
            model=self.model,
            version=self.version,
            window_index=self._window_index,
            n_in_window=self._n,
            window_start=self._start,
            window_end=self._end,
            offsets=dict(self._offsets),
            channels={
                c.key: ChannelState(
                    layout=c.layout(),
                    counts=tuple(c.counts),
                    invalid=c.invalid,
                    adwin=None if c.adwin is None else c.adwin.snapshot(),
                )
                for c in self._channels
            },
            streaks=dict(self._streaks),
            drifted_windows_in_row=self._drifted_in_row,
            adwin=None if self._adwin is None else self._adwin.snapshot(),
            invalid_outcomes=self._invalid_outcomes,
            recent=self._recent,
            detections=self._detections,
        )

    @classmethod
    def restore(
        cls,
        state: MonitorState,
        profile: ReferenceProfile,
        spec: DriftSpec,
        features: Mapping[str, str],
        tests: Mapping[str, Sequence[str]],
        *,
        adaptive: bool = True,
    ) -> DriftMonitor:
        """The monitor `state` was taken from; DriftStateMismatch if the bins differ."""
        monitor = cls(state.model, state.version, profile, spec, features, tests, adaptive=adaptive)
        expected = {c.key: c.layout() for c in monitor._channels}
        saved = {key: channel.layout for key, channel in state.channels.items()}
        if expected != saved:
            differ = sorted(
                k for k in expected.keys() | saved.keys() if expected.get(k) != saved.get(k)
            )
            raise DriftStateMismatch(
                f"drift state of {state.model} v{state.version} does not fit this profile, "
                f"features or window size (channels that differ: {', '.join(differ)})"
            )
        for channel in monitor._channels:
            saved_channel = state.channels[channel.key]
            if len(saved_channel.counts) != len(channel.counts):
                raise DriftStateMismatch(f"drift state of {channel.key} has the wrong bin count")
            channel.counts = list(saved_channel.counts)
            channel.invalid = saved_channel.invalid
            if channel.adwin is not None and saved_channel.adwin is not None:
                channel.adwin = Adwin.restore(saved_channel.adwin)
        monitor._window_index = state.window_index
        monitor._n = state.n_in_window
        monitor._start = state.window_start
        monitor._end = state.window_end
        monitor._offsets = dict(state.offsets)
        monitor._streaks = dict(state.streaks)
        monitor._drifted_in_row = state.drifted_windows_in_row
        if monitor._adwin is not None and state.adwin is not None:
            monitor._adwin = Adwin.restore(state.adwin)
        monitor._invalid_outcomes = state.invalid_outcomes
        monitor._recent = state.recent
        monitor._detections = state.detections
        return monitor


def _correct(p_values: list[float], correction: Correction) -> list[float]:
    if correction == "bonferroni":
        return _stats.bonferroni(p_values)
    if correction == "benjamini-hochberg":
        return _stats.benjamini_hochberg(p_values)
    return list(p_values)


def _aware(at: datetime) -> datetime:
    """A naive datetime is read as UTC (the services stamp UTC everywhere)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
