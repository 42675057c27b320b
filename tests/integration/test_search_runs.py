"""Searches recorded in a real storage: runs and trials read back and shown by `mlbus runs`,
a cancellation through the storage stops a search within one trial, two worker processes
share one study on the real PostgreSQL (each trial once), and the optional MLflow copy
lands in a local file store."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from mlbus.cli import app
from mlbus.training import (
    SearchOptions,
    TrainingError,
    create_study,
    get_run,
    join_search,
    list_runs,
    record_version,
    request_cancel,
    search,
    storage_at,
    time_split,
)
from mlbus.training._mlflow import log_search
from tests.integration.test_registry_store import postgres_admin  # noqa: F401 (fixture)
from tests.unit.test_training import dataset, fraud_spec

pytestmark = pytest.mark.integration

SPACE = {
    "learning_rate": {"type": "float", "low": 0.02, "high": 0.5, "log": True},
    "max_leaf_nodes": {"type": "categorical", "choices": [1, 8, 16]},  # 1 cannot fit
}


def spec_with(trials: int, seed: int = 0) -> Any:
    return fraud_spec(
        params={"max_iter": 10}, search={"trials": trials, "seed": seed, "space": SPACE}
    )


def searched(storage_url: str, name: str, trials: int = 6, **kw: Any) -> Any:
    spec = spec_with(trials)
    data = dataset(spec, 800)
    split = time_split(data.times_ms, spec.model.holdout_fraction, spec.model.evaluation_window_s)
    options = SearchOptions(name, storage_url=storage_url, run_id=name.split("-")[-1])
    return spec, data, search(spec, data, split.train, options, **kw)


def test_runs_and_trials_are_recorded_and_shown_best_first(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'search.sqlite'}"
    _, data, result = searched(url, "fraud_detector-run1")
    with storage_at(url) as storage:
        record_version(storage, result.study, 4)
        (run,) = list_runs(storage, model="fraud_detector")
        assert list_runs(storage, model="another") == []
    assert run.run_id == "run1"
    assert run.status == "completed"
    assert run.dataset_fingerprint == data.fingerprint
    assert run.seed == 0
    assert run.version == 4
    assert run.best_trial == result.best_trial
    assert len(run.trials) == 6
    failed = [t for t in run.trials if t.state == "failed"]
    assert failed
    assert all("fit failed" in (t.error or "") for t in failed)
    ordered = run.sorted_trials()
    values = [t.value for t in ordered if t.value is not None]
    assert values == sorted(values, reverse=True)  # auc: best first
    assert ordered[0].number == result.best_trial
    assert all(t.duration_s is not None and t.duration_s > 0 for t in run.trials)

    runner = CliRunner()
    env = {"COLUMNS": "200", "MLBUS_DATA_DIR": str(tmp_path / "data")}
    listed = runner.invoke(app, ["runs", "list", "--storage", url, "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    (summary,) = json.loads(listed.output)
    assert summary["run_id"] == "run1"
    assert summary["trials"] == 6
    assert summary["failed_trials"] == len(failed)
    shown = runner.invoke(app, ["runs", "show", "run1", "--storage", url, "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.output)
    assert [t["number"] for t in doc["trials"]] == [t.number for t in ordered]
    assert doc["version"] == 4
    table = runner.invoke(app, ["runs", "show", "run1", "--storage", url], env=env)
    assert table.exit_code == 0, table.output
    assert f"trial #{result.best_trial}" in table.output
    assert "fit failed" in table.output
    missing = runner.invoke(app, ["runs", "show", "nope", "--storage", url], env=env)
    assert missing.exit_code == 1
    assert "no run 'nope'" in missing.output
    empty = runner.invoke(app, ["runs", "list"], env=env)  # no storage in that data folder yet
    assert empty.exit_code == 0, empty.output
    assert "no runs with a search recorded yet" in empty.output


def test_a_cancellation_in_the_storage_stops_the_search_within_one_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'search.sqlite'}"
    fits: list[float] = []
    third = threading.Event()

    def slow(model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        fits.append(time.perf_counter())
        if len(fits) == 3:
            third.set()
        time.sleep(0.4)
        return model.fit(x, y)

    def cancel() -> None:  # another process's handle, as the trainer service has
        third.wait(60)
        with storage_at(url) as storage:
            assert request_cancel(storage, "fraud_detector-c1", "superseded by request x")

    thread = threading.Thread(target=cancel)
    thread.start()
    with pytest.raises(TrainingError, match="cancelled: superseded by request x"):
        searched(url, "fraud_detector-c1", trials=30, fit=slow)
    thread.join()
    assert len(fits) == 3  # the trial in flight finished; no other started
    with storage_at(url) as storage:
        run = get_run(storage, "c1")
    assert run.status == "cancelled"
    assert len(run.trials) == 3


def test_mlflow_gets_the_run_and_one_child_run_per_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    # MLflow 3 keeps its file store in maintenance mode, behind this opt-in.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")

    spec, data, result = searched(f"sqlite:///{tmp_path / 's.sqlite'}", "fraud_detector-m1")
    uri = (tmp_path / "mlruns").as_uri()
    parent_id = log_search(
        uri, spec, result, run_id="m1", dataset_fingerprint=data.fingerprint, metrics={"auc": 0.9}
    )
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_id)
    assert parent.data.tags["mlbus.dataset_fingerprint"] == data.fingerprint
    assert parent.data.tags["mlbus.best_trial"] == str(result.best_trial)
    assert parent.data.params["learning_rate"] == str(result.best_params["learning_rate"])
    assert parent.data.metrics["search_best_auc"] == pytest.approx(result.best_value)
    experiment = client.get_experiment_by_name("mlbus/fraud_detector")
    assert experiment is not None
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert len(children) == len(result.trials)
    statuses = {c.data.tags["mlbus.trial"]: c.info.status for c in children}
    for trial in result.trials:
        expected = "FINISHED" if trial.state == "complete" else "FAILED"
        assert statuses[str(trial.number)] == expected


# ── two workers on one study, real PostgreSQL ────────────────────────────────


def _slow_fit(model: Any, x: np.ndarray, y: np.ndarray) -> Any:
    time.sleep(0.2)  # long enough that both workers hold a trial at once
    return model.fit(x, y)


def _worker(url: str, name: str, trials: int, out: Any) -> None:
    spec = spec_with(trials)
    data = dataset(spec, 800)
    split = time_split(data.times_ms, spec.model.holdout_fraction, spec.model.evaluation_window_s)
    options = SearchOptions(name, storage_url=url)
    out.put(join_search(spec, data, split.train, options, fit=_slow_fit))


@pytest.fixture
def pg_search_url(postgres_admin: Engine) -> Any:  # noqa: F811
    schema = f"search_test_{uuid.uuid4().hex[:12]}"
    with postgres_admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield postgres_admin.url.set(query={"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with postgres_admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.mark.timeout(240)
def test_two_workers_share_one_study_on_postgresql_and_run_each_trial_once(
    pg_search_url: str,
) -> None:
    trials = 8
    spec = spec_with(trials)
    name = "fraud_detector-pg1"
    create_study(spec, SearchOptions(name, storage_url=pg_search_url, run_id="pg1"))
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [
        context.Process(target=_worker, args=(pg_search_url, name, trials, out)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    ran = [out.get(timeout=200) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert all(ran), f"both workers should run trials: {ran}"
    assert sorted(ran[0] + ran[1]) == list(range(trials))  # each trial once, none twice
    with storage_at(pg_search_url) as storage:
        run = get_run(storage, name)
    evaluated = [t for t in run.trials if t.number < trials]
    assert len(evaluated) == trials
    assert all(t.state in ("complete", "failed") for t in evaluated)
    assert len({t.worker for t in evaluated}) == 2
    extra = [t for t in run.trials if t.number >= trials]  # asked in a race, never run
    assert all((t.error or "").startswith("not run: the budget") for t in extra)
    assert len(extra) <= 1


def test_postgresql_storage_keeps_optuna_out_of_the_registry_schema(
    postgres_admin: Engine,  # noqa: F811
) -> None:
    """The registry's Alembic owns `alembic_version` in the default schema; Optuna's
    tables go to `mlbus_search` when the registry's URL is given as it is."""
    url = postgres_admin.url.render_as_string(hide_password=False)
    spec = spec_with(1)
    name = f"fraud_detector-schema{uuid.uuid4().hex[:8]}"
    create_study(spec, SearchOptions(name, storage_url=url))
    with postgres_admin.connect() as connection:
        schema = connection.execute(
            text(
                "select table_schema from information_schema.tables where table_name = 'studies'"
                " and table_schema = 'mlbus_search'"
            )
        ).scalar()
    assert schema == "mlbus_search"
    with storage_at(url) as storage:
        assert get_run(storage, name).study == name
