"""The trainer on the real embedded broker with an in-process registry.

Data path (short by design): generated fraud transactions become offline
feature rows through the feature-store library (`OfflineStore.write_rows`);
generated chargebacks travel as `ingest.validated` events through Kafka and
the trainer records them in its label log. Then `training.requested` → a
registered version whose lineage names the fingerprint and whose ONNX model
reproduces scikit-learn on the holdout.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer

from mlbus.bus import Publisher, ensure_topics
from mlbus.config import KafkaSettings
from mlbus.events import (
    MODEL_PUBLISHED,
    MODEL_REGISTERED,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    TRAINING_REQUESTED,
    IngestValidated,
    TrainingCompleted,
    TrainingFailed,
    TrainingRequested,
)
from mlbus.example import fraud_spec_path, generate
from mlbus.featurestore import OfflineRow, OfflineStore
from mlbus.registry import RegistryServer, RegistrySettings
from mlbus.registry_client import RegistryClient
from mlbus.spec import ProjectSpec, load_spec
from mlbus.trainer import TrainerService, TrainerSettings
from mlbus.training import LabelRow, label_files, load_dataset, onnx_scores, write_labels

pytestmark = pytest.mark.integration

START = datetime(2025, 3, 1, tzinfo=UTC)


def write_spec(tmp_path: Path, unique: str, **model: Any) -> Path:
    doc = load_spec(fraud_spec_path()).model_dump(mode="json")
    doc["model"] = {
        **doc["model"],
        "name": f"fraud_{unique}",
        "min_rows": 200,
        "params": {"max_iter": 40},
        "gates": {"min_improvement": 0.0, "minimums": {}},
        **model,
    }
    doc["serving"]["model"] = doc["model"]["name"]
    path = tmp_path / "mlbus.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def write_offline_rows(
    spec: ProjectSpec, offline: OfflineStore, events: int
) -> list[dict[str, Any]]:
    """Generated transactions as offline rows (raw fields real, aggregates simple); returns the
    chargeback events for those transactions."""
    data = generate(spec, events, seed=11, start=START)
    view = "card_activity"
    features = spec.view_features(view)
    rows = []
    for event in data.sources["transactions"].events():
        ms = int(datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp() * 1000)
        values: dict[str, Any] = {}
        for feature in features:
            if feature.function in (None, "last"):
                values[feature.name] = event.get(feature.name)
            elif feature.function in ("count", "distinct_count"):
                values[feature.name] = 1
            else:
                values[feature.name] = float(event["amount"])  # type: ignore[arg-type]
        rows.append(
            OfflineRow(str(event["card_id"]), str(event["transaction_id"]), ms, ms, ms, values)
        )
    offline.write_rows(view, spec.features[view].version, features, rows)
    return list(data.sources["chargebacks"].events())


def write_labelled_rows(
    spec: ProjectSpec, offline: OfflineStore, rows: list[LabelRow], rng: np.random.Generator
) -> None:
    """`rows` as labels, each with an offline feature row at its time: random numbers,
    the first allowed value of a categorical."""
    write_labels(offline, "chargebacks", rows)
    features = spec.view_features("card_activity")
    offline.write_rows(
        "card_activity",
        1,
        features,
        [
            OfflineRow(
                r.entity_id,
                r.event_id,
                r.label_time_ms,
                r.label_time_ms,
                r.label_time_ms,
                {
                    f.name: (
                        float(rng.random()) if f.kind == "numeric" else (f.values or ("x",))[0]
                    )
                    for f in features
                },
            )
            for r in rows
        ],
    )


@pytest.fixture
def stack(tmp_path: Path, unique: str) -> tuple[Path, ProjectSpec, OfflineStore]:
    spec_path = write_spec(tmp_path, unique)
    return spec_path, load_spec(spec_path), OfflineStore(tmp_path / "offline")


@pytest.fixture
async def registry(
    kafka: KafkaSettings, tmp_path: Path, stack: tuple[Path, ProjectSpec, OfflineStore]
) -> AsyncIterator[RegistryServer]:
    await ensure_topics(kafka, [MODEL_PUBLISHED, MODEL_REGISTERED])
    settings = RegistrySettings(
        data_dir=tmp_path / "registry", kafka=kafka, grpc_port=0, spec=tmp_path / "mlbus.yaml"
    )
    async with RegistryServer(settings, host="127.0.0.1") as running:
        yield running


def trainer_settings(
    kafka: KafkaSettings, tmp_path: Path, registry: RegistryServer, unique: str
) -> TrainerSettings:
    return TrainerSettings(
        data_dir=tmp_path,
        kafka=kafka,
        spec=tmp_path / "mlbus.yaml",
        registry_address=f"127.0.0.1:{registry.port}",
        group_id=f"trainer-{unique}",
        labels_group_id=f"trainer-labels-{unique}",
    )


class Outcomes:
    """training.completed / training.failed events of one model, as they arrive."""

    def __init__(self, kafka: KafkaSettings, model: str) -> None:
        self.model = model
        self.reader = AIOKafkaConsumer(
            TRAINING_COMPLETED,
            TRAINING_FAILED,
            **kafka.client_kwargs(),
            group_id=None,
            auto_offset_reset="earliest",
        )
        self.events: list[TrainingCompleted | TrainingFailed] = []

    async def __aenter__(self) -> Outcomes:
        await self.reader.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.reader.stop()

    async def wait_for(
        self, count: int, timeout_s: float = 60.0
    ) -> list[TrainingCompleted | TrainingFailed]:
        async with asyncio.timeout(timeout_s):
            while len(self.events) < count:
                await self.poll()
        return self.events

    async def poll(self, timeout_ms: int = 300) -> None:
        batches = await self.reader.getmany(timeout_ms=timeout_ms)
        for batch in batches.values():
            for record in batch:
                if record.key != self.model.encode():
                    continue
                cls = TrainingCompleted if record.topic == TRAINING_COMPLETED else TrainingFailed
                self.events.append(cls.model_validate_json(record.value))


async def request(publisher: Publisher, model: str, **kw: Any) -> TrainingRequested:
    event = TrainingRequested(model=model, reason="manual", **kw)
    await publisher.publish(event, key=model)
    return event


async def test_validated_labels_to_a_registered_model_with_lineage_and_parity(
    kafka: KafkaSettings, registry: RegistryServer, stack: Any, tmp_path: Path, unique: str
) -> None:
    _, spec, offline = stack
    chargebacks = write_offline_rows(spec, offline, 3000)
    service = TrainerService(trainer_settings(kafka, tmp_path, registry, unique), spec)
    task = asyncio.create_task(service.run())
    try:
        await service.wait_started()
        async with Publisher(kafka, source="test") as publisher:
            for cb in chargebacks:
                ts = datetime.fromisoformat(str(cb["ts"]).replace("Z", "+00:00"))
                validated = IngestValidated(
                    source="chargebacks",
                    contract_version=1,
                    entity_id=str(cb["card_id"]),
                    event_time=ts,
                    payload=cb,
                    source_topic="payments.chargebacks.v1",
                    source_partition=0,
                    source_offset=0,
                )
                await publisher.send(validated, key=str(cb["card_id"]))
            await publisher.producer.flush()
            await eventually(  # the trainer recorded every label
                lambda: (
                    sum(pq_rows(offline, f) for f in label_files(offline, "chargebacks"))
                    >= len(chargebacks)
                )
            )
            async with Outcomes(kafka, spec.model.name) as outcomes:
                sent = await request(publisher, spec.model.name)
                (done,) = await outcomes.wait_for(1, timeout_s=90)
        assert isinstance(done, TrainingCompleted), done
        assert done.request_event_id == sent.event_id
        assert done.promoted  # first version, gates without minimums
        expected = load_dataset(spec, offline)
        assert done.dataset_fingerprint == expected.fingerprint
        assert done.rows == len(expected)
        assert done.metrics["onnx_parity_max_error"] <= 1e-5
        async with RegistryClient(f"127.0.0.1:{registry.port}") as client:
            version = await client.get_version(spec.model.name, done.version)
            onnx = await client.download_artifact(spec.model.name, done.version)
        assert version.dataset_fingerprint == expected.fingerprint
        assert version.run_id == done.run_id
        assert version.feature_views == {"card_activity": 1}
        assert version.reference_profile is not None
        assert version.evaluation_window
        # The registered ONNX reproduces scikit-learn refitted the same way on the same rows.
        from mlbus.training import make_estimator, time_split

        split = time_split(
            expected.times_ms, spec.model.holdout_fraction, spec.model.evaluation_window_s
        )
        y = np.asarray([1 if v == "true" else 0 for v in expected.y.tolist()])
        model = make_estimator(spec.model.estimator, "classification", spec.model.params)
        model.fit(expected.x[split.train], y[split.train])
        sk = model.predict_proba(expected.x[split.holdout])[:, 1]
        assert (
            np.max(np.abs(onnx_scores(onnx, expected.x[split.holdout], "classification") - sk))
            <= 1e-5
        )
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)


async def eventually(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.1)


def pq_rows(offline: OfflineStore, path: str) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path, filesystem=offline.fs).metadata.num_rows)


async def test_failures_are_published_with_reasons_and_the_service_keeps_running(
    kafka: KafkaSettings, registry: RegistryServer, stack: Any, tmp_path: Path, unique: str
) -> None:
    _, spec, offline = stack
    base = datetime(2025, 6, 1, tzinfo=UTC)
    rows = [
        LabelRow(
            f"card_{i:06d}",
            f"tx{i}",
            int((base + timedelta(minutes=i)).timestamp() * 1000),
            f"cb{i}",
            i >= 300 and i % 3 == 0,
        )
        for i in range(400)
    ]
    write_labels(offline, "chargebacks", rows)
    from mlbus.featurestore import OfflineRow as Row

    features = spec.view_features("card_activity")
    offline.write_rows(
        "card_activity",
        1,
        features,
        [
            Row(
                r.entity_id,
                r.event_id,
                r.label_time_ms,
                r.label_time_ms,
                r.label_time_ms,
                {
                    f.name: (1.0 if f.kind == "numeric" else (f.values or ("x",))[0])
                    for f in features
                },
            )
            for r in rows
        ],
    )
    broken = spec.model_copy(
        update={"model": spec.model.model_copy(update={"estimator": "xgboost"})}
    )
    settings = trainer_settings(kafka, tmp_path, registry, unique)
    settings = settings.model_copy(update={"record_labels": False})
    service = TrainerService(settings, broken, executor=ThreadPoolExecutor(1))
    task = asyncio.create_task(service.run())
    try:
        await service.wait_started()
        async with (
            Publisher(kafka, source="test") as publisher,
            Outcomes(kafka, spec.model.name) as outcomes,
        ):
            await request(
                publisher,
                spec.model.name,
                window_start=base,
                window_end=base + timedelta(minutes=20),
            )
            await outcomes.wait_for(1)
            await request(
                publisher,
                spec.model.name,
                window_start=base,
                window_end=base + timedelta(minutes=250),
            )
            await outcomes.wait_for(2)
            await request(publisher, spec.model.name)
            events = await outcomes.wait_for(3)
        assert all(isinstance(e, TrainingFailed) for e in events), events
        few, one_class, unknown = events
        assert isinstance(few, TrainingFailed)
        assert isinstance(one_class, TrainingFailed)
        assert isinstance(unknown, TrainingFailed)
        assert few.stage == "dataset"
        assert "too few rows: 20" in few.reason
        assert "min_rows=200" in few.reason
        assert one_class.stage == "dataset"
        assert "single class (is_fraud=false)" in one_class.reason
        assert unknown.stage == "train"
        assert "unknown estimator 'xgboost'" in unknown.reason
        assert not task.done()  # the service kept running through every failure
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)


class HeldFit:
    """A fit that waits for the test to let it finish: the run stays in progress, for
    certain, until every request the test sends meanwhile has been received."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        if not self.release.wait(60):
            raise TimeoutError("the test never released the fit")
        return model.fit(x, y)


async def test_ten_requests_during_a_run_lead_to_one_more_run(
    kafka: KafkaSettings, registry: RegistryServer, stack: Any, tmp_path: Path, unique: str
) -> None:
    _, spec, offline = stack
    base = datetime(2025, 6, 1, tzinfo=UTC)
    rows = [
        LabelRow(
            f"card_{i % 40:06d}",
            f"tx{i}",
            int((base + timedelta(minutes=i)).timestamp() * 1000),
            f"cb{i}",
            i % 4 == 0,
        )
        for i in range(300)
    ]
    write_labelled_rows(spec, offline, rows, np.random.default_rng(0))
    settings = trainer_settings(kafka, tmp_path, registry, unique).model_copy(
        update={"record_labels": False}
    )
    fit = HeldFit()
    service = TrainerService(settings, spec, executor=ThreadPoolExecutor(1), fit=fit)
    task = asyncio.create_task(service.run())
    try:
        await service.wait_started()
        async with (
            Publisher(kafka, source="test") as publisher,
            Outcomes(kafka, spec.model.name) as outcomes,
        ):
            await request(publisher, spec.model.name)
            await eventually(lambda: service.runs_started >= 1)
            for _ in range(10):
                await request(publisher, spec.model.name)
            # All ten received while the first run is held: one waits as the follow-up,
            # nine were coalesced into it.
            state = service._states[spec.model.name]
            await eventually(lambda: state.pending is not None and state.coalesced == 9)
            fit.release.set()
            # Idle means no run in progress and none pending: every request is accounted
            # for, so no third run can come (no quiet window needed to see that).
            await service.wait_idle(60)
            events = await outcomes.wait_for(2, timeout_s=60)
        assert service.runs_started == 2
        assert len(events) == 2
        assert all(isinstance(e, TrainingCompleted) for e in events), events
    finally:
        fit.release.set()
        service.stop()
        await asyncio.wait_for(task, 30)


async def test_the_schedule_requests_training_itself_and_the_request_is_served(
    kafka: KafkaSettings, registry: RegistryServer, stack: Any, tmp_path: Path, unique: str
) -> None:
    _, spec, _ = stack  # no data: each scheduled run fails at the dataset stage, and says so
    settings = trainer_settings(kafka, tmp_path, registry, unique).model_copy(
        update={"record_labels": False}
    )
    service = TrainerService(settings, spec, executor=ThreadPoolExecutor(1), schedule_every_s=0.5)
    reader = AIOKafkaConsumer(
        TRAINING_REQUESTED, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
    )
    task = asyncio.create_task(service.run())
    await reader.start()
    try:
        await service.wait_started()
        async with Outcomes(kafka, spec.model.name) as outcomes:
            (outcome, *_) = await outcomes.wait_for(1, timeout_s=60)
        scheduled: dict[str, TrainingRequested] = {}
        async with asyncio.timeout(30):
            while outcome.request_event_id not in scheduled:
                for batch in (await reader.getmany(timeout_ms=300)).values():
                    for record in batch:
                        if record.key == spec.model.name.encode():
                            event = TrainingRequested.model_validate_json(record.value)
                            scheduled[event.event_id] = event
    finally:
        await reader.stop()
        service.stop()
        await asyncio.wait_for(task, 30)
    request = scheduled[outcome.request_event_id]
    assert request.reason == "schedule"
    assert request.requested_by == "mlbus-trainer"
    assert isinstance(outcome, TrainingFailed)
    assert outcome.stage == "dataset"
    assert "no labels" in outcome.reason
