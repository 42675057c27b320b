"""The trainer service with `model.search`, on the real broker and registry: a newer
`training.requested` cancels the search in flight within one trial, the follow-up run
searches, refits and registers a version that names its study and winning trial; an idle
second trainer replica joins the search through the shared PostgreSQL storage."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlbus.bus import Publisher
from mlbus.config import KafkaSettings
from mlbus.events import TrainingCompleted, TrainingFailed
from mlbus.featurestore import OfflineStore
from mlbus.registry import RegistryServer
from mlbus.registry_client import RegistryClient
from mlbus.spec import ProjectSpec, load_spec
from mlbus.trainer import TrainerService
from mlbus.training import (
    JoinJob,
    LabelRow,
    SearchOptions,
    create_study,
    get_run,
    list_runs,
    load_dataset,
    run_join,
    storage_at,
)
from tests.integration.test_registry_store import postgres_admin  # noqa: F401 (fixture)
from tests.integration.test_search_runs import pg_search_url  # noqa: F401 (fixture)
from tests.integration.test_trainer import (  # noqa: F401 (registry is a fixture)
    Outcomes,
    eventually,
    registry,
    request,
    trainer_settings,
    write_labelled_rows,
    write_spec,
)

pytestmark = pytest.mark.integration

SEARCH = {
    "trials": 8,
    "seed": 1,
    "space": {"learning_rate": {"type": "float", "low": 0.02, "high": 0.5, "log": True}},
}


@pytest.fixture
def stack(tmp_path: Path, unique: str) -> tuple[Path, ProjectSpec, OfflineStore]:
    spec_path = write_spec(tmp_path, unique, search=SEARCH)
    return spec_path, load_spec(spec_path), OfflineStore(tmp_path / "offline")


def write_rows(spec: ProjectSpec, offline: OfflineStore, n: int = 400) -> None:
    base = datetime(2025, 6, 1, tzinfo=UTC)
    rng = np.random.default_rng(0)
    rows = [
        LabelRow(
            f"card_{i % 40:06d}",
            f"tx{i}",
            int((base + timedelta(minutes=i)).timestamp() * 1000),
            f"cb{i}",
            bool(rng.random() < 0.3),
        )
        for i in range(n)
    ]
    write_labelled_rows(spec, offline, rows, rng)


class SlowFit:
    """Fits after a pause while `slow` is set (the first run), at once otherwise."""

    def __init__(self) -> None:
        self.slow = threading.Event()
        self.slow.set()
        self.calls = 0

    def __call__(self, model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        self.calls += 1
        if self.slow.is_set():
            time.sleep(0.5)
        return model.fit(x, y)


@pytest.mark.timeout(180)
async def test_a_newer_request_cancels_the_search_within_one_trial_then_searches_again(
    kafka: KafkaSettings,
    registry: RegistryServer,  # noqa: F811 (the imported fixture)
    stack: Any,
    tmp_path: Path,
    unique: str,
) -> None:
    _, spec, offline = stack
    write_rows(spec, offline)
    settings = trainer_settings(kafka, tmp_path, registry, unique).model_copy(
        update={"record_labels": False}
    )
    url = settings.resolved_search_storage()
    fit = SlowFit()
    service = TrainerService(settings, spec, executor=ThreadPoolExecutor(1), fit=fit)
    task = asyncio.create_task(service.run())
    try:
        await service.wait_started()
        async with (
            Publisher(kafka, source="test") as publisher,
            Outcomes(kafka, spec.model.name) as outcomes,
        ):
            await request(publisher, spec.model.name)
            await eventually(lambda: fit.calls >= 2)  # the search is on its second trial
            state = service._states[spec.model.name]
            first_study = state.study
            assert first_study is not None
            newer = await request(publisher, spec.model.name)

            def cancelled_at() -> int | None:
                with storage_at(url) as storage:
                    run = get_run(storage, first_study)
                return len(run.trials) if run.attrs.get("cancelled") else None

            seen: list[int | None] = []
            await eventually(lambda: seen.append(cancelled_at()) or seen[-1] is not None)
            trials_when_cancelled = seen[-1]
            assert trials_when_cancelled is not None
            events = await outcomes.wait_for(1, timeout_s=60)
            fit.slow.clear()
            failed = events[0]
            assert isinstance(failed, TrainingFailed), events
            assert f"cancelled: superseded by request {newer.event_id}" in failed.reason
            events = await outcomes.wait_for(2, timeout_s=120)
            await service.wait_idle(60)
        completed = events[1]
        assert isinstance(completed, TrainingCompleted), events
        assert service.runs_started == 2
        with storage_at(url) as storage:
            first = get_run(storage, first_study)
            runs = list_runs(storage, model=spec.model.name)
        # Within one trial: at most the trial that started as the cancel landed also ran.
        assert first.status == "cancelled"
        assert len(first.trials) <= trials_when_cancelled + 1
        assert len(first.trials) < SEARCH["trials"]
        (second,) = [r for r in runs if r.study != first_study]
        assert second.status == "completed"
        assert len(second.trials) == SEARCH["trials"]
        assert second.version == completed.version  # the run names its version …
        async with RegistryClient(f"127.0.0.1:{registry.port}") as client:
            version = await client.get_version(spec.model.name, completed.version)
        # … and the version its run and winning trial.
        assert version.run_id == second.run_id
        assert version.params["search_study"] == second.study
        assert version.params["search_best_trial"] == second.best_trial
        assert version.params["learning_rate"] == pytest.approx(
            next(t for t in second.trials if t.number == second.best_trial).params["learning_rate"]
        )
    finally:
        fit.slow.clear()
        service.stop()
        await asyncio.wait_for(task, 30)


class CountingFit:
    """A slow fit (so two replicas overlap) that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        self.calls += 1
        time.sleep(0.4)
        return model.fit(x, y)


@pytest.mark.timeout(240)
async def test_an_idle_replica_joins_the_search_of_another_through_postgresql(
    kafka: KafkaSettings,
    registry: RegistryServer,  # noqa: F811 (the imported fixture)
    stack: Any,
    tmp_path: Path,
    unique: str,
    pg_search_url: str,  # noqa: F811 (the imported fixture)
) -> None:
    _, spec, offline = stack
    write_rows(spec, offline)
    budget = int(SEARCH["trials"])  # type: ignore[call-overload]
    settings = trainer_settings(kafka, tmp_path, registry, unique).model_copy(
        update={
            "record_labels": False,
            "search_storage": pg_search_url,
            "search_join_poll_s": 0.2,
        }
    )
    fits = {name: CountingFit() for name in ("replica-a", "replica-b")}
    services = {
        name: TrainerService(settings, spec, executor=ThreadPoolExecutor(1), fit=fit, replica=name)
        for name, fit in fits.items()
    }
    tasks = [asyncio.create_task(s.run()) for s in services.values()]
    try:
        for service in services.values():
            await service.wait_started()
        async with (
            Publisher(kafka, source="test") as publisher,
            Outcomes(kafka, spec.model.name) as outcomes,
        ):
            await request(publisher, spec.model.name)  # one request: one replica trains
            events = await outcomes.wait_for(1, timeout_s=180)
        completed = events[0]
        assert isinstance(completed, TrainingCompleted), events
        with storage_at(pg_search_url) as storage:
            (run,) = list_runs(storage, model=spec.model.name)
        creator = run.attrs["creator"]
        (joiner,) = [name for name in services if name != creator]
        assert services[creator].runs_started == 1
        assert services[joiner].runs_started == 0  # it never got a request …
        assert services[joiner].searches_joined == 1  # … and still ran trials
        assert run.status == "completed"
        assert run.version == completed.version
        ran = [t for t in run.trials if t.number < budget]
        assert len(ran) == budget  # the budget holds across both replicas
        assert all(t.state == "complete" for t in ran), ran
        by_worker = {name: [t.number for t in ran if t.worker == name] for name in services}
        assert by_worker[creator], by_worker
        assert by_worker[joiner], by_worker  # `mlbus runs show` names who ran what
        # Each trial ran once: the joiner fitted exactly its trials (it does no refit).
        assert fits[joiner].calls == len(by_worker[joiner])
        extra = [t for t in run.trials if t.number >= budget]  # asked in a race, never run
        assert all((t.error or "").startswith("not run: the budget") for t in extra)
        async with RegistryClient(f"127.0.0.1:{registry.port}") as client:
            version = await client.get_version(spec.model.name, completed.version)
        assert version.params["search_study"] == run.study
        assert version.params["search_best_trial"] == run.best_trial
    finally:
        for service in services.values():
            service.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


def test_a_joiner_leaves_before_its_next_trial_and_refuses_another_dataset(
    stack: Any, tmp_path: Path
) -> None:
    _, spec, offline = stack
    write_rows(spec, offline)
    url = f"sqlite:///{tmp_path / 'search.sqlite'}"
    data = load_dataset(spec, offline)
    create_study(spec, SearchOptions("s-leave", storage_url=url), {"dataset_fingerprint": "x"})
    keep = tmp_path / "keep"
    keep.touch()
    fits: list[int] = []

    def fit(model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        fits.append(len(x))
        keep.unlink(missing_ok=True)  # a request for this replica arrives during the trial
        return model.fit(x, y)

    def job(fingerprint: str) -> JoinJob:
        return JoinJob(
            spec, str(tmp_path / "offline"), "s-leave", url, fingerprint, "b", str(keep), fit=fit
        )

    refused = run_join(job("another-fingerprint"))
    assert refused.evaluated == []
    assert "is not the search's" in (refused.refused or "")
    assert fits == []  # nothing ran on data that is not the search's
    left = run_join(job(data.fingerprint))
    assert left.refused is None
    assert left.evaluated == [0]  # the trial in flight finished; no other started
    assert len(fits) == 1
    with storage_at(url) as storage:
        run = get_run(storage, "s-leave")
    assert [(t.number, t.worker) for t in run.trials] == [(0, "b")]
