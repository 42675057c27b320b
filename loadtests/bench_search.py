"""Hyperparameter search on the fraud example: time per trial, total search time, and
whether a 20-trial search beats the spec's fixed params on the same split (issue #23).

    python loadtests/bench_search.py [--rows 100000] [--trials 20] [--seeds 1,2,3]

For each seed: the example's payments and chargebacks are generated (`mlbus.example`),
each payment's features computed by the feature service's `ViewAggregator`, and the
time split made as the trainer makes it. Baseline, measured in the same run: one plain
fit of the spec's fixed `model.params` on the search's training rows, converted and
scored on its validation rows exactly as a trial is. Candidate: a search of `--trials`
trials (TPE seeded with the seed, one trial at a time, one thread per fit). Reported:
seconds per trial and per search with their ratio to the plain fit, validation AUC of
both (the done-when figure, averaged over the seeds), and the holdout AUC of each after
the refit on train + validation. The goal is the issue's: the search's validation AUC,
averaged over the seeds, is at least the fixed params'.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from threadpoolctl import threadpool_limits

from _fraud_frame import fraud_dataset
from _harness import Benchmark, console
from mlbus.spec import ProjectSpec
from mlbus.training import (
    SearchOptions,
    compute_metrics,
    make_estimator,
    onnx_scores,
    search,
    time_split,
    to_onnx,
    train,
    validation_split,
)
from mlbus.training._pipeline import _positive_class

SPACE: dict[str, Any] = {
    "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
    "max_leaf_nodes": {"type": "int", "low": 8, "high": 128, "log": True},
    "min_samples_leaf": {"type": "int", "low": 5, "high": 200, "log": True},
    "l2_regularization": {"type": "float", "low": 1e-4, "high": 10.0, "log": True},
    "max_features": {"type": "float", "low": 0.3, "high": 1.0},
    "class_weight": {"type": "categorical", "choices": ["balanced", None]},
}


def fixed_on_validation(
    spec: ProjectSpec, data: Any, train_rows: np.ndarray
) -> tuple[float, float]:
    """(validation AUC, seconds) of the spec's fixed params, fitted and scored like a trial."""
    search_spec = spec.model.search
    assert search_spec is not None
    vs = validation_split(data.times_ms, train_rows, search_spec.validation_fraction)
    y, _ = _positive_class(spec, data.y)
    started = time.perf_counter()
    model = make_estimator(spec.model.estimator, spec.model.task, spec.model.params)
    with threadpool_limits(limits=1):
        model.fit(data.x[vs.train], y[vs.train])
    onnx = to_onnx(model, data.x.shape[1], spec.model.task, {})
    scores = onnx_scores(onnx, data.x[vs.validation], spec.model.task)
    seconds = time.perf_counter() - started
    auc = compute_metrics("classification", y[vs.validation], scores, 0.5)["auc"]
    return auc, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    bench = Benchmark(
        "bench_search",
        f"{args.trials}-trial search vs the spec's fixed params, fraud example",
        rows=args.rows,
        trials=args.trials,
        seeds=seeds,
        space=SPACE,
    )
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        search_block = {"trials": args.trials, "seed": seed, "timeout_s": 3600, "space": SPACE}
        spec, data = fraud_dataset(args.rows, seed, search=search_block)
        model = spec.model
        split = time_split(data.times_ms, model.holdout_fraction, model.evaluation_window_s)
        fixed_auc, fixed_s = fixed_on_validation(spec, data, split.train)
        bench.record("fixed params", "fit+convert+score", fixed_s, "s", higher_is_better=False)
        started = time.perf_counter()
        result = search(spec, data, split.train, SearchOptions(f"bench-{seed}"))
        total_s = time.perf_counter() - started
        for trial in result.trials:
            if trial.duration_s is not None:
                seconds = trial.duration_s
                bench.record(
                    "search trial", "fit+convert+score", seconds, "s", higher_is_better=False
                )
        bench.record("search", "total", total_s, "s", higher_is_better=False)
        bench.record("fixed params", "validation auc", fixed_auc, "auc", higher_is_better=True)
        bench.record("search", "validation auc", result.best_value, "auc", higher_is_better=True)
        refit_fixed = train(spec, data)
        refit_best = train(spec, data, params=result.best_params)
        holdout_fixed = refit_fixed.holdout_metrics["auc"]
        holdout_best = refit_best.holdout_metrics["auc"]
        bench.record("fixed params", "holdout auc", holdout_fixed, "auc", higher_is_better=True)
        bench.record("search", "holdout auc", holdout_best, "auc", higher_is_better=True)
        row = {
            "seed": seed,
            "rows": len(data),
            "fixed_validation_auc": round(fixed_auc, 4),
            "search_validation_auc": round(result.best_value, 4),
            "fixed_holdout_auc": round(holdout_fixed, 4),
            "search_holdout_auc": round(holdout_best, 4),
            "fixed_fit_s": round(fixed_s, 2),
            "search_total_s": round(total_s, 1),
            "trials": len(result.trials),
            "failed_trials": sum(1 for t in result.trials if t.state == "failed"),
            "best_params": result.best_params,
        }
        rows.append(row)
        console.print(row)
    mean = {
        key: statistics.fmean(r[key] for r in rows)
        for key in (
            "fixed_validation_auc",
            "search_validation_auc",
            "fixed_holdout_auc",
            "search_holdout_auc",
        )
    }
    bench.notes.append(
        f"validation AUC averaged over seeds {seeds}: "
        f"fixed params {mean['fixed_validation_auc']:.4f}"
        f", {args.trials}-trial search {mean['search_validation_auc']:.4f}"
    )
    bench.notes.append(
        f"holdout AUC after the refit, averaged: fixed {mean['fixed_holdout_auc']:.4f}, "
        f"search {mean['search_holdout_auc']:.4f} (the gates' part; the search never saw it)"
    )
    per_trial = bench.median("search trial", "fit+convert+score")
    fixed = bench.median("fixed params", "fit+convert+score")
    bench.notes.append(
        f"time per trial {per_trial:.2f}s = {per_trial / fixed:.2f}x one plain fit of the fixed "
        f"params ({fixed:.2f}s); a {args.trials}-trial search "
        f"{bench.median('search', 'total'):.1f}s on {args.rows:,} rows"
    )
    bench.goal(
        "the search's validation AUC (median over seeds) beats the fixed params'",
        "search",
        "fixed params",
        "validation auc",
        ">=",
        1.0,
    )
    sys.exit(0 if bench.report() else 1)


if __name__ == "__main__":
    main()
