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
from mlbus.training._pipeline import (
    Fit,
    Progress,
    TrainedModel,
    TrainingFailed,
    evaluate_onnx,
    load_dataset,
    train,
)

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
    trained = train(job.spec, dataset, fit=job.fit, progress=say, code_version=job.code_version)
    outcome = TrainingOutcome(trained, dataset.fingerprint, len(dataset.files))
    if job.champion is not None:
        say("champion")
        try:
            outcome.champion_metrics = evaluate_onnx(
                job.spec, job.champion.onnx, dataset, trained.split.evaluation
            )
            outcome.champion_version = job.champion.version
        except TrainingFailed as exc:  # the registry then compares registration metrics
            outcome.champion_problem = exc.reason
        except Exception as exc:
            outcome.champion_problem = f"champion could not be scored: {exc}"
    say.finish()
    outcome.stages = say.stages
    return outcome


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
        description=f"{spec.model.estimator} on {trained.rows} rows",
        champion_version=outcome.champion_version,
        champion_metrics=outcome.champion_metrics or None,
        evaluation_window=trained.split.evaluation_window(),
        reason=reason,
        actor="mlbus-trainer",
    )
