"""The labeling loop up to a training run, on the real embedded broker and a real Redis.

Every service of the path runs in this process: ingestion (source topics →
`ingest.validated`), features (validated transactions → offline rows), the
trainer (validated labels → label log; `training.requested` → a registered
model), outcomes (logged predictions → the labeling queue) and a registry.
A prediction worth a label is queued by outcomes; a person answers it with
`mlbus.labeling.submit_label` and corrects a producer's label of another event;
the training run that follows uses both answers for their events.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from mlbus.bus import Publisher, encode_event, ensure_topics, event_headers
from mlbus.config import KafkaSettings, RedisSettings
from mlbus.events import (
    LABELING_REQUESTED,
    MODEL_PUBLISHED,
    MODEL_REGISTERED,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    PredictionLogged,
    TrainingCompleted,
    TrainingFailed,
    TrainingRequested,
)
from mlbus.features import FeatureService, FeaturesSettings
from mlbus.featurestore import OfflineStore
from mlbus.ingestion import IngestionService, IngestionSettings
from mlbus.labeling import LabelQueue, submit_label
from mlbus.outcomes import OutcomesService, OutcomesSettings
from mlbus.registry import RegistryServer, RegistrySettings
from mlbus.spec import ProjectSpec, load_spec
from mlbus.trainer import TrainerService, TrainerSettings
from mlbus.training import label_files, load_dataset, read_labels

# Five services and a spawned training worker on a shared two-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EVENTS = 80
CARDS = 8

T = TypeVar("T")


def write_spec(path: Path, unique: str) -> Path:
    """Transactions and their labels under source names no other test uses (the validated
    topic is shared by the whole session)."""
    tx, labels = f"tx_{unique}", f"labels_{unique}"
    doc = {
        "project": "roundtrip",
        "sources": {
            tx: {
                "topic": f"rt.{unique}.tx.v1",
                "entity": "card_id",
                "event_time": "ts",
                "event_id": "tx_id",
                "contract": {
                    "version": 1,
                    "fields": {
                        "tx_id": {"type": "string"},
                        "card_id": {"type": "string"},
                        "amount": {"type": "float"},
                        "ts": {"type": "timestamp"},
                    },
                },
            },
            labels: {
                "topic": f"rt.{unique}.labels.v1",
                "kind": "labels",
                "entity": "card_id",
                "event_time": "ts",
                "event_id": "label_id",
                "labels": {"source": tx, "event_id_field": "tx_id", "label_field": "is_fraud"},
                "contract": {
                    "version": 1,
                    "fields": {
                        "label_id": {"type": "string"},
                        "tx_id": {"type": "string"},
                        "card_id": {"type": "string"},
                        "is_fraud": {"type": "bool"},
                        "ts": {"type": "timestamp"},
                    },
                },
            },
        },
        "features": {
            "activity": {
                "entity": "card_id",
                "source": tx,
                "version": 1,
                "ttl_s": "1d",
                "fields": ["amount"],
                "aggregations": [{"function": "count", "windows": ["1h"]}],
            }
        },
        "model": {
            "name": f"rt_{unique}",
            "task": "classification",
            "label": {"source": labels, "field": "is_fraud"},
            "features": ["activity"],
            "estimator": "logistic_regression",
            "metric": "auc",
            "min_rows": 40,
            "holdout_fraction": 0.25,
            "gates": {"min_improvement": 0.0, "minimums": {}},
        },
        "outcomes": {
            "labeling": {"band": 0.1, "disagreement": None, "sample_rate": 0.0, "max_open": 10}
        },
    }
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def producer_label(amount: float) -> bool:
    """What the producer's labels say: large payments are fraud."""
    return amount > 100.0


async def wait_for(check: Callable[[], Awaitable[T | None]], timeout_s: float = 180.0) -> T:
    """Poll `check` until it gives something (generous: the test machine is shared)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.5)


@pytest.fixture
async def registry(kafka: KafkaSettings, tmp_path: Path) -> AsyncIterator[RegistryServer]:
    await ensure_topics(kafka, [MODEL_PUBLISHED, MODEL_REGISTERED])
    settings = RegistrySettings(data_dir=tmp_path / "registry", kafka=kafka, grpc_port=0, spec=None)
    async with RegistryServer(settings, host="127.0.0.1") as running:
        yield running


async def produce(kafka: KafkaSettings, records: list[tuple[str, str, dict[str, Any]]]) -> None:
    """(topic, key, JSON object) records, as a producer application writes them."""
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=5)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, json.dumps(doc).encode(), key=key.encode())
            for topic, key, doc in records
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def offline_rows(offline: OfflineStore, view: str) -> int:
    files = await asyncio.to_thread(offline.files, view, 1)
    if not files:
        return 0
    return int((await asyncio.to_thread(offline.read, files)).num_rows)


async def logged_labels(offline: OfflineStore, source: str) -> Any:
    return await asyncio.to_thread(read_labels, offline, label_files(offline, source))


async def test_a_submitted_label_is_used_by_the_next_training_run(
    kafka: KafkaSettings, redis_url: str, registry: RegistryServer, tmp_path: Path, unique: str
) -> None:
    path = write_spec(tmp_path / "mlbus.yaml", unique)
    spec: ProjectSpec = load_spec(path)
    tx_source, label_source = f"tx_{unique}", f"labels_{unique}"
    tx_topic, labels_topic = spec.sources[tx_source].topic, spec.sources[label_source].topic
    model = spec.model.name
    redis = RedisSettings(url=redis_url, key_prefix=f"rt-{unique}")
    offline_dir = tmp_path / "offline"
    offline = OfflineStore(str(offline_dir))
    registry_address = f"127.0.0.1:{registry.port}"
    await ensure_topics(
        kafka,
        [tx_topic, labels_topic, LABELING_REQUESTED, TRAINING_COMPLETED, TRAINING_FAILED],
    )

    ingestion = IngestionService(
        IngestionSettings(
            spec=path,
            data_dir=tmp_path / "ingestion",
            kafka=kafka,
            redis=redis,
            group_id=f"ingest-{unique}",
        ),
        spec,
    )
    features = FeatureService(
        FeaturesSettings(
            kafka=kafka,
            redis=redis,
            data_dir=tmp_path / "features",
            offline_url=str(offline_dir),
            offline_flush_interval_s=0.5,
            group_id=f"features-{unique}",
            grpc_port=0,
            grpc_host="127.0.0.1",
            consistency=False,
        ),
        spec,
    )
    trainer = TrainerService(
        TrainerSettings(
            data_dir=tmp_path / "trainer",
            kafka=kafka,
            spec=path,
            offline_url=str(offline_dir),
            registry_address=registry_address,
            group_id=f"trainer-{unique}",
            labels_group_id=f"trainer-labels-{unique}",
        ),
        spec,
    )
    outcomes = OutcomesService(
        OutcomesSettings(
            data_dir=tmp_path / "outcomes",
            kafka=kafka,
            redis=redis,
            spec=path,
            registry_address=registry_address,
            group_id=f"outcomes-{unique}",
            evaluate_interval_s=0.5,
            grpc_host="127.0.0.1",
            grpc_port=0,
        ),
        spec,
    )
    services = [ingestion, features, trainer, outcomes]
    tasks = [asyncio.create_task(s.run()) for s in services]
    try:
        await ingestion.wait_started(60)
        await features.wait_started(60)
        await trainer.wait_started()
        await outcomes.wait_started(60)

        # Payments over the last 80 minutes; the producer labels every one but the last.
        rng = np.random.default_rng(7)
        start = datetime.now(UTC) - timedelta(minutes=EVENTS + 5)
        payments = [
            {
                "tx_id": f"tx-{unique}-{i}",
                "card_id": f"card_{i % CARDS}",
                "amount": round(float(rng.uniform(1.0, 200.0)), 2),
                "ts": (start + timedelta(minutes=i)).isoformat(),
            }
            for i in range(EVENTS)
        ]
        unlabelled, corrected = payments[-1], payments[-2]
        await produce(kafka, [(tx_topic, str(p["card_id"]), p) for p in payments])
        await produce(
            kafka,
            [
                (
                    labels_topic,
                    str(p["card_id"]),
                    {
                        "label_id": f"label-{p['tx_id']}",
                        "tx_id": p["tx_id"],
                        "card_id": p["card_id"],
                        "is_fraud": producer_label(float(p["amount"])),
                        "ts": (start + timedelta(minutes=i, seconds=30)).isoformat(),
                    },
                )
                for i, p in enumerate(payments[:-1])
            ],
        )
        # The champion scored the unlabelled payment near the threshold: worth a person's time.
        scored = PredictionLogged(
            occurred_at=datetime.now(UTC),
            model=model,
            version=1,
            alias="champion",
            entity_id=str(unlabelled["card_id"]),
            features={"activity.amount": float(unlabelled["amount"])},
            outputs={"probabilities": [0.48, 0.52]},
            latency_ms=1.0,
            scored_event_id=str(unlabelled["tx_id"]),
        )
        producer = AIOKafkaProducer(**kafka.client_kwargs())
        await producer.start()
        try:
            headers = [(k, v) for k, v in event_headers(scored, "/test") if k != "traceparent"]
            await producer.send_and_wait(
                scored.topic, encode_event(scored), key=scored.entity_id.encode(), headers=headers
            )
        finally:
            await producer.stop()
        assert outcomes.processor is not None
        queue = LabelQueue(outcomes.processor.store.client, prefix=redis.key_prefix, model=model)

        async def requested() -> list[dict[str, Any]] | None:
            return await queue.top(10) or None

        (request,) = await wait_for(requested)
        assert request["scored_event_id"] == unlabelled["tx_id"]
        assert request["entity_id"] == unlabelled["card_id"]

        # The person's answers: the opposite of what the producer's rule would say.
        answer = not producer_label(float(unlabelled["amount"]))
        correction = not producer_label(float(corrected["amount"]))

        # The producer's label of the corrected payment must be in the log first: the
        # correction is the later label of that event, as in life.
        async def producer_labels_logged() -> bool:
            return (await logged_labels(offline, label_source)).num_rows == EVENTS - 1

        await wait_for(producer_labels_logged)
        topic, raw = await submit_label(
            kafka,
            redis,
            spec,
            scored_event_id=str(unlabelled["tx_id"]),
            value=str(answer).lower(),
            entity_id=None,  # from the queued request
            extra={},
        )
        assert topic == labels_topic
        assert json.loads(raw)["card_id"] == unlabelled["card_id"]
        await submit_label(
            kafka,
            None,
            spec,
            scored_event_id=str(corrected["tx_id"]),
            value=str(correction).lower(),
            entity_id=str(corrected["card_id"]),
            extra={},
        )

        async def answered() -> dict[str, Any] | None:
            counts = await queue.counts()
            return counts if counts["answered"] == 1 else None

        counts = await wait_for(answered)
        assert counts["open"] == 0

        async def all_logged() -> bool:
            return (await logged_labels(offline, label_source)).num_rows == EVENTS + 1

        async def all_rows() -> bool:
            return await offline_rows(offline, "activity") == EVENTS

        await wait_for(all_logged)
        await wait_for(all_rows)

        # A retraining, as drift, the schedule or `mlbus train` would ask for it.
        reader = AIOKafkaConsumer(
            TRAINING_COMPLETED,
            TRAINING_FAILED,
            **kafka.client_kwargs(),
            group_id=None,
            auto_offset_reset="earliest",
        )
        await reader.start()
        try:
            async with Publisher(kafka, source="test") as publisher:
                sent = TrainingRequested(model=model, reason="manual")
                await publisher.publish(sent, key=model)
            done: TrainingCompleted | TrainingFailed | None = None
            async with asyncio.timeout(180):
                while done is None:
                    for batch in (await reader.getmany(timeout_ms=500)).values():
                        for record in batch:
                            if record.key != model.encode():
                                continue
                            cls = (
                                TrainingCompleted
                                if record.topic == TRAINING_COMPLETED
                                else TrainingFailed
                            )
                            done = cls.model_validate_json(record.value or b"")
        finally:
            await reader.stop()
        assert isinstance(done, TrainingCompleted), done
        assert done.request_event_id == sent.event_id
    finally:
        for service in services:
            service.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

    # The run's training set, rebuilt by the same builder from the same files.
    dataset = load_dataset(spec, offline)
    assert done.dataset_fingerprint == dataset.fingerprint
    assert dataset.event_ids is not None
    rows = dict(zip(dataset.event_ids, dataset.y.tolist(), strict=True))
    # Each payment is one training row: a corrected event is not trained on twice.
    assert done.rows == len(dataset) == len(rows) == EVENTS
    assert rows[unlabelled["tx_id"]] == str(answer).lower()
    assert rows[corrected["tx_id"]] == str(correction).lower()
    others = {str(p["tx_id"]): str(producer_label(float(p["amount"]))).lower() for p in payments}
    del others[str(unlabelled["tx_id"])], others[str(corrected["tx_id"])]
    assert {k: rows[k] for k in others} == others
