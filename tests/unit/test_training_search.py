"""The hyperparameter search on small frames, in memory: the time split never leaks, a
failing trial is recorded and the search goes on, a seed repeats the trials, the budget
holds, and the winner is what the refit uses."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from mlbus.training import (
    SearchOptions,
    TrainingError,
    search,
    time_split,
    train,
    validation_split,
)
from mlbus.training import _search as search_module
from tests.unit.test_training import dataset, fraud_spec

SPACE = {
    "learning_rate": {"type": "float", "low": 0.02, "high": 0.5, "log": True},
    "max_leaf_nodes": {"type": "int", "low": 4, "high": 32},
}


def search_spec(trials: int = 4, seed: int = 3, **search: Any) -> Any:
    return fraud_spec(
        params={"max_iter": 15},
        search={"trials": trials, "seed": seed, "space": SPACE, **search},
    )


def run(spec: Any, n: int = 800, **kw: Any) -> Any:
    data = dataset(spec, n)
    split = time_split(data.times_ms, spec.model.holdout_fraction, spec.model.evaluation_window_s)
    return data, split, search(spec, data, split.train, SearchOptions("s"), **kw)


class RecordingFit:
    """Fits as usual and remembers which rows (by their unique amount) each fit saw."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def __call__(self, model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        self.seen.append(x[:, 0].copy())
        return model.fit(x, y)


def test_validation_rows_are_after_the_search_rows_and_before_the_holdout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = search_spec(trials=3)
    data = dataset(spec, 900)
    # Make the first feature (amount) a row id, and put ties on the boundaries.
    data.x[:, 0] = np.arange(len(data), dtype=np.float32)
    data.times_ms[700:720] = data.times_ms[700]
    data.times_ms.sort()
    split = time_split(data.times_ms, spec.model.holdout_fraction, spec.model.evaluation_window_s)
    scored: list[np.ndarray] = []
    real_scores = search_module.onnx_scores

    def recording_scores(onnx: bytes, x: np.ndarray, task: str) -> np.ndarray:
        scored.append(x[:, 0].copy())
        return real_scores(onnx, x, task)

    monkeypatch.setattr(search_module, "onnx_scores", recording_scores)
    fit = RecordingFit()
    result = search(spec, data, split.train, SearchOptions("leak"), fit=fit)

    vs = validation_split(data.times_ms, split.train, spec.model.search.validation_fraction)
    fitted_times = data.times_ms[vs.train]
    validation_times = data.times_ms[vs.validation]
    holdout_times = data.times_ms[split.holdout]
    assert fitted_times.max() < validation_times.min()  # strictly later: ties on one side
    assert validation_times.max() < holdout_times.min()  # and before the holdout
    assert len(vs.train) + len(vs.validation) == len(split.train)
    assert result.train_rows == len(vs.train)
    assert result.validation_rows == len(vs.validation)
    # What each trial fitted and scored: exactly those rows, never a holdout row.
    assert len(fit.seen) == 3
    holdout_ids = set(split.holdout.tolist())
    for seen in fit.seen:
        assert sorted(seen.astype(int).tolist()) == vs.train.tolist()
    for rows in scored:
        assert sorted(rows.astype(int).tolist()) == vs.validation.tolist()
        assert holdout_ids.isdisjoint(rows.astype(int).tolist())


def test_ties_at_the_validation_boundary_stay_on_one_side() -> None:
    times = np.array([1, 2, 3, 4, 4, 4, 4, 5, 6, 7], dtype=np.int64)
    vs = validation_split(times, np.arange(10), 0.5)
    assert times[vs.train].max() < times[vs.validation].min()
    assert vs.validation.tolist() == [3, 4, 5, 6, 7, 8, 9]


def test_a_failing_trial_is_recorded_with_its_error_and_the_search_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = fraud_spec(
        params={"max_iter": 10},
        search={
            "trials": 9,
            "seed": 1,
            "sampler": "random",
            # max_leaf_nodes=1 cannot fit (scikit-learn wants >= 2); 15 is made unconvertible.
            "space": {"max_leaf_nodes": {"type": "categorical", "choices": [1, 7, 15]}},
        },
    )
    real_to_onnx = search_module.to_onnx

    def to_onnx(model: Any, *args: Any) -> bytes:
        if model.max_leaf_nodes == 15:
            raise TrainingError("convert", "skl2onnx could not convert: made to fail")
        return real_to_onnx(model, *args)

    monkeypatch.setattr(search_module, "to_onnx", to_onnx)
    _, _, result = run(spec)
    by_choice: dict[int, set[str]] = {}
    for trial in result.trials:
        by_choice.setdefault(trial.params["max_leaf_nodes"], set()).add(trial.state)
    assert len(result.trials) == 9  # every trial ran despite the failures
    assert by_choice[1] == {"failed"}
    assert by_choice[15] == {"failed"}
    assert by_choice[7] == {"complete"}
    errors = {t.params["max_leaf_nodes"]: t.error for t in result.trials if t.error}
    assert "fit failed" in errors[1]
    assert "max_leaf_nodes" in errors[1]
    assert "made to fail" in errors[15]
    assert result.best_params["max_leaf_nodes"] == 7
    assert result.summary()["search_failed_trials"] == sum(
        1 for t in result.trials if t.state == "failed"
    )


def test_when_every_trial_fails_the_run_fails_naming_the_first_error() -> None:
    spec = fraud_spec(
        search={
            "trials": 2,
            "space": {"max_leaf_nodes": {"type": "categorical", "choices": [0, 1]}},
        }
    )
    with pytest.raises(TrainingError, match=r"every trial of search .* failed; the first: fit"):
        run(spec)


def test_the_same_seed_proposes_the_same_trials_and_another_seed_does_not() -> None:
    def params(seed: int) -> list[dict[str, Any]]:
        _, _, result = run(search_spec(trials=4, seed=seed))
        return [t.params for t in result.trials]

    assert params(5) == params(5)
    assert params(5) != params(6)


def test_the_budget_holds_and_the_best_trial_is_the_best_value() -> None:
    _, _, result = run(search_spec(trials=5))
    assert [t.number for t in result.trials] == [0, 1, 2, 3, 4]
    assert result.evaluated == [0, 1, 2, 3, 4]
    values = [t.value for t in result.trials if t.value is not None]
    assert result.best_value == max(values)  # auc: higher is better
    best = next(t for t in result.trials if t.number == result.best_trial)
    assert result.best_params == {"max_iter": 15, **best.params}  # fixed params kept


def test_the_wall_clock_budget_stops_starting_trials() -> None:
    def slow(model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        time.sleep(0.6)
        return model.fit(x, y)

    started = time.perf_counter()
    _, _, result = run(search_spec(trials=50, timeout_s=1), fit=slow)
    assert len(result.trials) <= 3
    assert time.perf_counter() - started < 5


def test_cancelled_search_stops_within_one_trial() -> None:
    """A cancellation during trial 2's fit: trial 2 finishes, no trial 3 starts."""
    fitting = threading.Event()
    calls: list[float] = []

    def slow(model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        calls.append(time.perf_counter())
        if len(calls) == 3:
            fitting.set()
        time.sleep(0.3)
        return model.fit(x, y)

    cancel = threading.Event()

    def canceller() -> None:
        fitting.wait(30)
        cancel.set()

    thread = threading.Thread(target=canceller)
    thread.start()
    with pytest.raises(TrainingError, match="cancelled"):
        run(search_spec(trials=20), fit=slow, cancelled=cancel.is_set)
    thread.join()
    assert len(calls) == 3


def test_n_jobs_runs_trials_side_by_side_within_the_budget() -> None:
    spec = search_spec(trials=6)
    data = dataset(spec, 800)
    split = time_split(data.times_ms, spec.model.holdout_fraction, spec.model.evaluation_window_s)
    result = search(spec, data, split.train, SearchOptions("jobs", n_jobs=2))
    assert sorted(t.number for t in result.trials) == list(range(6))
    assert all(t.state == "complete" for t in result.trials)


def test_the_refit_uses_the_winning_params_on_train_and_validation() -> None:
    spec = search_spec(trials=3)
    data, split, result = run(spec)
    seen: list[int] = []

    def counting(model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        seen.append(len(x))
        return model.fit(x, y)

    trained = train(spec, data, params=result.best_params, fit=counting)
    assert trained.params == result.best_params
    assert seen == [len(split.train)]  # train + validation: the whole part before the holdout
    assert result.train_rows + result.validation_rows == len(split.train)
