"""Optional: a search's run and trials logged to MLflow (issue #23, ADR 0023).

When the trainer has a tracking URI (`MLBUS_TRAINER_MLFLOW_TRACKING_URI`, any
URI the MLflow client takes: `file:///…`, `http://…`, `databricks`), each
search becomes one MLflow run in experiment `mlbus/<model>` with one nested run
per trial, so MLflow users compare them in their own UI. The search storage
stays the record of truth; MLflow is a copy written after the search, and a
failure to write it is logged, never a failed training.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlbus.spec import ProjectSpec
    from mlbus.training._search import SearchResult

log = logging.getLogger(__name__)


def _param(value: Any) -> str:
    return str(value)[:500]  # MLflow's limit on a param value is 6000; keep rows readable


def log_search(
    tracking_uri: str,
    spec: ProjectSpec,
    result: SearchResult,
    *,
    run_id: str,
    dataset_fingerprint: str,
    metrics: dict[str, float] | None = None,
) -> str:
    """Write the search as an MLflow run with a child run per trial; the parent run's id."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    name = f"mlbus/{spec.model.name}"
    experiment = client.get_experiment_by_name(name)
    experiment_id = (
        experiment.experiment_id if experiment is not None else client.create_experiment(name)
    )
    now_ms = int(time.time() * 1000)
    parent = client.create_run(
        experiment_id,
        run_name=result.study,
        tags={
            "mlbus.run_id": run_id,
            "mlbus.study": result.study,
            "mlbus.model": spec.model.name,
            "mlbus.estimator": spec.model.estimator,
            "mlbus.dataset_fingerprint": dataset_fingerprint,
            "mlbus.seed": str(result.seed),
            "mlbus.best_trial": str(result.best_trial),
        },
    )
    parent_id = parent.info.run_id
    client.log_batch(
        parent_id,
        params=[Param(k, _param(v)) for k, v in sorted(result.best_params.items())],
        metrics=[
            Metric(f"search_best_{result.metric}", result.best_value, now_ms, 0),
            *(Metric(k, float(v), now_ms, 0) for k, v in sorted((metrics or {}).items())),
        ],
    )
    for trial in result.trials:
        child = client.create_run(
            experiment_id,
            run_name=f"trial-{trial.number}",
            tags={
                "mlflow.parentRunId": parent_id,
                "mlbus.study": result.study,
                "mlbus.trial": str(trial.number),
                "mlbus.state": trial.state,
                **({"mlbus.error": trial.error[:5000]} if trial.error else {}),
            },
        )
        values = [Metric("duration_s", trial.duration_s or 0.0, now_ms, 0)]
        if trial.value is not None:
            values.append(Metric(result.metric, trial.value, now_ms, 0))
        client.log_batch(
            child.info.run_id,
            params=[Param(k, _param(v)) for k, v in sorted(trial.params.items())],
            metrics=values,
            tags=[RunTag("mlbus.worker", trial.worker or "")],
        )
        client.set_terminated(
            child.info.run_id, status="FINISHED" if trial.state == "complete" else "FAILED"
        )
    client.set_terminated(parent_id, status="FINISHED")
    return str(parent_id)
