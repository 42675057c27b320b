"""DriftMonitor: windows, corrected verdicts, persistence, min_samples, state, robustness."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlbus.driftstats import (
    DriftMonitor,
    DriftStateMismatch,
    MonitorState,
    WindowVerdict,
)
from mlbus.errors import ConfigError
from mlbus.events import DriftDetected
from mlbus.profiles import ReferenceProfile
from mlbus.spec import DriftSpec

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SOURCE = "mlbus.prediction.logged.v1:0"
KINDS = {
    "tx.amount": "numeric",
    "tx.count_1h": "numeric",
    "tx.score": "numeric",
    "tx.country": "categorical",
    "tx.channel": "categorical",
}
COUNTRIES = ["US", "DE", "FR", "GB", "IT", "ES", "NL"]
COUNTRY_P = [0.35, 0.2, 0.15, 0.1, 0.1, 0.06, 0.04]


def _columns(rng: np.random.Generator, n: int, *, shift: float = 0.0) -> dict[str, list[Any]]:
    return {
        "tx.amount": rng.lognormal(3.0 + shift, 1.0, n).tolist(),
        "tx.count_1h": rng.poisson(2.0, n).tolist(),  # integers with many ties
        "tx.score": rng.normal(0.0, 1.0, n).tolist(),
        "tx.country": rng.choice(COUNTRIES, n, p=COUNTRY_P).tolist(),
        "tx.channel": rng.choice(["pos", "web", "app"], n, p=[0.5, 0.3, 0.2]).tolist(),
    }


def _predictions(columns: Mapping[str, list[Any]]) -> list[float]:
    scores: list[float] = (1 / (1 + np.exp(-np.asarray(columns["tx.score"])))).tolist()
    return scores


def _rows(columns: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    return [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    columns = _columns(np.random.default_rng(2026), 30_000)
    return ReferenceProfile.from_samples(columns, predictions=_predictions(columns))


def _tests(spec: DriftSpec) -> dict[str, tuple[str, ...]]:
    return {
        name: spec.tests.numeric if kind == "numeric" else spec.tests.categorical
        for name, kind in KINDS.items()
    }


def _monitor(profile: ReferenceProfile, spec: DriftSpec, *, adaptive: bool = True) -> DriftMonitor:
    return DriftMonitor("fraud", 3, profile, spec, KINDS, _tests(spec), adaptive=adaptive)


def _feed(
    monitor: DriftMonitor, columns: Mapping[str, list[Any]], *, start: int = 0
) -> list[WindowVerdict]:
    rows = _rows(columns)
    n = len(rows)
    return monitor.observe_many(
        rows,
        _predictions(columns),
        at=[T0 + timedelta(seconds=start + i) for i in range(n)],
        source=SOURCE,
        offsets=list(range(start, start + n)),
    )


def test_a_stationary_stream_of_200k_predictions_raises_no_detection(
    profile: ReferenceProfile,
) -> None:
    spec = DriftSpec()  # the defaults: windows of 1000, alpha 0.01 after BH, persistence 2
    monitor = _monitor(profile, spec)
    verdicts = _feed(monitor, _columns(np.random.default_rng(7), 200_000))
    assert len(verdicts) == 200
    assert [v.window_index for v in verdicts] == list(range(200))
    assert not [v.window_index for v in verdicts if v.detection]
    # single windows may drift by chance (that is what alpha is); far from all of them
    assert sum(v.drifted for v in verdicts) <= 0.05 * 200
    tested = {(r.feature, r.test) for r in verdicts[0].results}
    assert ("tx.amount", "ks") in tested
    assert ("tx.country", "chi2") in tested
    assert ("prediction", "psi") in tested


def test_abrupt_covariate_drift_is_detected_within_persistence_windows(
    profile: ReferenceProfile,
) -> None:
    spec = DriftSpec(window_size=1000, min_samples=200, persistence=2)
    monitor = _monitor(profile, spec, adaptive=False)  # the window tests alone
    rng = np.random.default_rng(8)
    before = _feed(monitor, _columns(rng, 5_500))  # the drift starts mid-window
    after = _feed(monitor, _columns(rng, 5_000, shift=0.4), start=5_500)
    assert not any(v.detection for v in before)
    first = next(v for v in after if v.detection)
    # the window holding the drift point may or may not drift; the next two surely do
    assert first.window_index <= 5 + spec.persistence
    drifted = {(r.feature, r.test) for r in first.results if r.drifted}
    # a 0.4σ shift: PSI (about 0.16) stays under 0.2, the KS test sees it
    assert ("tx.amount", "ks") in drifted
    assert {f for f, _ in drifted} <= {"tx.amount", "prediction"}
    assert first.offsets == {SOURCE: (first.window_index * 1000, first.window_index * 1000 + 999)}
    assert first.window_end - first.window_start == timedelta(seconds=999)
    assert first.n_live == 1000
    assert first.n_reference == 30_000
    assert first.samples["covariate:tx.amount"] == 1000
    # maps 1:1 onto the event
    event = DriftDetected(
        model=first.model,
        version=first.version,
        results=tuple(r for r in first.results if r.drifted),
        window_start=first.window_start,
        window_end=first.window_end,
        offsets=first.offsets,
        n_reference=first.n_reference,
        n_live=first.n_live,
        correction=first.correction,
    )
    assert event.version == 3


def test_persistence_needs_that_many_drifted_windows_in_a_row(
    profile: ReferenceProfile,
) -> None:
    spec = DriftSpec(window_size=500, min_samples=100, persistence=3)
    monitor = _monitor(profile, spec, adaptive=False)
    rng = np.random.default_rng(9)
    _feed(monitor, _columns(rng, 2_000))
    verdicts = _feed(monitor, _columns(rng, 3_000, shift=1.0), start=2_000)
    assert [v.drifted for v in verdicts] == [True] * 6
    # detection on the 3rd drifted window, then streaks restart: again on the 6th
    assert [v.detection for v in verdicts] == [False, False, True, False, False, True]
    assert monitor.status().drifted_windows_in_row == 6


def test_a_drift_that_does_not_persist_is_no_detection(profile: ReferenceProfile) -> None:
    spec = DriftSpec(window_size=500, min_samples=100, persistence=2)
    monitor = _monitor(profile, spec, adaptive=False)
    rng = np.random.default_rng(10)
    verdicts = []
    for block in range(6):  # drifted, clean, drifted, clean, …
        verdicts += _feed(monitor, _columns(rng, 500, shift=1.0 * (block % 2 == 0)), start=block)
    assert [v.drifted for v in verdicts] == [True, False] * 3
    assert not any(v.detection for v in verdicts)


def test_adwin_on_a_feature_catches_an_abrupt_shift_within_a_few_hundred_events(
    profile: ReferenceProfile,
) -> None:
    spec = DriftSpec(window_size=1000, min_samples=200, persistence=2)
    monitor = _monitor(profile, spec)
    rng = np.random.default_rng(8)
    before = _feed(monitor, _columns(rng, 5_500))
    assert not any(v.detection for v in before)
    columns = _columns(rng, 2_000)
    columns["tx.score"] = [x + 0.5 for x in columns["tx.score"]]  # feature and prediction move
    after = _feed(monitor, columns, start=5_500)
    first = next(v for v in after if v.detection)
    last_offset = first.offsets[SOURCE][1]
    assert 5_500 <= last_offset < 5_500 + 400  # a window of 1000 with persistence 2: >= 1500
    assert first.n_live < spec.window_size  # the window closed early
    adaptive = [r for r in first.results if r.test == "adwin"]
    assert adaptive
    assert {r.feature for r in adaptive} <= {"tx.score", "prediction"}
    assert all(r.statistic > r.threshold > 0 for r in adaptive)  # |move of the CDF position|
    # the next window starts right after it; windows and ids stay consecutive
    assert after[after.index(first) + 1].offsets[SOURCE][0] == last_offset + 1
    assert [v.window_index for v in before + after] == list(range(len(before + after)))


def test_features_below_min_samples_are_not_tested(profile: ReferenceProfile) -> None:
    spec = DriftSpec(window_size=500, min_samples=200, persistence=1)
    monitor = _monitor(profile, spec, adaptive=False)
    rng = np.random.default_rng(11)
    columns = _columns(rng, 1_000)
    columns["tx.amount"] = [1e6] * 1_000  # wildly drifted …
    rows = _rows(columns)
    for i, row in enumerate(rows):
        if i % 5:  # … but present in only 100 of every 500 rows
            del row["tx.amount"]
    verdicts = monitor.observe_many(
        rows, _predictions(columns), at=[T0] * 1_000, source=SOURCE, offsets=list(range(1_000))
    )
    assert len(verdicts) == 2
    for verdict in verdicts:
        assert "tx.amount" not in {r.feature for r in verdict.results}
        assert verdict.samples["covariate:tx.amount"] == 100
        assert not verdict.detection
    status = monitor.status()
    assert status.n_in_window == 0


def test_unseen_categories_pool_under_other_and_are_detected(profile: ReferenceProfile) -> None:
    spec = DriftSpec(window_size=1000, min_samples=200, persistence=1)
    monitor = _monitor(profile, spec)
    columns = _columns(np.random.default_rng(12), 1_000)
    columns["tx.country"] = ["BR" if i % 3 == 0 else c for i, c in enumerate(columns["tx.country"])]
    (verdict,) = _feed(monitor, columns)
    assert verdict.detection
    chi2 = next(r for r in verdict.results if r.feature == "tx.country")
    assert chi2.test == "chi2"
    assert chi2.drifted
    assert chi2.p_value is not None
    assert chi2.p_value < 1e-10
    assert monitor.status().invalid_values == {}


def test_prediction_drift_alone_is_seen_on_the_prediction(profile: ReferenceProfile) -> None:
    spec = DriftSpec(window_size=1000, min_samples=200, persistence=1)
    monitor = _monitor(profile, spec)
    columns = _columns(np.random.default_rng(13), 1_000)
    rows = _rows(columns)
    scores = [min(1.0, s + 0.25) for s in _predictions(columns)]  # the model got over-confident
    (verdict,) = monitor.observe_many(
        rows, scores, at=[T0] * 1_000, source=SOURCE, offsets=list(range(1_000))
    )
    drifted = {(r.feature, r.kind) for r in verdict.results if r.drifted}
    assert drifted == {("prediction", "prediction")}


def test_a_feature_going_missing_is_drift(profile: ReferenceProfile) -> None:
    spec = DriftSpec(window_size=1000, min_samples=200, persistence=1, correction="none")
    monitor = _monitor(profile, spec)
    columns = _columns(np.random.default_rng(14), 1_000)
    columns["tx.channel"] = [None if i % 4 == 0 else c for i, c in enumerate(columns["tx.channel"])]
    (verdict,) = _feed(monitor, columns)
    assert {r.feature for r in verdict.results if r.drifted} == {"tx.channel"}


def test_p_values_in_a_verdict_are_corrected(profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(15)
    columns = _columns(rng, 1_000, shift=0.05)
    p_values: dict[str, list[float]] = {}
    for correction in ("none", "bonferroni", "benjamini-hochberg"):
        spec = DriftSpec(window_size=1000, min_samples=200, correction=correction)
        (verdict,) = _feed(_monitor(profile, spec), columns)
        assert verdict.correction == correction
        p_values[correction] = [r.p_value for r in verdict.results if r.p_value is not None]
    m = len(p_values["none"])
    assert m == 6  # ks on 3 numeric features and the prediction, chi2 on 2 categoricals
    assert p_values["bonferroni"] == [min(1.0, p * m) for p in p_values["none"]]
    for raw, bh, bonf in zip(
        p_values["none"], p_values["benjamini-hochberg"], p_values["bonferroni"], strict=True
    ):
        assert raw <= bh <= bonf


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.just(object()),
)


@given(
    rows=st.lists(
        st.dictionaries(
            st.sampled_from([*KINDS, "not.a.feature"]), _SCALARS, max_size=len(KINDS) + 1
        ),
        min_size=1,
        max_size=40,
    ),
    scores=st.lists(st.one_of(st.none(), st.floats(), st.text(max_size=3)), max_size=40),
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_arbitrary_values_never_make_observe_raise(
    profile: ReferenceProfile, rows: list[dict[str, Any]], scores: list[Any]
) -> None:
    spec = DriftSpec(window_size=10, min_samples=10, persistence=1)
    one_by_one = _monitor(profile, spec)
    batched = _monitor(profile, spec)
    predictions = [scores[i] if i < len(scores) else None for i in range(len(rows))]
    singles = [
        v
        for i, row in enumerate(rows)
        if (v := one_by_one.observe(row, predictions[i], at=T0, source=SOURCE, offset=i))
        is not None
    ]
    many = batched.observe_many(
        rows, predictions, at=[T0] * len(rows), source=SOURCE, offsets=list(range(len(rows)))
    )
    assert singles == many  # the batch path is the same function
    assert one_by_one.snapshot() == batched.snapshot()
    status = one_by_one.status()
    assert status.n_in_window == len(rows) % 10
    assert all(math.isfinite(t.score) for t in status.tests)
    MonitorState.model_validate_json(one_by_one.snapshot().model_dump_json())


def test_wrong_types_are_counted_as_invalid_not_as_values(profile: ReferenceProfile) -> None:
    monitor = _monitor(profile, DriftSpec(window_size=10, min_samples=10))
    monitor.observe(
        {"tx.amount": "12.5", "tx.country": ["US"], "tx.score": math.inf},  # type: ignore[dict-item]
        "0.3",  # type: ignore[arg-type]
        at=T0,
        source=SOURCE,
        offset=0,
    )
    status = monitor.status()
    assert status.invalid_values == {
        "covariate:tx.amount": 1,
        "covariate:tx.country": 1,
        "prediction:prediction": 1,
    }
    score = next(t for t in status.tests if t.feature == "tx.score" and t.test == "psi")
    assert score.samples == 1  # +inf is a value: the top bin
    assert not score.enough_samples


@pytest.mark.parametrize("cut", [1, 437, 1000, 2999, 3500])
def test_snapshot_and_restore_mid_window_give_identical_verdicts(
    profile: ReferenceProfile, cut: int
) -> None:
    spec = DriftSpec(window_size=500, min_samples=100, persistence=2)
    rng = np.random.default_rng(16)
    columns = {
        name: a + b
        for (name, a), b in zip(
            _columns(rng, 3_000).items(),
            _columns(rng, 3_000, shift=0.3).values(),
            strict=True,
        )
    }
    rows, scores = _rows(columns), _predictions(columns)
    errors = (rng.random(6_000) < np.repeat([0.1, 0.45], 3_000)).astype(float).tolist()
    ats = [T0 + timedelta(seconds=i) for i in range(6_000)]

    def run(monitor: DriftMonitor, begin: int, end: int) -> list[WindowVerdict]:
        out = []
        for i in range(begin, end):
            for verdict in (
                monitor.observe(rows[i], scores[i], at=ats[i], source=SOURCE, offset=i),
                monitor.observe_outcome(errors[i], at=ats[i]),
            ):
                if verdict is not None:
                    out.append(verdict)
        return out

    straight = _monitor(profile, spec)
    expected = run(straight, 0, 6_000)
    assert any(v.detection and v.origin == "window" for v in expected)
    assert any(v.origin == "performance" for v in expected)

    first = _monitor(profile, spec)
    got = run(first, 0, cut)
    text = first.snapshot().model_dump_json()
    assert len(text) < 40_000  # counts, ADWIN buckets (log n) and 5 verdicts: no raw values
    resumed = DriftMonitor.restore(
        MonitorState.model_validate_json(text), profile, spec, KINDS, _tests(spec)
    )
    got += run(resumed, cut, 6_000)
    assert [v.model_dump_json() for v in got] == [v.model_dump_json() for v in expected]
    assert resumed.snapshot().model_dump_json() == straight.snapshot().model_dump_json()


def test_restore_refuses_state_of_other_bins(profile: ReferenceProfile) -> None:
    spec = DriftSpec(window_size=500, min_samples=100)
    state = _monitor(profile, spec).snapshot()
    other = ReferenceProfile.from_samples(
        _columns(np.random.default_rng(99), 1_000), predictions=[0.5] * 1_000
    )
    with pytest.raises(DriftStateMismatch, match=r"tx\.amount"):
        DriftMonitor.restore(state, other, spec, KINDS, _tests(spec))
    with pytest.raises(DriftStateMismatch, match=r"tx\.channel"):
        DriftMonitor.restore(
            state,
            profile,
            spec,
            {k: v for k, v in KINDS.items() if k != "tx.channel"},
            _tests(spec),
        )


def test_performance_drift_fires_on_a_rise_in_errors_only(profile: ReferenceProfile) -> None:
    monitor = _monitor(profile, DriftSpec(window_size=1000, min_samples=200))
    rng = np.random.default_rng(17)
    errors = np.concatenate([rng.random(4_000) < 0.1, rng.random(2_000) < 0.4]).astype(float)
    verdicts = [
        v
        for i, e in enumerate(errors)
        if (v := monitor.observe_outcome(float(e), at=T0 + timedelta(seconds=i))) is not None
    ]
    assert verdicts
    first = verdicts[0]
    assert first.origin == "performance"
    assert first.detection
    assert first.window_index == 0
    (result,) = first.results
    assert (result.feature, result.kind, result.test) == ("error", "performance", "adwin")
    assert result.statistic > result.threshold > 0
    assert first.window_end >= T0 + timedelta(seconds=4_000)
    assert first.window_start <= T0 + timedelta(seconds=4_000)
    # a recovery is a change, but not one to retrain for
    recovering = [
        monitor.observe_outcome(float(e), at=T0) for e in (rng.random(4_000) < 0.02).astype(float)
    ]
    assert all(v is None for v in recovering)
    assert monitor.observe_outcome(math.nan, at=T0) is None
    assert monitor.observe_outcome("x", at=T0) is None  # type: ignore[arg-type]
    performance = monitor.status().performance
    assert performance is not None
    assert performance.invalid == 2
    assert performance.detections > len(verdicts)


def test_status_names_what_is_skipped_and_what_is_tested(profile: ReferenceProfile) -> None:
    spec = DriftSpec(window_size=1000, min_samples=200, performance_drift=False)
    kinds = {**KINDS, "tx.unknown": "numeric", "tx.when": "timestamp"}
    tests = {**_tests(spec), "tx.country": ("chi2", "ks", "jensen_shannon"), "tx.channel": ()}
    monitor = DriftMonitor("fraud", 3, profile, spec, kinds, tests)
    _feed(monitor, _columns(np.random.default_rng(18), 300))
    status = monitor.status()
    assert set(status.skipped) == {"tx.unknown", "tx.when", "tx.country:ks", "tx.channel"}
    assert status.n_in_window == 300
    assert status.window_start == T0
    js = next(t for t in status.tests if t.test == "jensen_shannon")
    assert js.threshold == spec.jensen_shannon_threshold
    assert js.samples == 300
    assert js.enough_samples
    assert js.score < spec.jensen_shannon_threshold
    assert status.performance is None
    with pytest.raises(ConfigError, match="wasserstein"):
        DriftMonitor("fraud", 3, profile, spec, KINDS, {"tx.amount": ("wasserstein",)})


def test_observe_many_refuses_columns_of_different_lengths(profile: ReferenceProfile) -> None:
    monitor = _monitor(profile, DriftSpec())
    with pytest.raises(ValueError, match="must be as long"):
        monitor.observe_many([{}, {}], None, at=[T0], source=SOURCE, offsets=[0, 1])


def test_the_batch_path_cuts_where_observe_cuts(profile: ReferenceProfile) -> None:
    spec = DriftSpec(window_size=700, min_samples=100, persistence=2)
    rng = np.random.default_rng(19)
    columns = {
        name: a + b
        for (name, a), b in zip(
            _columns(rng, 2_500).items(), _columns(rng, 2_500, shift=0.3).values(), strict=True
        )
    }
    columns["tx.score"] = [x + (i >= 2_500) * 0.4 for i, x in enumerate(columns["tx.score"])]
    rows, scores = _rows(columns), _predictions(columns)
    ats = [T0 + timedelta(seconds=i) for i in range(5_000)]
    one_by_one = _monitor(profile, spec)
    singles = [
        v
        for i in range(5_000)
        if (v := one_by_one.observe(rows[i], scores[i], at=ats[i], source=SOURCE, offset=i))
        is not None
    ]
    batched = _monitor(profile, spec)
    many: list[WindowVerdict] = []
    for begin in range(0, 5_000, 1_234):  # batches that straddle windows and cuts
        end = min(5_000, begin + 1_234)
        many += batched.observe_many(
            rows[begin:end],
            scores[begin:end],
            at=ats[begin:end],
            source=SOURCE,
            offsets=list(range(begin, end)),
        )
    assert any(r.test == "adwin" for v in singles for r in v.results)
    assert [v.model_dump_json() for v in many] == [v.model_dump_json() for v in singles]
    assert batched.snapshot() == one_by_one.snapshot()


def test_the_batch_path_bins_gaps_and_odd_values_as_observe_does(
    profile: ReferenceProfile,
) -> None:
    spec = DriftSpec(window_size=300, min_samples=50, persistence=1)
    rng = np.random.default_rng(29)
    columns = _columns(rng, 2_000)
    columns["tx.amount"] = [x * (1 + 2 * (i >= 1_000)) for i, x in enumerate(columns["tx.amount"])]
    rows, scores = _rows(columns), _predictions(columns)
    odd: list[Any] = [None, math.nan, "12", True, 10**30, -math.inf, 3]
    for i in range(0, 2_000, 7):
        rows[i]["tx.amount"] = odd[(i // 7) % len(odd)]
    for i in range(3, 2_000, 11):
        del rows[i]["tx.count_1h"]  # absent: not counted, no ADWIN value
    ats = [T0 + timedelta(seconds=i) for i in range(2_000)]
    one_by_one = _monitor(profile, spec)
    singles = [
        v
        for i in range(2_000)
        if (v := one_by_one.observe(rows[i], scores[i], at=ats[i], source=SOURCE, offset=i))
        is not None
    ]
    batched = _monitor(profile, spec)
    many: list[WindowVerdict] = []
    for begin in range(0, 2_000, 333):
        end = min(2_000, begin + 333)
        many += batched.observe_many(
            rows[begin:end],
            scores[begin:end],
            at=ats[begin:end],
            source=SOURCE,
            offsets=list(range(begin, end)),
        )
    assert any(r.test == "adwin" for v in singles for r in v.results)
    assert [v.model_dump_json() for v in many] == [v.model_dump_json() for v in singles]
    assert batched.snapshot() == one_by_one.snapshot()
    assert batched.status() == one_by_one.status()
    assert set(batched.status().invalid_values) == {"covariate:tx.amount"}  # "12" is no number


def test_an_int_no_float_holds_is_binned_in_a_batch_of_numbers_as_observe_does(
    profile: ReferenceProfile,
) -> None:
    # JSON carries ints of any size; numpy cannot make 2**1030 a float (OverflowError)
    spec = DriftSpec(window_size=300, min_samples=50, persistence=1)
    rows = _rows(_columns(np.random.default_rng(31), 600))
    rows[5]["tx.amount"], rows[400]["tx.count_1h"] = 2**1030, -(2**1030)
    ats = [T0 + timedelta(seconds=i) for i in range(600)]
    one_by_one = _monitor(profile, spec)
    singles = [
        v
        for i in range(600)
        if (v := one_by_one.observe(rows[i], None, at=ats[i], source=SOURCE, offset=i)) is not None
    ]
    batched = _monitor(profile, spec)
    many = batched.observe_many(rows, None, at=ats, source=SOURCE, offsets=list(range(600)))
    assert len(many) == 2
    assert [v.model_dump_json() for v in many] == [v.model_dump_json() for v in singles]
    assert batched.snapshot() == one_by_one.snapshot()


def test_feature_adwins_share_delta_over_channels_and_checks(profile: ReferenceProfile) -> None:
    spec = DriftSpec(adwin_delta=0.004)
    state = _monitor(profile, spec).snapshot()
    feature_adwins = state.feature_adwins  # one structure over the numeric channels
    assert feature_adwins is not None
    # tx.amount, tx.count_1h, tx.score and the prediction are numeric
    assert sorted(feature_adwins.channels) == [
        "covariate:tx.amount",
        "covariate:tx.count_1h",
        "covariate:tx.score",
        "prediction:prediction",
    ]
    assert feature_adwins.bound == "bennett-hoeffding"
    assert feature_adwins.clock == 16
    # spec.adwin_delta is per check every 32 values: a quarter per channel, half per check
    assert feature_adwins.delta == pytest.approx([0.004 / 4 / 2] * 4)
    # without the holdout's errors, the error stream keeps River's ADWIN as it is
    errors = state.outcome_adwins["all"]
    assert (errors.bound, errors.clock, errors.delta, errors.reference) == (
        "river",
        32,
        0.004,
        None,
    )


def test_a_monitor_without_numeric_channels_watches_errors_only(
    profile: ReferenceProfile,
) -> None:
    spec = DriftSpec(prediction_drift=False)  # no features, no prediction: nothing numeric
    monitor = DriftMonitor("fraud", 3, profile, spec, {}, {})
    rng = np.random.default_rng(23)
    errors = np.concatenate([rng.random(3000) < 0.1, rng.random(2000) < 0.5])
    found = [
        i
        for i, error in enumerate(errors)
        if monitor.observe_outcome(float(error), at=T0 + timedelta(seconds=i)) is not None
    ]
    assert found
    assert 3000 <= found[0] < 3300
    assert monitor.status().adaptive_windows == {}
