"""Training figures for 100k rows: fit time, rows/s, ONNX parity max error, model size.

    python loadtests/bench_training.py [--rows 100000]

Synthetic fraud-shaped frame (the example spec's features), the same pipeline
as the trainer (`mlbus.training.train`) for each estimator; logistic
regression is the baseline the others are compared with. Prints a table and
JSON; never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.unit.test_training import frame, fraud_spec

from mlbus.training import SUPPORTED_ESTIMATORS, dataset_from_table, train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    results = {}
    for estimator in (
        "logistic_regression",
        *[e for e in SUPPORTED_ESTIMATORS if e != "logistic_regression"],
    ):
        params = (
            {"n_estimators": 100, "max_depth": 12, "n_jobs": 1}
            if estimator == "random_forest"
            else {}
        )
        spec = fraud_spec(estimator=estimator, params=params)
        started = time.perf_counter()
        data = dataset_from_table(spec, frame(spec, args.rows, seed=1), "f" * 64)
        prepared_s = time.perf_counter() - started
        trained = train(spec, data)
        results[estimator] = {
            "rows": args.rows,
            "prepare_s": round(prepared_s, 2),
            "fit_s": round(trained.fit_s, 2),
            "run_s": round(trained.duration_s, 2),
            "rows_per_s_fit": round(trained.train_rows / trained.fit_s),
            "rows_per_s_run": round(args.rows / trained.duration_s),
            "parity_max_error": trained.parity_max_error,
            "model_bytes": len(trained.onnx),
            "holdout_auc": round(trained.holdout_metrics.get("auc", float("nan")), 4),
        }
    base = results["logistic_regression"]["run_s"]
    header = ("estimator", "fit s", "run s", "x LR", "rows/s", "parity", "bytes")
    print("{:24} {:>7} {:>7} {:>6} {:>9} {:>9} {:>10}".format(*header))
    for name, r in results.items():
        print(
            f"{name:24} {r['fit_s']:7.2f} {r['run_s']:7.2f} {r['run_s'] / base:6.1f} "
            f"{r['rows_per_s_run']:9,} {r['parity_max_error']:9.1e} {r['model_bytes']:10,}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
