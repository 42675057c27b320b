"""Hyperparameter search inside a budget, on the training part only (issue #23, ADR 0023).

    split = time_split(dataset.times_ms, ...)                  # train < cut <= holdout
    result = search(spec, dataset, split.train, SearchOptions(storage_url, study))
    trained = train(spec, dataset, params=result.best_params)  # refit on train + validation

The search sees only the rows of `split.train`: their latest
`search.validation_fraction` (by time, ties kept together) validate, the rows
before fit. The holdout, on which the gates compare candidate and champion, is
never read. Each trial fits, converts to ONNX and scores the validation rows
with ONNX Runtime, so the metric is the served model's and a parameter set
that cannot be converted fails as a trial, not at the refit. A failing trial is
recorded with its error and the search goes on.

Trials run in `n_jobs` threads of this process (default 1), each fit limited to
`threads_per_trial` BLAS/OpenMP threads, so a search leaves cores to the other
services. Several processes (trainer replicas) may work on one study through
Optuna's RDB storage: `join_search` is what a second worker runs. Between
trials each worker checks the budget (trials, wall clock) and whether the
study was cancelled, so a cancelled search stops within one trial.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mlbus.spec import HIGHER_IS_BETTER, ParamSpace, ProjectSpec, SearchSpec
from mlbus.training._dataset import Dataset
from mlbus.training._errors import TrainingError
from mlbus.training._pipeline import (
    Fit,
    _positive_class,
    compute_metrics,
    make_estimator,
    onnx_scores,
    to_onnx,
)
from mlbus.training._runs import (
    CANCELLED,
    CANCELLED_ATTR,
    COMPLETED,
    FAILED,
    RUNNING,
    TrialRecord,
    close_storage,
    open_storage,
    storage_at,
    trial_record,
)

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage

Cancelled = Callable[[], bool]
OnTrial = Callable[[TrialRecord], None]


# ── the validation split ─────────────────────────────────────────────────────


@dataclass(frozen=True)
class ValidationSplit:
    """Row indexes (into the dataset) of the search: fit on `train`, score on `validation`.

    Every `train` row is strictly earlier than every `validation` row; both are
    drawn from the run's training part, so both are earlier than the holdout.
    """

    train: np.ndarray
    validation: np.ndarray
    validation_start_ms: int


def validation_split(times_ms: np.ndarray, rows: np.ndarray, fraction: float) -> ValidationSplit:
    """The latest `fraction` of `rows` (by time, ties on one side) validate; the rest fit."""
    rows = np.asarray(rows)
    if len(rows) < 2:
        raise TrainingError(
            "dataset", f"the search needs at least 2 training rows, got {len(rows)}"
        )
    times = times_ms[rows]
    if np.any(np.diff(times) < 0):
        raise ValueError("rows must be in time order")
    first = min(max(int(np.floor(len(rows) * (1 - fraction))), 1), len(rows) - 1)
    start = int(times[first])
    fit_rows = rows[times < start]
    if len(fit_rows) == 0:
        raise TrainingError(
            "dataset",
            "every training row shares the first timestamp of the validation part; "
            "the search cannot split by time",
        )
    return ValidationSplit(fit_rows, rows[times >= start], start)


# ── options and result ───────────────────────────────────────────────────────


@dataclass(frozen=True)
class SearchOptions:
    """Where the trials are recorded and how much of the machine they may take.

    `storage_url`: Optuna RDB storage (SQLite file, PostgreSQL); None keeps the
    study in memory (nothing recorded). `n_jobs`: trials at once in this
    process. `threads_per_trial`: BLAS/OpenMP threads of one fit.
    """

    study_name: str
    storage_url: str | None = None
    run_id: str = ""
    n_jobs: int = 1
    threads_per_trial: int = 1
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


@dataclass
class SearchResult:
    study: str
    metric: str
    direction: str
    status: str
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    """The refit's params: `model.params` with the winning trial's values."""
    trials: list[TrialRecord]
    train_rows: int
    validation_rows: int
    validation_start_ms: int
    evaluated: list[int]
    """Numbers of the trials this process ran."""
    duration_s: float
    seed: int

    def summary(self) -> dict[str, Any]:
        """What the registered version records about its search (lineage)."""
        failed = sum(1 for t in self.trials if t.state == "failed")
        return {
            "search_study": self.study,
            "search_best_trial": self.best_trial,
            "search_best_value": self.best_value,
            "search_metric": self.metric,
            "search_trials": len(self.trials),
            "search_failed_trials": failed,
            "search_seed": self.seed,
            "search_status": self.status,
        }


# ── the study ────────────────────────────────────────────────────────────────


def _direction(spec: ProjectSpec) -> Literal["maximize", "minimize"]:
    return "maximize" if HIGHER_IS_BETTER[spec.model.search_metric] else "minimize"


def _search_spec(spec: ProjectSpec) -> SearchSpec:
    if spec.model.search is None:
        raise ValueError("the spec's model has no `search`")
    return spec.model.search


def _sampler(search: SearchSpec) -> optuna.samplers.BaseSampler:
    import optuna

    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    return optuna.samplers.TPESampler(seed=search.seed)


def create_study(
    spec: ProjectSpec,
    options: SearchOptions,
    attrs: Mapping[str, Any] | None = None,
    *,
    storage: BaseStorage | None = None,
) -> optuna.Study:
    """The run's study, created (or loaded, for another worker) with the run's facts.

    Without `storage`, one is opened at `options.storage_url` and closed again
    before returning (the study is then only good for reading its name).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is None and options.storage_url:
        with storage_at(options.storage_url) as opened:
            return create_study(spec, options, attrs, storage=opened)
    search = _search_spec(spec)
    study = optuna.create_study(
        study_name=options.study_name,
        storage=storage,
        sampler=_sampler(search),
        direction=_direction(spec),
        load_if_exists=True,
    )
    facts: dict[str, Any] = {}
    if "model" not in study.user_attrs:  # the first worker records the run's facts
        facts = {
            "model": spec.model.name,
            "run_id": options.run_id,
            "estimator": spec.model.estimator,
            "metric": spec.model.search_metric,
            "seed": search.seed,
            "budget_trials": search.trials,
            "budget_timeout_s": search.timeout_s,
            "sampler": search.sampler,
            "fixed_params": dict(spec.model.params),
            "status": RUNNING,
            "started_at": datetime.now(UTC).isoformat(),
        }
    for key, value in {**facts, **(attrs or {})}.items():
        study.set_user_attr(key, value)
    return study


def load_study(
    spec: ProjectSpec, name: str, storage: BaseStorage, worker: str = ""
) -> optuna.Study:
    """Another worker's handle on an existing study.

    Its sampler is seeded from the spec's seed and the worker's name: with the
    creator's very seed, both would draw the same random start-up trials.
    """
    import optuna

    search = _search_spec(spec)
    if worker:
        search = search.model_copy(
            update={"seed": (search.seed + zlib.crc32(worker.encode())) % 2**32}
        )
    return optuna.load_study(study_name=name, storage=storage, sampler=_sampler(search))


def suggest(trial: optuna.Trial, space: Mapping[str, ParamSpace]) -> dict[str, Any]:
    """One value per searched parameter, from the spec's space."""
    out: dict[str, Any] = {}
    for name, p in space.items():
        if p.type == "categorical":
            out[name] = trial.suggest_categorical(name, list(p.choices or ()))
        elif p.type == "int":
            low, high = int(p.low or 0), int(p.high or 0)  # set: the spec checked them
            out[name] = trial.suggest_int(name, low, high, step=p.step or 1, log=p.log)
        else:
            assert p.low is not None
            assert p.high is not None
            out[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
    return out


# ── one trial ────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class _Problem:
    """The arrays one search fits and scores (the training part only)."""

    spec: ProjectSpec
    x_fit: np.ndarray
    y_fit: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    fit: Fit | None
    threads: int


class _TrialFailed(Exception):
    def __init__(self, reason: str, **timings: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timings = timings


def _evaluate(problem: _Problem, params: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
    """Fit on the search's training rows, convert, score the validation rows with ORT."""
    from threadpoolctl import threadpool_limits

    model_spec = problem.spec.model
    task = model_spec.task
    timings: dict[str, float] = {}
    try:
        estimator = make_estimator(model_spec.estimator, task, params)
    except TrainingError as exc:
        raise _TrialFailed(exc.reason) from None
    started = time.perf_counter()
    try:
        with threadpool_limits(limits=problem.threads):
            if problem.fit is not None:
                model = problem.fit(estimator, problem.x_fit, problem.y_fit)
            else:
                model = estimator.fit(problem.x_fit, problem.y_fit)
    except Exception as exc:
        raise _TrialFailed(f"fit failed: {type(exc).__name__}: {exc}") from None
    timings["fit_s"] = time.perf_counter() - started
    started = time.perf_counter()
    try:
        onnx = to_onnx(model, problem.x_fit.shape[1], task, {})
        scores = onnx_scores(onnx, problem.x_val, task)
    except TrainingError as exc:
        raise _TrialFailed(exc.reason, **timings) from None
    except Exception as exc:
        raise _TrialFailed(f"ONNX scoring failed: {type(exc).__name__}: {exc}", **timings) from None
    timings["convert_s"] = time.perf_counter() - started
    metric = model_spec.search_metric
    metrics = compute_metrics(task, problem.y_val, scores, model_spec.threshold)
    if metric not in metrics or not np.isfinite(metrics[metric]):
        raise _TrialFailed(f"{metric} is undefined on the validation rows", **timings)
    return metrics[metric], timings


# ── the worker loop ──────────────────────────────────────────────────────────


def _study_cancelled(study: optuna.Study) -> str | None:
    reason = study.user_attrs.get(CANCELLED_ATTR)
    return str(reason) if reason else None


def _work(
    study: optuna.Study,
    problem: _Problem,
    options: SearchOptions,
    *,
    deadline: float,
    cancelled: Cancelled | None,
    on_trial: OnTrial | None,
) -> tuple[list[int], str | None]:
    """Run trials until the budget, the deadline or a cancellation; (trials run, why stopped)."""
    from optuna.trial import TrialState

    search = _search_spec(problem.spec)
    budget = search.trials
    fixed = dict(problem.spec.model.params)
    evaluated: list[int] = []
    lock = threading.Lock()
    stop: list[str] = []

    def one_worker() -> None:
        while not stop:
            reason = (
                "cancelled" if cancelled is not None and cancelled() else None
            ) or _study_cancelled(study)
            if reason:
                stop.append(f"cancelled: {reason}")
                return
            if time.monotonic() >= deadline:
                stop.append(f"timeout: the budget of {search.timeout_s}s was spent")
                return
            if len(study.get_trials(deepcopy=False)) >= budget:
                return
            trial = study.ask()
            if trial.number >= budget:  # another worker took the last trial meanwhile
                trial.set_user_attr("error", f"not run: the budget of {budget} trials was reached")
                trial.set_user_attr("worker", options.worker)
                study.tell(trial, state=TrialState.FAIL)
                return
            searched = suggest(trial, search.space)
            trial.set_user_attr("worker", options.worker)
            with lock:
                evaluated.append(trial.number)
            began = time.perf_counter()
            value: float | None = None
            error: str | None = None
            try:
                value, timings = _evaluate(problem, {**fixed, **searched})
            except _TrialFailed as failure:
                error, timings = failure.reason, failure.timings
                trial.set_user_attr("error", error)
            for key, seconds in timings.items():
                trial.set_user_attr(key, seconds)
            if value is None:
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, value)
            if on_trial is not None:
                on_trial(
                    TrialRecord(
                        number=trial.number,
                        state="failed" if value is None else "complete",
                        params=searched,
                        value=value,
                        duration_s=time.perf_counter() - began,
                        error=error,
                        worker=options.worker,
                        fit_s=timings.get("fit_s"),
                        convert_s=timings.get("convert_s"),
                    )
                )

    n_jobs = max(1, options.n_jobs)
    if n_jobs == 1:
        one_worker()
    else:
        threads = [threading.Thread(target=one_worker, daemon=True) for _ in range(n_jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return sorted(evaluated), (stop[0] if stop else None)


def _problem(
    spec: ProjectSpec, dataset: Dataset, split: ValidationSplit, fit: Fit | None, threads: int
) -> _Problem:
    y = dataset.y
    if spec.model.task == "classification":
        y, _ = _positive_class(spec, dataset.y)
        if len(np.unique(y[split.validation])) < 2:
            raise TrainingError(
                "dataset",
                "the search's validation rows (the latest of the training part) have a single "
                "class; lower search.validation_fraction's demand on time or wait for more labels",
            )
    return _Problem(
        spec,
        dataset.x[split.train],
        y[split.train],
        dataset.x[split.validation],
        y[split.validation],
        fit,
        max(1, threads),
    )


def search(
    spec: ProjectSpec,
    dataset: Dataset,
    train_rows: np.ndarray,
    options: SearchOptions,
    *,
    fit: Fit | None = None,
    cancelled: Cancelled | None = None,
    on_trial: OnTrial | None = None,
) -> SearchResult:
    """Search `model.search.space` on `train_rows` of `dataset` (never the holdout).

    Raises `TrainingError` when no trial succeeded (naming the first error) or
    when the search was cancelled before any trial succeeded.
    """
    started = time.perf_counter()
    search_spec = _search_spec(spec)
    split = validation_split(dataset.times_ms, train_rows, search_spec.validation_fraction)
    problem = _problem(spec, dataset, split, fit, options.threads_per_trial)
    storage = open_storage(options.storage_url) if options.storage_url else None
    try:
        return _search(
            spec,
            dataset,
            train_rows,
            split,
            problem,
            options,
            storage,
            started,
            cancelled=cancelled,
            on_trial=on_trial,
        )
    finally:
        close_storage(storage)


def _search(
    spec: ProjectSpec,
    dataset: Dataset,
    train_rows: np.ndarray,
    split: ValidationSplit,
    problem: _Problem,
    options: SearchOptions,
    storage: BaseStorage | None,
    started: float,
    *,
    cancelled: Cancelled | None,
    on_trial: OnTrial | None,
) -> SearchResult:
    search_spec = _search_spec(spec)
    study = create_study(
        spec,
        options,
        {
            "dataset_fingerprint": dataset.fingerprint,
            "rows": len(dataset),
            "search_train_rows": len(split.train),
            "validation_rows": len(split.validation),
            "validation_start_ms": split.validation_start_ms,
            "holdout_start_ms": int(dataset.times_ms[train_rows[-1]]) + 1
            if len(train_rows) < len(dataset)
            else None,
        },
        storage=storage,
    )
    deadline = time.monotonic() + search_spec.timeout_s
    evaluated, stopped = _work(
        study, problem, options, deadline=deadline, cancelled=cancelled, on_trial=on_trial
    )
    if stopped is None or not stopped.startswith("cancelled"):
        _await_other_workers(study, deadline)
    return _finish(spec, study, split, evaluated, stopped, time.perf_counter() - started)


def join_search(
    spec: ProjectSpec,
    dataset: Dataset,
    train_rows: np.ndarray,
    options: SearchOptions,
    *,
    fit: Fit | None = None,
    cancelled: Cancelled | None = None,
) -> list[int]:
    """Work on another worker's study (same spec and data) until its budget; the trials run here.

    The study's budget counts every worker's trials, so N replicas together run
    `search.trials` trials, each once.
    """
    search_spec = _search_spec(spec)
    split = validation_split(dataset.times_ms, train_rows, search_spec.validation_fraction)
    problem = _problem(spec, dataset, split, fit, options.threads_per_trial)
    if options.storage_url is None:
        raise ValueError("joining a search needs the shared storage_url")
    with storage_at(options.storage_url) as storage:
        study = load_study(spec, options.study_name, storage, options.worker)
        deadline = time.monotonic() + search_spec.timeout_s
        evaluated, _ = _work(
            study, problem, options, deadline=deadline, cancelled=cancelled, on_trial=None
        )
    return evaluated


def _await_other_workers(study: optuna.Study, deadline: float, poll_s: float = 0.2) -> None:
    """Until no trial of the study is running (another replica's last trials), or the deadline.

    A worker that died leaves its trial running; the wall-clock budget bounds the wait.
    """
    from optuna.trial import TrialState

    while time.monotonic() < deadline:
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        time.sleep(poll_s)


def _finish(
    spec: ProjectSpec,
    study: optuna.Study,
    split: ValidationSplit,
    evaluated: list[int],
    stopped: str | None,
    duration_s: float,
) -> SearchResult:
    search_spec = _search_spec(spec)
    trials = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    done = [t for t in trials if t.state == "complete" and t.value is not None]
    study.set_user_attr("finished_at", datetime.now(UTC).isoformat())
    study.set_user_attr("duration_s", duration_s)
    if stopped is not None and stopped.startswith("cancelled"):
        study.set_user_attr("status", CANCELLED)
        raise TrainingError("train", f"search {study.study_name} {stopped}")
    if not done:
        study.set_user_attr("status", FAILED)
        first = next((t.error for t in trials if t.error), "no trial ran")
        raise TrainingError(
            "train", f"every trial of search {study.study_name} failed; the first: {first}"
        )
    best = study.best_trial
    study.set_user_attr("status", COMPLETED)
    study.set_user_attr("best_trial", best.number)
    study.set_user_attr("best_value", best.value)
    if stopped:
        study.set_user_attr("stopped", stopped)
    assert best.value is not None
    return SearchResult(
        study=study.study_name,
        metric=spec.model.search_metric,
        direction=_direction(spec),
        status=COMPLETED,
        best_trial=best.number,
        best_value=float(best.value),
        best_params={**spec.model.params, **best.params},
        trials=trials,
        train_rows=len(split.train),
        validation_rows=len(split.validation),
        validation_start_ms=split.validation_start_ms,
        evaluated=evaluated,
        duration_s=duration_s,
        seed=search_spec.seed,
    )
