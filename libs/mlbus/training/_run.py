"""One training run end to end, shared by the trainer service and `mlbus train`.

    champion = await fetch_champion(client, spec.model.name)
    outcome = run_job(TrainingJob(spec, offline_url, start, end, champion=champion))  # CPU
    registration = await register_outcome(client, spec, outcome, run_id=...)

`run_job` is a plain function of picklable inputs, so the service runs it in a
worker process; the async halves talk to the registry.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mlbus.errors import NotFound
from mlbus.featurestore import OfflineStore
from mlbus.registry_client import Registration, RegistryClient
from mlbus.spec import ProjectSpec
from mlbus.training._dataset import load_dataset
from mlbus.training._errors import TrainingError
from mlbus.training._pipeline import (
    Fit,
    Progress,
    TrainedModel,
    evaluate_onnx,
    require_rows,
    time_split,
    train,
)
from mlbus.training._runs import study_name
from mlbus.training._search import SearchOptions, SearchResult, join_search, search

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    """The current champion's version and ONNX bytes (scored on this run's window)."""

    version: int
    onnx: bytes


@dataclass(frozen=True)
class TrainingJob:
    spec: ProjectSpec
    offline_url: str
    start: datetime | None = None
    end: datetime | None = None
    champion: Champion | None = None
    code_version: str = ""
    fit: Fit | None = None  # a seam for tests; must be picklable for a worker process
    run_id: str = ""
    search_storage_url: str | None = None
    """Where a `model.search` records its study (None: in memory, not recorded)."""
    search_n_jobs: int = 1
    search_threads_per_trial: int = 1
    mlflow_tracking_uri: str | None = None
    """Also log a search's run and trials to MLflow (optional, ADR 0023)."""
    search_worker: str = ""
    """The name trials of this run record as their worker (empty: host:pid)."""

    def search_study(self) -> str:
        """The study a search of this job records to (`<model>-<run id>`)."""
        return study_name(self.spec.model.name, self.run_id or "adhoc")


@dataclass(frozen=True)
class StageTiming:
    """When one stage of a run started and ended (wall clock, ns since the epoch).

    The run happens in a worker process without telemetry; the service turns
    these into spans of the run's trace afterwards.
    """

    name: str
    start_ns: int
    end_ns: int


@dataclass
class TrainingOutcome:
    trained: TrainedModel
    fingerprint: str
    files: int
    champion_version: int | None = None
    champion_metrics: dict[str, float] = field(default_factory=dict)
    champion_problem: str | None = None
    stages: list[StageTiming] = field(default_factory=list)
    search: SearchResult | None = None
    mlflow_run_id: str | None = None


class _StageClock:
    """A `Progress` callback that also times each stage until the next one starts."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._current: tuple[str, int] | None = None
        self.stages: list[StageTiming] = []

    def __call__(self, stage: str) -> None:
        self.finish()
        self._current = (stage, time.time_ns())
        if self._progress is not None:
            self._progress(stage)

    def finish(self) -> None:
        if self._current is not None:
            name, start_ns = self._current
            self.stages.append(StageTiming(name, start_ns, time.time_ns()))
            self._current = None


def run_job(job: TrainingJob, progress: Progress | None = None) -> TrainingOutcome:
    """Build the dataset, train, convert, check parity, evaluate candidate and champion."""
    say = _StageClock(progress)
    say("dataset")
    dataset = load_dataset(job.spec, OfflineStore(job.offline_url), start=job.start, end=job.end)
    found: SearchResult | None = None
    model = job.spec.model
    if model.search is not None:
        require_rows(job.spec, dataset)
        say("search")
        split = time_split(dataset.times_ms, model.holdout_fraction, model.evaluation_window_s)
        options = SearchOptions(
            study_name=job.search_study(),
            storage_url=job.search_storage_url,
            run_id=job.run_id,
            n_jobs=job.search_n_jobs,
            threads_per_trial=job.search_threads_per_trial,
            **({"worker": job.search_worker} if job.search_worker else {}),
        )
        found = search(job.spec, dataset, split.train, options, fit=job.fit)
    trained = train(
        job.spec,
        dataset,
        fit=job.fit,
        progress=say,
        code_version=job.code_version,
        params=None if found is None else found.best_params,
    )
    outcome = TrainingOutcome(trained, dataset.fingerprint, len(dataset.files), search=found)
    if found is not None and job.mlflow_tracking_uri:
        say("mlflow")
        outcome.mlflow_run_id = _log_to_mlflow(job, found, outcome)
    if job.champion is not None:
        say("champion")
        try:
            outcome.champion_metrics = evaluate_onnx(
                job.spec, job.champion.onnx, dataset, trained.split.evaluation
            )
            outcome.champion_version = job.champion.version
        except TrainingError as exc:  # the registry then compares registration metrics
            outcome.champion_problem = exc.reason
        except Exception as exc:
            outcome.champion_problem = f"champion could not be scored: {exc}"
    say.finish()
    outcome.stages = say.stages
    return outcome


@dataclass(frozen=True)
class JoinJob:
    """Trials for another replica's running search: rebuild its dataset, then `join_search`.

    `keep_path`: a file that exists while the join may go on; removing it makes
    the worker leave before its next trial (a plain file works across the
    worker process boundary, where a callback or an event would not pickle).
    """

    spec: ProjectSpec
    offline_url: str
    study: str
    storage_url: str
    dataset_fingerprint: str
    worker: str
    keep_path: str
    start: datetime | None = None
    end: datetime | None = None
    fit: Fit | None = None
    n_jobs: int = 1
    threads_per_trial: int = 1


@dataclass(frozen=True)
class JoinOutcome:
    evaluated: list[int]
    """Numbers of the trials this worker ran."""
    refused: str | None = None
    """Why this worker did not join (its dataset differs, it was asked to leave)."""


def run_join(job: JoinJob) -> JoinOutcome:
    """Load the dataset as the study's creator did; join only when its fingerprint matches."""
    from pathlib import Path

    keep = Path(job.keep_path)
    dataset = load_dataset(job.spec, OfflineStore(job.offline_url), start=job.start, end=job.end)
    if dataset.fingerprint != job.dataset_fingerprint:
        return JoinOutcome(
            [],
            f"this replica's dataset ({dataset.fingerprint[:12]}, {len(dataset)} rows) is not "
            f"the search's ({job.dataset_fingerprint[:12]}): another offline store, or data "
            "written since the search began",
        )
    if not keep.exists():
        return JoinOutcome([], "left before the first trial")
    model = job.spec.model
    split = time_split(dataset.times_ms, model.holdout_fraction, model.evaluation_window_s)
    options = SearchOptions(
        study_name=job.study,
        storage_url=job.storage_url,
        n_jobs=job.n_jobs,
        threads_per_trial=job.threads_per_trial,
        worker=job.worker,
    )
    evaluated = join_search(
        job.spec, dataset, split.train, options, fit=job.fit, cancelled=lambda: not keep.exists()
    )
    return JoinOutcome(evaluated)


def _log_to_mlflow(job: TrainingJob, found: SearchResult, outcome: TrainingOutcome) -> str | None:
    from mlbus.training._mlflow import log_search

    assert job.mlflow_tracking_uri is not None
    try:
        return log_search(
            job.mlflow_tracking_uri,
            job.spec,
            found,
            run_id=job.run_id,
            dataset_fingerprint=outcome.fingerprint,
            metrics=outcome.trained.all_metrics(),
        )
    except Exception:  # a copy for MLflow users; the search storage is the record
        log.exception("could not log search %s to MLflow", found.study)
        return None


async def fetch_champion(client: RegistryClient, model: str) -> Champion | None:
    """The model's champion, or None when it has none yet."""
    try:
        info = await client.resolve_alias(model, "champion")
    except NotFound:
        return None
    return Champion(info.version, await client.download_artifact(model, info.version))


async def register_outcome(
    client: RegistryClient,
    spec: ProjectSpec,
    outcome: TrainingOutcome,
    *,
    run_id: str,
    code_version: str,
    reason: str = "",
) -> Registration:
    """Register the candidate with its lineage; the registry's gates decide promotion."""
    trained = outcome.trained
    params: dict[str, Any] = {
        "estimator": spec.model.estimator,
        **trained.params,
        "rows": trained.rows,
        "train_rows": trained.train_rows,
        "spec_fingerprint": spec.fingerprint(),
    }
    if outcome.search is not None:  # the run's study and its winning trial (ADR 0023)
        params.update(outcome.search.summary())
    if outcome.mlflow_run_id:
        params["mlflow_run_id"] = outcome.mlflow_run_id
    return await client.register(
        spec.model.name,
        trained.onnx,
        metrics=trained.all_metrics(),
        params=params,
        dataset_fingerprint=outcome.fingerprint,
        feature_views={view: spec.features[view].version for view in spec.model_views()},
        run_id=run_id,
        code_version=code_version,
        reference_profile=trained.profile,
        description=f"{spec.model.estimator} on {trained.rows} rows"
        + (
            f", best of {len(outcome.search.trials)} trials (#{outcome.search.best_trial})"
            if outcome.search is not None
            else ""
        ),
        champion_version=outcome.champion_version,
        champion_metrics=outcome.champion_metrics or None,
        evaluation_window=trained.split.evaluation_window(),
        reason=reason,
        actor="mlbus-trainer",
    )
