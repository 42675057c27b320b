"""DriftMonitor: live windows of one served model version against its reference profile.

Each watched feature (and the prediction) is a channel: the reference's bins
plus a missing bin, and the live window's counts over the same bins. A window
closes after `spec.window_size` observations; its tests run on the counts, the
p-values are corrected together, and the verdict says whether the window
drifted and whether that makes a detection (`spec.persistence` windows in a
row with the same test drifting). Numeric channels also feed an ADWIN with
each value's reference-CDF position; a cut there closes the window early as
a detection. The performance channel (`_performance`) runs ADWINs over labelled
errors by outcome group, each starting from the holdout's errors when the
profile has them (ADR 0031).
Everything is counts and a few floats, so `snapshot()` is small and
`restore()` continues exactly where the snapshot was taken (ADR 0016).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from mlbus.driftstats._adwin import AdwinChange
from mlbus.driftstats._batch import BatchLayout
from mlbus.driftstats._blocks import BlockAdwins
from mlbus.driftstats._channels import (
    ABSENT,
    ADAPTIVE_CLOCK,
    PREDICTION,
    Channel,
    NumericChannel,
    channels_for,
)
from mlbus.driftstats._entities import EntitySketch
from mlbus.driftstats._evaluation import run_tests
from mlbus.driftstats._models import (
    ChannelState,
    DriftStateMismatch,
    MonitorState,
    MonitorStatus,
    PerformanceStatus,
    TestStatus,
    WindowVerdict,
)
from mlbus.driftstats._outcomes import ALL
from mlbus.driftstats._performance import SPEC_CLOCK, PerformanceChannel
from mlbus.driftstats._rate import LiveRate
from mlbus.events import DriftTestResult, Scalar
from mlbus.profiles import ReferenceProfile
from mlbus.seasons import (
    HOUR_MINUTES,
    known_phases,
    local_clock,
    local_clock_one,
    phase_of,
    phases_of,
)
from mlbus.spec import DriftSpec

RECENT_VERDICTS = 5


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
    and among their checks (Bonferroni). When one cuts, the window closes at
    once with a detection whose results include that "adwin" result: an
    abrupt shift is caught in about a hundred events instead of `persistence`
    whole windows.
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
        self.seasonality = profile.seasonality
        self.timezone = profile.timezone  # phases are hours of its wall clock (ADR 0032)
        self.phase_minutes = profile.phase_minutes  # or halves or quarters of them (0033)
        self._phase_rows = np.zeros(profile.phases, dtype=np.float64)  # the window's rows per phase
        self._entities = EntitySketch()  # the window's distinct entities
        self._channels, self.skipped = channels_for(profile, spec, features, tests)
        self._prediction = next((c for c in self._channels if c.kind == PREDICTION), None)
        self._covariates = [c for c in self._channels if c.kind == "covariate"]
        numeric = [c for c in self._channels if isinstance(c, NumericChannel)]
        self._adaptive: list[NumericChannel] = numeric if adaptive else []
        self._feature_adwins: BlockAdwins | None = None
        self._live_rate: LiveRate | None = None  # of a seasonal reference's ADWINs
        fullest = _fullest_reference(self._channels)  # (rows per phase, cycles) or None
        thinner = self._know_prediction_phases(fullest)
        if self._adaptive:
            # Bonferroni over the channels and over checks: these check every
            # ADAPTIVE_CLOCK values, twice per SPEC_CLOCK, so each check gets half
            share = spec.adwin_delta / len(numeric) * ADAPTIVE_CLOCK / SPEC_CLOCK
            for channel in numeric:
                channel.enable_adaptive(share)
            if fullest is not None:
                self._live_rate = LiveRate(
                    fullest[0], self.seasonality, fullest[1], self.phase_minutes
                )
            self._feature_adwins = BlockAdwins(
                [c.key for c in numeric],
                [share] * len(numeric),
                [c.adaptive_kappa for c in numeric],
                inflated=[c.phase_counts is not None for c in numeric],
                clock=ADAPTIVE_CLOCK,
            )
            # the prediction's reference (the holdout) is thinner than the features': its ρ
            # is theirs times `thinner`
            self._feature_adwins.rate_scale = np.asarray(
                [thinner if c is self._prediction else 1.0 for c in numeric]
            )
        self._layout = BatchLayout(self._channels, self._adaptive, profile.phases)
        self._performance = (
            PerformanceChannel(profile.performance, spec) if spec.performance_drift else None
        )
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

    def _know_prediction_phases(self, fullest: tuple[np.ndarray, float] | None) -> float:
        """Leave uncounted the predictions of phases the prediction's reference does not
        know (see `known_phases`), noted in `skipped`; how much thinner it is than the
        `fullest` reference where it does (1 when it is not seasonal)."""
        prediction = self._prediction
        if fullest is None or prediction is None or prediction.phase_counts is None:
            return 1.0
        known, thinner = known_phases(
            prediction.phase_counts.sum(axis=1), fullest[0], HOUR_MINUTES // self.phase_minutes
        )
        if not known.all():
            prediction.known = known  # the phases its reference (the holdout) knows
            self.skipped[f"{PREDICTION}:hours"] = (
                f"{int((~known).sum())} of {len(known)} phases of the cycle are not in the rows "
                "the prediction was profiled on (the holdout): their predictions are not tested"
            )
        return thinner

    # ── observing ────────────────────────────────────────────────────────────

    def observe(
        self,
        features: Mapping[str, Scalar],
        prediction: float | None,
        *,
        at: datetime,
        source: str,
        offset: int,
        entity: str | None = None,
    ) -> WindowVerdict | None:
        """One served prediction; the verdict when it closes a window, else None.

        A window closes after `spec.window_size` observations, or earlier when
        an adaptive ADWIN cuts on this observation (then it is a detection).

        Values never make this raise: None/NaN count as missing, values of the
        wrong type are counted as invalid (see status()), unseen categories pool
        under OTHER. A None prediction is not counted; a naive `at` is read as UTC.
        `entity` (the scored entity's key) lets the window tests weigh repeated
        entities for what they are worth (see _entities).
        """
        if self._n >= self.spec.window_size:  # restored under a smaller window_size
            self._close_window([])
        self._entities.add(entity)
        if not isinstance(features, Mapping):
            features = {}
        at = _aware(at)
        stamp = at.timestamp()
        clock = local_clock_one(stamp, self.timezone)
        phase = phase_of(clock, self.seasonality, self.phase_minutes)
        self._phase_rows[phase] += 1
        indexes = {
            channel.key: channel.add(features.get(channel.name, ABSENT))
            for channel in self._covariates
        }
        if self._prediction is not None:
            known = self._prediction.known
            unknown = prediction is None or (known is not None and not known[phase])
            indexes[self._prediction.key] = self._prediction.add(ABSENT if unknown else prediction)
        changes: list[tuple[Channel, AdwinChange]] = []
        if self._feature_adwins is not None:
            row = [
                c.pits[phase if len(c.pits) > 1 else 0, index]
                if 0 <= (index := indexes[c.key]) < c.missing
                else math.nan
                for c in self._adaptive
            ]
            stamps, phases = np.asarray([stamp]), np.asarray([phase])
            inflation = None
            if self._live_rate is not None:
                clocks = np.asarray([clock])
                inflation = self._live_rate.inflations(clocks, phases)
                self._live_rate.count(clocks, phases)
            _, cuts = self._feature_adwins.feed(np.asarray([row]), stamps, inflation)
            changes = [(self._adaptive[i], change) for i, change in cuts]
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
        entities: Sequence[str | None] | None = None,
    ) -> list[WindowVerdict]:
        """`observe` for a batch from one source, counted per channel at once.

        Exactly equivalent to calling `observe` row by row (same counts, same
        windows, same verdicts), only faster. `observe_columns` is the same with
        the batch already laid out by feature (what the drift service has).
        """
        n = len(rows)
        if len(at) != n:
            raise ValueError(f"rows ({n}) and at ({len(at)}) must be as long")
        plain = [row if isinstance(row, Mapping) else {} for row in rows]
        columns = {
            channel.name: [row.get(channel.name, ABSENT) for row in plain]
            for channel in self._covariates
        }
        stamps = np.asarray([_aware(t).timestamp() for t in at], dtype=np.float64)
        return self.observe_columns(
            columns,
            predictions,
            n=n,
            stamps=stamps,
            source=source,
            offsets=offsets,
            entities=entities,
        )

    def observe_columns(
        self,
        columns: Mapping[str, Sequence[Any]],
        predictions: Sequence[float | None] | None,
        *,
        n: int,
        stamps: np.ndarray,
        source: str,
        offsets: Sequence[int],
        entities: Sequence[str | None] | None = None,
    ) -> list[WindowVerdict]:
        """`observe_many` for `n` rows given as one value list per feature (`ABSENT` where a
        row has no such key; a feature not in `columns` is absent from every row) and the
        times as epoch seconds."""
        if (
            len(stamps) != n
            or len(offsets) != n
            or (predictions is not None and len(predictions) != n)
            or any(len(values) != n for values in columns.values())
        ):
            raise ValueError(
                f"columns, times ({len(stamps)}), offsets ({len(offsets)}) and predictions "
                f"({'none' if predictions is None else len(predictions)}) must all hold "
                f"{n} rows"
            )
        verdicts: list[WindowVerdict] = []
        begin = 0
        while begin < n:
            if self._n >= self.spec.window_size:
                verdicts.append(self._close_window([]))
            end = min(n, begin + self.spec.window_size - self._n)
            whole = begin == 0 and end == n
            chunk = columns if whole else {k: v[begin:end] for k, v in columns.items()}
            scores = None if predictions is None else predictions[begin:end]
            times = stamps[begin:end]
            clocks = local_clock(times, self.timezone)
            phases = phases_of(clocks, self.seasonality, self.phase_minutes)
            known = None if self._prediction is None else self._prediction.known
            if scores is not None and known is not None:
                knows = known[phases].tolist()
                scores = [p if k else None for p, k in zip(scores, knows, strict=True)]
            indexes = self._layout.bins(chunk, scores, end - begin)
            changes, taken = self._adapt_many(indexes, times, clocks, phases)
            self._layout.count(indexes[:taken])
            self._phase_rows += np.bincount(phases[:taken], minlength=self._phase_rows.size)
            end = begin + taken
            if entities is not None:
                self._entities.add_many(entities[begin:end])
            span = offsets[begin:end]
            times = times[:taken]
            self._extend_window(
                datetime.fromtimestamp(float(times.min()), UTC),
                datetime.fromtimestamp(float(times.max()), UTC),
                source,
                min(span),
                max(span),
            )
            self._n += taken
            begin = end
            if changes or self._n >= self.spec.window_size:
                verdicts.append(self._close_window(changes))
        return verdicts

    def _adapt_many(
        self, indexes: np.ndarray, stamps: np.ndarray, clocks: np.ndarray, phases: np.ndarray
    ) -> tuple[list[tuple[Channel, AdwinChange]], int]:
        """Feed the feature ADWINs as observe() would; stop after the first row that cuts.
        `clocks`: the rows' clock seconds (`local_clock`), what the live rate is measured in."""
        if self._feature_adwins is None:
            return [], len(stamps)
        rate = self._live_rate
        taken, cuts = self._feature_adwins.feed(
            self._layout.positions(indexes, phases),
            stamps,
            None if rate is None else rate.inflations(clocks, phases),
        )
        if rate is not None:
            rate.count(clocks[:taken], phases[:taken])
        return [(self._adaptive[i], change) for i, change in cuts], taken

    def _extend_window(
        self, first: datetime, last: datetime, source: str, low: int, high: int
    ) -> None:
        self._start = first if self._start is None else min(self._start, first)
        self._end = last if self._end is None else max(self._end, last)
        known = self._offsets.get(source)
        self._offsets[source] = (
            (low, high) if known is None else (min(known[0], low), max(known[1], high))
        )

    def observe_outcome(
        self, error: float, *, at: datetime, group: str = ALL
    ) -> WindowVerdict | None:
        """One labelled outcome's error (`outcome_error`) and its group (`outcome_group`:
        a classifier's positive or negative label; "all" for a regressor).

        Returns a verdict (a detection) when that group's ADWIN cuts its window and the
        error went up; a drop in error is a change too, but nothing to retrain for.
        Non-finite or non-numeric errors are counted as invalid and ignored.
        """
        if self._performance is None:
            return None
        try:
            value = float(error)
        except (TypeError, ValueError, OverflowError):
            value = math.nan
        if not math.isfinite(value):
            self._invalid_outcomes += 1
            return None
        at = _aware(at)
        found = self._performance.observe(value, group, at.timestamp())
        if found is None:
            return None
        feature, change = found
        result = DriftTestResult(
            feature=feature,
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
            samples={f"performance:{feature}": change.n_old + change.n_recent},
        )
        self._window_index += 1
        self._recent = (*self._recent, verdict)[-RECENT_VERDICTS:]
        self._detections = (*self._detections, verdict)[-RECENT_VERDICTS:]
        return verdict

    # ── testing a window ─────────────────────────────────────────────────────

    def _close_window(self, changes: list[tuple[Channel, AdwinChange]]) -> WindowVerdict:
        """Test the window; `changes` (ADWIN cuts) close it early and are detections."""
        tested = run_tests(
            self._channels, self.spec, self._phase_rows, self._entities, require_samples=True
        )
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
        self._phase_rows[:] = 0
        self._entities.reset()
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
            for channel, result, samples in run_tests(
                self._channels, self.spec, self._phase_rows, self._entities, require_samples=False
            )
        )
        performance = None
        if self._performance is not None:
            groups = self._performance.status()
            window = sum(g.window for g in groups.values())
            performance = PerformanceStatus(
                outcomes=sum(g.outcomes for g in groups.values()),
                window=window,
                mean_error=sum(g.mean_error * g.window for g in groups.values()) / window
                if window
                else 0.0,
                detections=sum(g.detections for g in groups.values()),
                invalid=self._invalid_outcomes,
                groups=groups,
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
            seasonality=self.seasonality,
            timezone=self.timezone,
            phase_minutes=self.phase_minutes,
            live_rate=None if self._live_rate is None else self._live_rate.rate,
            dependence={c.key: c.kappa for c in self._channels if c.kappa != 1.0},
            tests=tests,
            skipped=dict(self.skipped),
            invalid_values={c.key: c.invalid for c in self._channels if c.invalid},
            adaptive_windows=(
                {}
                if self._feature_adwins is None
                else {c.key: self._feature_adwins.window(i) for i, c in enumerate(self._adaptive)}
            ),
            drifted_windows_in_row=self._drifted_in_row,
            performance=performance,
            recent=self._recent,
            detections=self._detections,
        )

    def snapshot(self) -> MonitorState:
        entity_hashes, entity_counts = self._entities.state()
        return MonitorState(
            model=self.model,
            version=self.version,
            window_index=self._window_index,
            n_in_window=self._n,
            window_start=self._start,
            window_end=self._end,
            offsets=dict(self._offsets),
            phase_rows=tuple(int(n) for n in self._phase_rows) if self._phase_rows.size > 1 else (),
            entity_hashes=entity_hashes,
            entity_counts=entity_counts,
            entity_rows=self._entities.rows,
            channels={
                c.key: ChannelState(
                    layout=c.layout(),
                    counts=tuple(c.counts),
                    invalid=c.invalid,
                )
                for c in self._channels
            },
            feature_adwins=None
            if self._feature_adwins is None
            else self._feature_adwins.snapshot(),
            streaks=dict(self._streaks),
            drifted_windows_in_row=self._drifted_in_row,
            outcome_adwins={} if self._performance is None else self._performance.snapshot(),
            invalid_outcomes=self._invalid_outcomes,
            live_rows=0 if self._live_rate is None else self._live_rate.rows,
            live_first=None if self._live_rate is None else self._live_rate.first,
            live_last=None if self._live_rate is None else self._live_rate.last,
            live_phase_rows=()
            if self._live_rate is None
            else tuple(self._live_rate.phase_live.tolist()),
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
        saved_adwins = state.feature_adwins
        if (
            monitor._feature_adwins is not None
            and saved_adwins is not None
            and saved_adwins.channels == monitor._feature_adwins.keys
        ):
            # (states from per-value ADWINs, before blocks, restart their feature ADWINs)
            restored = BlockAdwins.restore(saved_adwins)
            # κ and which channels inflate it are the profile's: states saved before the
            # live rate had a seasonal reference's 1 + 1/C inside κ
            restored.dependence = monitor._feature_adwins.dependence
            restored.inflated = monitor._feature_adwins.inflated
            restored.rate_scale = monitor._feature_adwins.rate_scale
            monitor._feature_adwins = restored
        if monitor._live_rate is not None:
            monitor._live_rate.rows = state.live_rows
            monitor._live_rate.first = state.live_first
            monitor._live_rate.last = state.live_last
            if len(state.live_phase_rows) == len(monitor._live_rate.phase_live):
                monitor._live_rate.phase_live = np.asarray(state.live_phase_rows, dtype=np.float64)
            else:
                monitor._live_rate.spread_rows()
        monitor._window_index = state.window_index
        monitor._n = state.n_in_window
        monitor._start = state.window_start
        monitor._end = state.window_end
        monitor._offsets = dict(state.offsets)
        if state.phase_rows:
            if len(state.phase_rows) != monitor._phase_rows.size:
                raise DriftStateMismatch(
                    f"drift state of {state.model} v{state.version} has "
                    f"{len(state.phase_rows)} phases, the profile {monitor._phase_rows.size}"
                )
            monitor._phase_rows[:] = state.phase_rows
        monitor._entities = EntitySketch(
            state.entity_hashes, state.entity_counts, rows=state.entity_rows
        )
        monitor._streaks = dict(state.streaks)
        monitor._drifted_in_row = state.drifted_windows_in_row
        if monitor._performance is not None:
            monitor._performance.restore(state.outcome_adwins)
        monitor._invalid_outcomes = state.invalid_outcomes
        monitor._recent = state.recent
        monitor._detections = state.detections
        return monitor


def _aware(at: datetime) -> datetime:
    """A naive datetime is read as UTC (the services stamp UTC everywhere)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _fullest_reference(channels: Sequence[Channel]) -> tuple[np.ndarray, float] | None:
    """Reference rows per phase and cycles of the seasonal channel with the most rows: a
    feature's (every feature of a profile has the same rows), the prediction's (the
    holdout) only when it is alone."""
    seasonal = [
        (c.phase_counts.sum(axis=1), c.cycles) for c in channels if c.phase_counts is not None
    ]
    return max(seasonal, key=lambda rows: float(rows[0].sum()), default=None)
