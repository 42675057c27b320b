"""The training pipeline on small synthetic frames: every estimator converts with parity,
the time split never leaks, and failures carry a reason a person can act on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from mlbus.example import fraud_spec_path
from mlbus.spec import ProjectSpec, load_spec
from mlbus.training import (
    PARITY_TOLERANCE,
    SUPPORTED_ESTIMATORS,
    Dataset,
    TrainingError,
    dataset_from_table,
    evaluate_onnx,
    onnx_scores,
    time_split,
    train,
)

DAY_MS = 86_400_000
START_MS = 1_735_689_600_000  # 2025-01-01


def fraud_spec(**model: Any) -> ProjectSpec:
    spec = load_spec(fraud_spec_path())
    doc = spec.model_dump(mode="json")
    doc["model"] = {**doc["model"], "min_rows": 50, "params": {}, **model}
    doc["model"]["gates"] = {"min_improvement": 0.0, "minimums": {}}
    return ProjectSpec.model_validate(doc)


def frame(spec: ProjectSpec, n: int, *, seed: int = 0, label: Any = None) -> pa.Table:
    """A point-in-time frame over 7 days: fraud is likelier for big online amounts."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    for feature in spec.model_features():
        if feature.kind == "numeric":
            columns[feature.ref] = rng.gamma(2.0, 30.0, n).round(2).tolist()
        else:
            values = list(feature.values or ("a", "b"))
            columns[feature.ref] = [values[i] for i in rng.integers(0, len(values), n)]
    amount = np.asarray(columns["card_activity.amount"])
    online = np.asarray([c == "online" for c in columns["card_activity.channel"]])
    logit = (amount - 60) / 30 + 1.5 * online - 1.0
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    times = np.sort(rng.integers(START_MS, START_MS + 7 * DAY_MS, n))
    if spec.model.task == "regression":
        labels: list[Any] = (amount * 0.5 + 3 * online).tolist()
    else:
        labels = y.tolist()
    if label is not None:
        labels = [label] * n
    return pa.table(
        {
            "entity_id": [f"card_{i % 50:06d}" for i in range(n)],
            "label": labels,
            "as_of": pa.array(times, pa.timestamp("ms", tz="UTC")),
            "feature_time": pa.array(times, pa.timestamp("ms", tz="UTC")),
            **columns,
        }
    )


def dataset(spec: ProjectSpec, n: int = 600, **kw: Any) -> Dataset:
    return dataset_from_table(spec, frame(spec, n, **kw), "f" * 64)


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("estimator", SUPPORTED_ESTIMATORS)
def test_every_estimator_converts_and_matches_sklearn(estimator: str, task: str) -> None:
    params: dict[str, Any] = {}
    if estimator == "hist_gradient_boosting":
        params = {"max_iter": 30}
    elif estimator == "random_forest":
        params = {"n_estimators": 20, "max_depth": 6}
    metric = "auc" if task == "classification" else "rmse"
    extra: dict[str, Any] = {}
    if task == "regression":
        extra["label"] = {"source": "transactions", "field": "amount"}
    spec = fraud_spec(estimator=estimator, task=task, params=params, metric=metric, **extra)
    data = dataset(spec)
    trained = train(spec, data)
    assert trained.parity_max_error <= PARITY_TOLERANCE
    # Independently: ONNX Runtime on the holdout reproduces the stored sklearn scores.
    scores = onnx_scores(trained.onnx, data.x[trained.split.holdout], task)
    assert np.all(np.isfinite(scores))
    if task == "classification":
        assert set(trained.metrics) >= {"auc", "log_loss", "f1"}
        assert trained.holdout_metrics["auc"] > 0.6
    else:
        assert set(trained.metrics) == {"rmse", "mae"}
    # The champion path reads the encoding back from the metadata and agrees.
    again = evaluate_onnx(spec, trained.onnx, data, trained.split.evaluation)
    assert again == pytest.approx(trained.metrics)


def test_categorical_values_are_encoded_from_the_spec_and_unknown_is_nan() -> None:
    spec = fraud_spec()
    data = dataset(spec, 100)
    channel = data.encoding.refs.index("card_activity.channel")
    assert data.encoding.categories["card_activity.channel"] == ["pos", "contactless", "online"]
    codes = data.encoding.encode(
        {r: ["bogus"] if "channel" in r else [1.0] for r in data.encoding.refs}
    )
    assert np.isnan(codes[0, channel])
    assert data.x.dtype == np.float32


def test_time_split_never_puts_training_rows_after_the_holdout() -> None:
    rng = np.random.default_rng(3)
    times = np.sort(rng.integers(0, 10, 500)) * DAY_MS  # many ties
    split = time_split(times, 0.2, 86_400)
    assert times[split.train].max() < times[split.holdout].min()
    assert set(split.evaluation) <= set(split.holdout)
    assert times[split.evaluation].min() >= times[-1] - DAY_MS
    assert len(split.train) + len(split.holdout) == len(times)
    assert not set(split.train) & set(split.holdout)


def test_rows_are_ordered_by_time_before_splitting() -> None:
    spec = fraud_spec()
    table = frame(spec, 200)
    shuffled = table.take(np.random.default_rng(1).permutation(200))
    data = dataset_from_table(spec, shuffled, "f" * 64)
    assert np.all(np.diff(data.times_ms) >= 0)


def test_labels_without_features_are_dropped_and_counted() -> None:
    spec = fraud_spec()
    table = frame(spec, 100)
    nulls = pa.array(
        [None] * 10 + table.column("feature_time").to_pylist()[10:],
        table.schema.field("feature_time").type,
    )
    table = table.set_column(table.column_names.index("feature_time"), "feature_time", nulls)
    data = dataset_from_table(spec, table, "f" * 64)
    assert len(data) == 90
    assert data.dropped_without_features == 10


def test_too_few_rows_fails_with_the_count_and_the_minimum() -> None:
    spec = fraud_spec(min_rows=1000)
    with pytest.raises(TrainingError, match=r"too few rows: 600 .*min_rows=1000") as caught:
        train(spec, dataset(spec))
    assert caught.value.stage == "dataset"


def test_one_class_fails_with_the_class() -> None:
    spec = fraud_spec()
    with pytest.raises(TrainingError, match=r"single class .*is_fraud=false") as caught:
        train(spec, dataset(spec, label=False))
    assert caught.value.stage == "dataset"


def test_unknown_estimator_is_named() -> None:
    spec = fraud_spec().model_copy()
    model = spec.model.model_copy(update={"estimator": "xgboost"})
    spec = spec.model_copy(update={"model": model})
    with pytest.raises(TrainingError, match="unknown estimator 'xgboost'") as caught:
        train(spec, dataset(spec))
    assert caught.value.stage == "train"


def test_invalid_params_fail_at_train() -> None:
    spec = fraud_spec(params={"no_such_param": 1})
    with pytest.raises(TrainingError, match=r"invalid params|failed to fit"):
        train(spec, dataset(spec))


def test_parity_failure_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph that scores differently from the fitted model (here: a shifted intercept)."""
    from mlbus.training import _pipeline

    convert = _pipeline.to_onnx

    def converts_a_shifted_model(model: Any, *args: Any) -> bytes:
        linear = model.named_steps["model"]
        linear.intercept_ = linear.intercept_ + 0.5
        try:
            return convert(model, *args)
        finally:
            linear.intercept_ = linear.intercept_ - 0.5

    monkeypatch.setattr(_pipeline, "to_onnx", converts_a_shifted_model)
    spec = fraud_spec(estimator="logistic_regression")
    with pytest.raises(TrainingError, match=r"ONNX output differs") as caught:
        train(spec, dataset(spec))
    assert caught.value.stage == "parity"


def test_profile_covers_every_feature_and_the_prediction() -> None:
    spec = fraud_spec(estimator="logistic_regression")
    trained = train(spec, dataset(spec))
    assert set(trained.profile.features) == {f.ref for f in spec.model_features()}
    assert trained.profile.prediction is not None
    # the recent stretch as serving saw it: the holdout, widened to two cycles when the
    # reference is seasonal (ADR 0022)
    times = trained.split
    span_days = (times.end_ms - int(dataset(spec).times_ms[0])) / 86_400_000
    assert trained.profile.seasonality == ("daily" if span_days >= 2 else "none")
    recent = dataset(spec).times_ms >= min(times.cut_ms, times.end_ms - 2 * 86_400_000)
    assert trained.profile.n_samples == int(recent.sum()) > len(trained.split.holdout)


def test_the_prediction_profile_is_the_holdout_as_onnx_runtime_scores_it() -> None:
    """Not the training rows: there an overfitted model is over-confident."""
    from mlbus.profiles import profile_column
    from mlbus.training._pipeline import onnx_scores

    spec = fraud_spec(estimator="random_forest", params={"n_estimators": 20})
    data = dataset(spec)
    trained = train(spec, data)
    holdout = onnx_scores(trained.onnx, data.x[trained.split.holdout], "classification")
    train_rows = onnx_scores(trained.onnx, data.x[trained.split.train], "classification")
    seconds = data.times_ms / 1000
    season = trained.profile.seasonality
    bins = trained.profile.bins
    held, trained_on = seconds[trained.split.holdout], seconds[trained.split.train]
    keys = data.entities
    held_keys = None if keys is None else [keys[int(i)] for i in trained.split.holdout]
    train_keys = None if keys is None else [keys[int(i)] for i in trained.split.train]
    assert trained.profile.prediction == profile_column(holdout, bins, held, season, held_keys)
    assert trained.profile.prediction != profile_column(
        train_rows, bins, trained_on, season, train_keys
    )


def test_the_profile_s_phases_are_hours_of_the_spec_s_clock() -> None:
    """drift.timezone (ADR 0032): the features, the prediction and the holdout's errors are
    all keyed by that wall clock's hours, and the profile says which clock it is."""
    from mlbus.profiles import profile_column
    from mlbus.seasons import local_clock
    from mlbus.training._pipeline import onnx_scores

    doc = fraud_spec(estimator="logistic_regression").model_dump(mode="json")
    doc["drift"] = {**doc["drift"], "timezone": "America/New_York"}
    spec = ProjectSpec.model_validate(doc)
    data = dataset(spec)
    trained = train(spec, data)
    profile = trained.profile
    assert profile.timezone == "America/New_York"
    assert profile.seasonality == "daily"
    assert "(America/New_York time)" in profile.summary()
    holdout = trained.split.holdout
    scores = onnx_scores(trained.onnx, data.x[holdout], "classification")
    clock = local_clock(data.times_ms[holdout] / 1000, "America/New_York")
    keys = None if data.entities is None else [data.entities[int(i)] for i in holdout]
    expected = profile_column(scores, profile.bins, clock, "daily", keys)
    assert profile.prediction == expected
    in_utc = profile_column(scores, profile.bins, data.times_ms[holdout] / 1000, "daily", keys)
    assert profile.prediction != in_utc  # New York's hours are not UTC's


def test_phases_finer_than_the_hour_reach_every_column_of_the_profile() -> None:
    """`drift.phase_minutes` (ADR 0033): the features, the holdout's prediction and its
    errors are all keyed by the same quarter hours."""
    from mlbus.profiles import profile_column
    from mlbus.training._pipeline import onnx_scores

    doc = fraud_spec(estimator="logistic_regression").model_dump(mode="json")
    doc["drift"] = {**doc["drift"], "phase_minutes": 15}
    spec = ProjectSpec.model_validate(doc)
    data = dataset(spec)
    trained = train(spec, data)
    profile = trained.profile
    assert (profile.seasonality, profile.phase_minutes, profile.phases) == ("daily", 15, 96)
    assert "15-minute phases" in profile.summary()
    assert all(len(f.phase_counts or ()) == 96 for f in profile.features.values())
    assert profile.performance is not None
    assert all(len(e.phase_counts or ()) == 96 for e in profile.performance.errors.values())
    holdout = trained.split.holdout
    scores = onnx_scores(trained.onnx, data.x[holdout], "classification")
    keys = None if data.entities is None else [data.entities[int(i)] for i in holdout]
    seconds = data.times_ms[holdout] / 1000
    assert trained.profile.prediction == profile_column(
        scores, profile.bins, seconds, "daily", keys, phase_minutes=15
    )


def test_the_profile_holds_the_holdout_s_errors_by_label() -> None:
    """The baseline the live outcomes are tested against (ADR 0031): each holdout row's
    squared error of its ONNX Runtime score, the positives' apart from the negatives'."""
    from mlbus.training._pipeline import onnx_scores

    spec = fraud_spec(estimator="logistic_regression")
    data = dataset(spec)
    trained = train(spec, data)
    performance = trained.profile.performance
    assert performance is not None
    assert performance.metric == "brier"
    holdout = trained.split.holdout
    scores = onnx_scores(trained.onnx, data.x[holdout], "classification")
    positive = np.asarray([str(v) == "true" for v in data.y[holdout].tolist()])
    for group, rows in (("positive", positive), ("negative", ~positive)):
        errors = performance.errors[group]
        expected = (scores[rows] - (1.0 if group == "positive" else 0.0)) ** 2
        assert errors.n == int(rows.sum()) > 0
        assert errors.mean == pytest.approx(float(expected.mean()))
        assert errors.std == pytest.approx(float(expected.std()))
