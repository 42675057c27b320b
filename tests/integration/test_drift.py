"""The drift service on the real embedded broker and a real Redis, with an in-process registry.

A model version is registered with a known reference profile and the trainer's
encoding metadata; predictions are written straight to `prediction.logged`
(categories as the model's integer codes, like inference logs them), one
partition at a time so each partition's windows are known exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio
import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from onnx import helper, load_model_from_string
from typer.testing import CliRunner

from mlbus.bus import encode_event, ensure_topics, event_headers
from mlbus.cli import _drift
from mlbus.config import KafkaSettings, RedisSettings
from mlbus.drift import DriftService, DriftSettings
from mlbus.drift._labels import Pending, PendingPredictions
from mlbus.drift._store import ArmedTrigger, DriftStore, PartitionSnapshot
from mlbus.driftstats import DriftMonitor, performance_reference
from mlbus.driftstatus import read_drift_state
from mlbus.events import (
    DRIFT_DETECTED,
    INGEST_VALIDATED,
    MODEL_PUBLISHED,
    MODEL_REGISTERED,
    PREDICTION_LOGGED,
    TRAINING_REQUESTED,
    DriftDetected,
    Event,
    IngestValidated,
    PredictionLogged,
    TrainingRequested,
)
from mlbus.profiles import ReferenceProfile
from mlbus.registry import RegistryServer, RegistrySettings
from mlbus.registry_client import RegistryClient
from mlbus.spec import ProjectSpec, load_spec
from tests.unit.test_registry_onnx import tiny_model

pytestmark = pytest.mark.integration

WINDOW = 300
PARTITIONS = 3
CHANNELS = ["pos", "contactless", "online"]
START = datetime(2026, 1, 5, 12, tzinfo=UTC)
LABELS_TO_FIRE = 60
"""MLBUS_DRIFT_RETRAIN_MIN_LABELS: the armed retraining fires once this many labels of
predictions made since the detection window's start were joined."""


def write_spec(path: Path, model: str) -> Path:
    doc = {
        "project": "drifttest",
        "sources": {
            "tx": {
                "topic": "drifttest.tx.v1",
                "entity": "card_id",
                "event_time": "ts",
                "event_id": "tx_id",
                "contract": {
                    "version": 1,
                    "fields": {
                        "tx_id": {"type": "string"},
                        "card_id": {"type": "string"},
                        "amount": {"type": "float"},
                        "channel": {"type": "enum", "values": CHANNELS},
                        "ts": {"type": "timestamp"},
                    },
                },
            },
            "labels": {
                "topic": "drifttest.labels.v1",
                "kind": "labels",
                "entity": "card_id",
                "event_time": "ts",
                "event_id": "label_id",
                "labels": {"source": "tx", "event_id_field": "tx_id", "label_field": "is_fraud"},
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
            "v": {
                "entity": "card_id",
                "source": "tx",
                "version": 1,
                "ttl_s": "1d",
                "fields": ["amount", "channel"],
            }
        },
        "model": {
            "name": model,
            "task": "classification",
            "label": {"source": "labels", "field": "is_fraud"},
            "features": ["v"],
            "metric": "auc",
        },
        "drift": {
            "window_size": WINDOW,
            "min_samples": 100,
            "persistence": 2,
            "alpha": 0.01,
            "cooldown_s": "1h",
            "max_retrains_per_hour": 2,
            "trigger": "retrain",
        },
    }
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def sample(
    rng: np.random.Generator, n: int, *, drifted: bool
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """amount, channel, score: the reference world, or one where all three moved."""
    if drifted:
        return (
            rng.normal(160.0, 20.0, n),
            list(rng.choice(CHANNELS, n, p=[0.2, 0.3, 0.5])),
            rng.beta(5.0, 2.0, n),
        )
    return (
        rng.normal(100.0, 20.0, n),
        list(rng.choice(CHANNELS, n, p=[0.5, 0.3, 0.2])),
        rng.beta(2.0, 5.0, n),
    )


def model_artifact() -> bytes:
    """A 2-input ONNX model carrying the trainer's metadata (encoding and classes)."""
    model = load_model_from_string(tiny_model(features=2))
    encoding = {"refs": ["v.amount", "v.channel"], "categories": {"v.channel": CHANNELS}}
    helper.set_model_props(
        model,
        {
            "mlbus.encoding": json.dumps(encoding),
            "mlbus.classes": "false,true",
            "mlbus.feature_names.x": "v.amount,v.channel",
        },
    )
    return bytes(model.SerializeToString())


@dataclass
class Stack:
    spec: ProjectSpec
    settings: DriftSettings
    model: str
    version: int
    profile: ReferenceProfile


@pytest.fixture
async def registry(kafka: KafkaSettings, tmp_path: Path) -> AsyncIterator[RegistryServer]:
    await ensure_topics(kafka, [MODEL_PUBLISHED, MODEL_REGISTERED])
    settings = RegistrySettings(data_dir=tmp_path / "registry", kafka=kafka, grpc_port=0, spec=None)
    async with RegistryServer(settings, host="127.0.0.1") as running:
        yield running


@pytest.fixture
async def stack(
    kafka: KafkaSettings, redis_url: str, registry: RegistryServer, tmp_path: Path, unique: str
) -> Stack:
    model = f"drift_{unique}"
    spec = load_spec(write_spec(tmp_path / "mlbus.yaml", model))
    rng = np.random.default_rng(7)
    amount, channel, score = sample(rng, 5000, drifted=False)
    profile = ReferenceProfile.from_samples(
        {"v.amount": amount, "v.channel": channel}, predictions=score
    )
    async with RegistryClient(f"127.0.0.1:{registry.port}") as client:
        registered = await client.register(model, model_artifact(), reference_profile=profile)
    await ensure_topics(
        kafka, [PREDICTION_LOGGED, INGEST_VALIDATED, DRIFT_DETECTED, TRAINING_REQUESTED]
    )
    settings = DriftSettings(
        data_dir=tmp_path,
        kafka=kafka,
        redis=RedisSettings(url=redis_url, key_prefix=f"test-{unique}"),
        spec=tmp_path / "mlbus.yaml",
        registry_address=f"127.0.0.1:{registry.port}",
        group_id=f"drift-{unique}",
        retrain_min_labels=LABELS_TO_FIRE,
    )
    return Stack(spec, settings, model, registered.version.version, profile)


class Feed:
    """Writes predictions (and labels) to chosen partitions; remembers the last offsets."""

    def __init__(self, kafka: KafkaSettings, stack: Stack, seed: int = 11) -> None:
        self.producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=5)
        self.stack = stack
        self.rng = np.random.default_rng(seed)
        self.last: dict[tuple[str, int], int] = {}
        self.clock = START
        self.scored: list[tuple[str, float, int]] = []
        self.sent: dict[int, list[tuple[dict[str, Any], float, datetime, int]]] = {}
        """Per partition, what the service should count: decoded features, score, at, offset."""

    async def __aenter__(self) -> Feed:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def _send(self, event: Event, partition: int) -> None:
        future = await self.producer.send(
            event.topic,
            encode_event(event),
            key=b"k",
            headers=list(event_headers(event, "/test")),
            partition=partition,
        )
        metadata = await future
        key = (event.topic, partition)
        self.last[key] = max(self.last.get(key, -1), metadata.offset)

    async def predictions(self, per_partition: int, *, drifted: bool) -> None:
        for partition in range(PARTITIONS):
            amount, channel, score = sample(self.rng, per_partition, drifted=drifted)
            futures = []
            times = []
            for i in range(per_partition):
                self.clock += timedelta(milliseconds=50)
                times.append(self.clock)
                tx_id = f"tx-{partition}-{self.clock.timestamp()}"
                event = PredictionLogged(
                    occurred_at=self.clock,
                    model=self.stack.model,
                    version=self.stack.version,
                    alias="champion",
                    entity_id=f"card_{i % 50}",
                    features={
                        "v.amount": float(amount[i]),
                        "v.channel": float(CHANNELS.index(channel[i])),  # the model's code
                    },
                    outputs={
                        "label": [float(score[i] >= 0.5)],
                        "probabilities": [1.0 - float(score[i]), float(score[i])],
                    },
                    latency_ms=1.0,
                    scored_event_id=tx_id,
                )
                self.scored.append((tx_id, float(score[i]), partition))
                futures.append(
                    await self.producer.send(
                        PREDICTION_LOGGED,
                        encode_event(event),
                        key=b"k",
                        headers=list(event_headers(event, "/test")),
                        partition=partition,
                    )
                )
            results = await asyncio.gather(*futures)
            self.sent.setdefault(partition, []).extend(
                (
                    {"v.amount": float(amount[i]), "v.channel": str(channel[i])},
                    float(score[i]),
                    at,
                    r.offset,
                )
                for i, (at, r) in enumerate(zip(times, results, strict=True))
            )
            key = (PREDICTION_LOGGED, partition)
            self.last[key] = max(self.last.get(key, -1), *(r.offset for r in results))

    async def labels(self, scored: list[tuple[str, float, int]], *, wrong: bool) -> None:
        """One label per scored event: agreeing with the score's decision, or not."""
        await self.outcomes(scored, [(score >= 0.5) != wrong for _, score, _ in scored])

    async def outcomes(self, scored: list[tuple[str, float, int]], labels: list[bool]) -> None:
        """One label per scored event, as given."""
        for (tx_id, _, _), is_fraud in zip(scored, labels, strict=True):
            event = IngestValidated(
                source="labels",
                contract_version=1,
                entity_id="card_1",
                event_time=self.clock,
                payload={"label_id": f"l-{tx_id}", "tx_id": tx_id, "is_fraud": is_fraud},
                source_topic="drifttest.labels.v1",
                source_partition=0,
                source_offset=0,
            )
            await self._send(event, 0)


async def uninterrupted(kafka: KafkaSettings, stack: Stack, feed: Feed) -> dict[int, Any]:
    """Per partition, the state one monitor reaches on the records as they are in the topic
    (read back, so a batch the producer had to resend counts as often as it is there),
    each counted once, in offset order."""
    features = {f.ref: f.kind for f in stack.spec.model_features()}
    tests = {f.ref: stack.spec.drift.tests_for(f) for f in stack.spec.model_features()}
    reader = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
    await reader.start()
    out = {}
    try:
        for partition in range(PARTITIONS):
            tp = TopicPartition(PREDICTION_LOGGED, partition)
            reader.assign([tp])
            reader.seek(tp, feed.sent[partition][0][3])
            end = feed.last[(PREDICTION_LOGGED, partition)]
            monitor = DriftMonitor(
                stack.model, stack.version, stack.profile, stack.spec.drift, features, tests
            )
            offset = -1
            async with asyncio.timeout(30):
                while offset < end:
                    for records in (await reader.getmany(tp, timeout_ms=500)).values():
                        for record in records:
                            offset = record.offset
                            event = PredictionLogged.model_validate_json(record.value)
                            if event.model != stack.model:
                                continue
                            row = dict(event.features)
                            row["v.channel"] = CHANNELS[int(row["v.channel"])]  # type: ignore[arg-type]
                            monitor.observe(
                                row,
                                event.outputs["probabilities"][1],
                                at=event.occurred_at,
                                source=f"{PREDICTION_LOGGED}:{partition}",
                                offset=record.offset,
                            )
            out[partition] = counted(monitor.snapshot().model_dump(mode="json"))
    finally:
        await reader.stop()
    return out


def counted(state: dict[str, Any]) -> dict[str, Any]:
    """What a monitor's state says it counted (the parts replays could corrupt)."""
    return {
        "windows": [(v["window_index"], v["offsets"], v["n_live"]) for v in state["recent"]],
        **{
            key: state[key]
            for key in (
                "window_index",
                "n_in_window",
                "window_start",
                "window_end",
                "offsets",
                "channels",
                "streaks",
            )
        },
    }


async def saved_states(stack: Stack) -> dict[int, dict[str, Any]]:
    """The monitor states the drift service saved in Redis, per prediction partition."""
    client = redis.asyncio.Redis.from_url(str(stack.settings.redis.url))
    store = DriftStore(
        client, prefix=stack.settings.redis.key_prefix, group=stack.settings.group_id
    )
    try:
        out = {}
        for partition in range(PARTITIONS):
            stored = await store.load_partition(PREDICTION_LOGGED, partition)
            raw = stored.monitors[(stack.model, stack.version)]
            out[partition] = counted(json.loads(raw))
        return out
    finally:
        await store.aclose()


async def eventually(check: Callable[[], bool], timeout_s: float = 45.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the drift service did not catch up in time")
        await asyncio.sleep(0.1)


def caught_up(service: DriftService, last: dict[tuple[str, int], int]) -> Callable[[], bool]:
    """Every record fed so far is applied and its state saved (so detections are out)."""

    def check() -> bool:
        processor = service.processor
        if processor is None:
            return False
        for key, offset in last.items():
            state = processor.partitions.get(key)
            if state is None or state.offset < offset or state.dirty:
                return False
        return not processor.outbox

    return check


async def published(
    kafka: KafkaSettings, model: str
) -> tuple[list[DriftDetected], list[TrainingRequested]]:
    """Every drift.detected and training.requested of `model` so far (read until quiet)."""
    reader = AIOKafkaConsumer(
        DRIFT_DETECTED,
        TRAINING_REQUESTED,
        **kafka.client_kwargs(),
        group_id=None,
        auto_offset_reset="earliest",
    )
    await reader.start()
    detected: list[DriftDetected] = []
    requested: list[TrainingRequested] = []
    try:
        quiet = 0
        async with asyncio.timeout(20):
            while quiet < 3:
                batches = await reader.getmany(timeout_ms=300)
                records = [r for batch in batches.values() for r in batch]
                quiet = 0 if records else quiet + 1
                for record in records:
                    if record.key != model.encode():
                        continue
                    if record.topic == DRIFT_DETECTED:
                        detected.append(DriftDetected.model_validate_json(record.value))
                    else:
                        requested.append(TrainingRequested.model_validate_json(record.value))
    finally:
        await reader.stop()
    return detected, requested


async def rewind_group(kafka: KafkaSettings, group: str) -> None:
    """Commit offset 0 for the group, as a member of it (the broker accepts members' commits)."""
    member = AIOKafkaConsumer(
        PREDICTION_LOGGED,
        **kafka.client_kwargs(),
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=int(kafka.session_timeout_s * 1000),
        heartbeat_interval_ms=int(kafka.session_timeout_s * 1000) // 3,
    )
    await member.start()
    try:
        async with asyncio.timeout(30):
            while not member.assignment():
                await member.getmany(timeout_ms=200, max_records=1)
        await member.commit(dict.fromkeys(member.assignment(), 0))
    finally:
        await member.stop()


async def started(
    stack: Stack, settings: DriftSettings | None = None
) -> tuple[DriftService, asyncio.Task[None]]:
    service = DriftService(settings or stack.settings, stack.spec)
    task = asyncio.create_task(service.run())
    await service.wait_started()
    return service, task


async def stopped(service: DriftService, task: asyncio.Task[None]) -> None:
    service.stop()
    await asyncio.wait_for(task, 30)


async def test_stationary_then_drifted_one_detection_one_request_with_evidence(
    kafka: KafkaSettings, stack: Stack
) -> None:
    service, task = await started(stack)
    try:
        async with Feed(kafka, stack) as feed:
            await feed.predictions(2 * WINDOW, drifted=False)  # two windows per partition
            await eventually(caught_up(service, feed.last))
            detected, requested = await published(kafka, stack.model)
            assert (detected, requested) == ([], []), "a stationary stream raised an alarm"

            await feed.labels(feed.scored[:90], wrong=False)  # joined to their predictions
            await feed.predictions(2 * WINDOW, drifted=True)  # persistence 2: detects in each
            await eventually(caught_up(service, feed.last))
            detected, requested = await published(kafka, stack.model)
            assert (len(detected), requested) == (1, []), "the retraining was not armed"
            # Labels of the newest predictions (inside every detection window): one short of
            # the threshold keeps it armed, the last one fires it.
            newest = feed.scored[-LABELS_TO_FIRE:]
            await feed.labels(newest[:-1], wrong=False)
            await eventually(caught_up(service, feed.last))
            assert (await published(kafka, stack.model))[1] == []
            labelled_at = feed.clock
            await feed.labels(newest[-1:], wrong=False)
            await eventually(caught_up(service, feed.last))
        detected, requested = await published(kafka, stack.model)
    finally:
        await stopped(service, task)

    assert len(detected) == 1, detected
    assert len(requested) == 1, requested
    alarm, request = detected[0], requested[0]
    assert request.reason == "drift"
    assert request.cause_event_id == alarm.event_id
    assert request.window_start == labelled_at  # the first post-drift label's event time
    assert alarm.model == stack.model
    assert alarm.version == stack.version
    assert 0 < alarm.n_live <= WINDOW
    # The evidence names what moved (amount, the score) with each test's threshold; which
    # tests fire first (window tests or the library's ADWIN early close) is the library's call.
    drifted = {r.feature for r in alarm.results if r.drifted}
    assert drifted & {"v.amount", "prediction"}, alarm.results
    assert "v.channel" not in drifted or any(r.test == "chi2" for r in alarm.results)
    for result in alarm.results:
        expected = {"psi": stack.spec.drift.psi_threshold, "ks": stack.spec.drift.alpha}
        if result.test in expected:
            assert result.threshold == expected[result.test]
    ((source, (first, last)),) = alarm.offsets.items()
    assert source.startswith(f"{PREDICTION_LOGGED}:")
    assert last - first + 1 == alarm.n_live  # one partition's window, and nothing else in it
    assert alarm.window_start < alarm.window_end

    # The other partitions detected too; the per-model cooldown kept them quiet, on record.
    state = await read_drift_state(stack.settings.redis, stack.settings.group_id)
    decisions = state["detections"]
    assert {d["source"] for d in decisions} == {f"{PREDICTION_LOGGED}:{p}" for p in range(3)}
    assert sum(d["alarm"] for d in decisions) == 1
    assert all(d["reason"].startswith("cooldown") for d in decisions if not d["alarm"])
    (version,) = state["models"]
    assert len(version["monitors"]) == PARTITIONS + 1  # + the labels partition's monitor
    labelled = [m for m in version["monitors"] if m["source"].startswith(INGEST_VALIDATED)]
    performance = labelled[0]["status"]["performance"]
    assert performance["outcomes"] == 90 + LABELS_TO_FIRE
    # each label agrees with its score's decision; the error is the Brier score of the score
    joined = [*feed.scored[:90], *newest]
    brier = [(s - float(s >= 0.5)) ** 2 for _, s, _ in joined]
    assert performance["mean_error"] == pytest.approx(float(np.mean(brier)))
    assert set(performance["groups"]) == {"all"}  # this profile has no holdout errors


async def test_labels_worse_than_the_holdout_s_raise_a_performance_detection(
    kafka: KafkaSettings, stack: Stack, registry: RegistryServer
) -> None:
    """ADR 0031: a version registered with its holdout's errors. Labels as likely as its
    scores say raise nothing; labels that turned against the scores (the concept changed,
    the inputs did not) raise a performance detection, with no good live stretch before."""
    rng = np.random.default_rng(8)
    _, _, scores = sample(rng, 5000, drifted=False)
    holdout_labels = (rng.random(5000) < scores).astype(np.float64)  # a calibrated model
    seconds = np.arange(5000, dtype=np.float64) * 60.0
    reference = performance_reference("brier", holdout_labels, scores, seconds, "none", 10)
    profile = stack.profile.model_copy(update={"performance": reference})
    async with RegistryClient(f"127.0.0.1:{registry.port}") as client:
        registered = await client.register(stack.model, model_artifact(), reference_profile=profile)
    graded = replace(stack, version=registered.version.version, profile=profile)
    service, task = await started(graded)
    try:
        async with Feed(kafka, graded, seed=12) as feed:
            await feed.predictions(WINDOW, drifted=False)
            await feed.outcomes(feed.scored, [bool(rng.random() < s) for _, s, _ in feed.scored])
            await eventually(caught_up(service, feed.last))
            detected, _ = await published(kafka, stack.model)
            assert detected == [], "labels as good as the holdout's raised an alarm"

            await feed.predictions(WINDOW, drifted=False)  # the inputs have not moved
            turned = feed.scored[-PARTITIONS * WINDOW :]
            await feed.outcomes(turned, [bool(rng.random() >= s) for _, s, _ in turned])
            await eventually(caught_up(service, feed.last))
        detected, _ = await published(kafka, stack.model)
        state = await read_drift_state(stack.settings.redis, stack.settings.group_id)
    finally:
        await stopped(service, task)

    assert len(detected) == 1, detected
    (alarm,) = detected
    assert alarm.version == graded.version
    assert {r.kind for r in alarm.results} == {"performance"}
    (result,) = alarm.results
    group = {"error:positive": "positive", "error:negative": "negative"}[result.feature]
    assert result.statistic > result.threshold > 0
    # the older part of the cut holds the holdout's errors of that group: the baseline
    assert alarm.n_reference >= reference.errors[group].n
    (version,) = [v for v in state["models"] if v["version"] == graded.version]
    (labelled,) = [m for m in version["monitors"] if m["source"].startswith(INGEST_VALIDATED)]
    groups = labelled["status"]["performance"]["groups"]
    assert set(groups) == {"negative", "positive"}
    assert all(g["outcomes"] > 0 for g in groups.values())


async def test_restart_mid_window_loses_nothing_and_repeats_no_alarm(
    kafka: KafkaSettings, stack: Stack
) -> None:
    per_partition = [2 * WINDOW, 2 * WINDOW + WINDOW // 2, WINDOW // 2]
    service, task = await started(stack)
    async with Feed(kafka, stack) as feed:
        await feed.predictions(per_partition[0], drifted=False)
        await feed.predictions(per_partition[1], drifted=True)  # detection, then half a window
        await eventually(caught_up(service, feed.last))
        assert service.processor is not None
        applied = {k: service.processor.partitions[k].offset for k in feed.last}
        await stopped(service, task)
        interrupted = await saved_states(stack)
        assert all(state["n_in_window"] > 0 for state in interrupted.values())  # mid-window
        # As if the process died after saving its state but before committing offsets:
        # the group starts over from offset 0, and every record is offered again.
        await rewind_group(kafka, stack.settings.group_id)
        service, task = await started(stack)
        try:
            await feed.predictions(per_partition[2], drifted=True)  # completes the open window
            await eventually(caught_up(service, feed.last))
            assert service.processor is not None
            # Everything up to the saved offsets came again and was skipped, not re-counted.
            assert service.processor.replayed == sum(offset + 1 for offset in applied.values())
        finally:
            await stopped(service, task)
        detected, requested = await published(kafka, stack.model)
        assert len(detected) == 1  # the first run's alarm, not repeated by the replay
        assert requested == []  # no labels: the retraining stays armed, across the restart
        store = DriftStore.from_settings(stack.settings.redis, group=stack.settings.group_id)
        try:
            armed = await store.armed(stack.model)
        finally:
            await store.aclose()
        assert armed is not None
        assert armed.detection_id == detected[0].event_id
        # Exactly the state of an uninterrupted run: nothing lost, nothing counted twice.
        saved = await saved_states(stack)
        assert saved == await uninterrupted(kafka, stack, feed)
    state = await read_drift_state(stack.settings.redis, stack.settings.group_id)
    ids = [d["event_id"] for d in state["detections"]]
    assert len(ids) == len(set(ids))  # every detection decided once


def test_status_cli_shows_what_the_service_saved(
    redis_url: str, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writer (the service's DriftStore) and reader (`mlbus drift status`) agree on the keys."""
    model = f"cli_{unique}"
    project = load_spec(write_spec(tmp_path / "mlbus.yaml", model))
    rng = np.random.default_rng(3)
    amount, channel, score = sample(rng, 2000, drifted=False)
    # three days of reference rows, so the profile is keyed by the hour (ADR 0022), of
    # Berlin's wall clock (ADR 0032)
    times = START.timestamp() - 3 * 86_400 + np.arange(2000) * (3 * 86_400 / 2000)
    profile = ReferenceProfile.from_samples(
        {"v.amount": amount, "v.channel": channel},
        predictions=score,
        times=times,
        timezone="Europe/Berlin",
    )
    assert profile.seasonality == "daily"
    kinds = {f.ref: f.kind for f in project.model_features()}
    tests = {f.ref: project.drift.tests_for(f) for f in project.model_features()}
    monitor = DriftMonitor(model, 4, profile, project.drift, kinds, tests)
    live_amount, live_channel, live_score = sample(rng, 120, drifted=True)
    for i in range(120):
        monitor.observe(
            {"v.amount": float(live_amount[i]), "v.channel": str(live_channel[i])},
            float(live_score[i]),
            at=START,
            source=f"{PREDICTION_LOGGED}:0",
            offset=i,
        )
    prefix, group = f"test-cli-{unique}", f"drift-{unique}"

    async def save() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        store = DriftStore(client, prefix=prefix, group=group)
        snapshot = PartitionSnapshot(
            PREDICTION_LOGGED,
            0,
            119,
            {(model, 4): monitor.snapshot().model_dump_json()},
            {(model, 4): monitor.status().model_dump_json()},
        )
        assert await store.save([snapshot]) == [True]
        stale = PartitionSnapshot(PREDICTION_LOGGED, 0, 50, {}, {})
        assert await store.save([stale]) == [False]  # behind the saved offset: fenced off
        await store.record_detection(
            {
                "event_id": "e1",
                "model": model,
                "version": 4,
                "source": f"{PREDICTION_LOGGED}:0",
                "window_index": 1,
                "window_start": START.isoformat(),
                "window_end": START.isoformat(),
                "n_live": WINDOW,
                "drifted": ["v.amount/psi"],
                "alarm": True,
                "retraining_requested": True,
                "reason": "allowed",
                "decided_at": START.isoformat(),
            }
        )
        await store.arm(
            ArmedTrigger(
                detection_id="e1",
                model=model,
                version=4,
                since=START,
                window_end=START,
                armed_at=START,
                deadline=START + timedelta(days=1),
                min_labels=2000,
                labels=120,
            )
        )
        await store.aclose()

    asyncio.run(save())
    monkeypatch.setenv("MLBUS_REDIS_URL", redis_url)
    monkeypatch.setenv("MLBUS_REDIS_KEY_PREFIX", prefix)
    monkeypatch.setenv("MLBUS_DRIFT_GROUP_ID", group)
    monkeypatch.delenv("MLBUS_SPEC", raising=False)
    app = typer.Typer()
    _drift.register(app)

    @app.callback()
    def root() -> None: ...

    result = CliRunner().invoke(app, ["drift", "status", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    (entry,) = doc["models"]
    assert (entry["model"], entry["version"]) == (model, 4)
    rows = {(r["feature"], r["test"]): r for r in entry["summary"]}
    assert entry["monitors"][0]["status"]["seasonality"] == "daily"
    assert entry["monitors"][0]["status"]["timezone"] == "Europe/Berlin"
    live_rate = entry["monitors"][0]["status"]["live_rate"]
    assert live_rate == monitor.status().live_rate
    assert live_rate > 1 / 3  # 120 rows in one moment: denser than the reference's hours
    assert rows[("v.amount", "psi")]["samples"] == 120
    assert rows[("v.amount", "psi")]["threshold"] == project.drift.psi_threshold
    assert doc["detections"][0]["event_id"] == "e1"
    assert [(a["model"], a["labels"]) for a in doc["armed"]] == [(model, 120)]

    table = CliRunner().invoke(app, ["drift", "status"], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert f"{model} v4" in table.output
    title = " ".join(table.output.split())  # the title wraps at the table's width
    assert (
        "seasonality daily (Europe/Berlin time) "
        f"(live rows per cycle / reference rows: {live_rate:.2g})"
    ) in title
    assert "v.amount" in table.output
    assert "requested" in table.output
    assert f"retraining of {model} armed by drift e1: 120 of 2,000 labels" in table.output

    other = CliRunner().invoke(app, ["drift", "status", "--group", "nobody"])
    assert other.exit_code == 0
    assert "no drift state yet" in other.output


async def test_pending_predictions_are_bounded_in_number_and_time(
    redis_url: str, unique: str
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    now = [time.time()]  # buckets expire at real times: the clock starts now
    pending = PendingPredictions(
        client, prefix=f"test-{unique}", ttl_s=3600, max_entries=5, clock=lambda: now[0]
    )
    try:
        for i in range(8):
            pending.keep("m", 1, [(f"tx-{i}", i / 10, 1_767_225_600.25 + i)])
        buffered = await pending.lookup("m", ["tx-7"])
        assert buffered == {"tx-7": Pending(1, 0.7, 1_767_225_607.25)}
        assert await pending.flush() == 3  # only 5 kept
        found = await pending.lookup("m", [f"tx-{i}" for i in range(8)])
        assert len(found) == 5
        buckets, _ = pending._buckets("m")
        keys = [k for k in buckets if await client.exists(k)]
        assert keys
        ttls = [await client.ttl(k) for k in keys]
        assert all(0 < ttl <= 3600 + 2 * pending.bucket_s for ttl in ttls), ttls
        pending.joined("m", "tx-0")
        await pending.forget_joined()
        assert "tx-0" not in await pending.lookup("m", ["tx-0"])
        now[0] += 3600 + 2 * pending.bucket_s  # every bucket it used is out of the horizon
        assert await pending.lookup("m", [f"tx-{i}" for i in range(8)]) == {}
    finally:
        await client.aclose()


async def test_two_replicas_share_partitions_and_a_killed_ones_move_losing_nothing(
    kafka: KafkaSettings, stack: Stack, redis_url: str, tmp_path: Path
) -> None:
    """Replica A is a real process (SIGKILLed mid-stream), replica B runs here."""
    settings = stack.settings
    env = {
        **os.environ,
        "MLBUS_DATA_DIR": str(tmp_path / "replica-a"),
        "MLBUS_SPEC": str(settings.spec),
        "MLBUS_KAFKA_BOOTSTRAP_SERVERS": str(kafka.bootstrap_servers),
        "MLBUS_KAFKA_SESSION_TIMEOUT_S": str(kafka.session_timeout_s),
        "MLBUS_REDIS_URL": redis_url,
        "MLBUS_REDIS_KEY_PREFIX": settings.redis.key_prefix,
        "MLBUS_DRIFT_GROUP_ID": settings.group_id,
        "MLBUS_DRIFT_REGISTRY_ADDRESS": settings.registry_address,
    }
    replica_b, task = await started(stack)
    log_file = (tmp_path / "replica-a.log").open("wb")
    replica_a = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mlbus.drift", env=env, stdout=log_file, stderr=subprocess.STDOUT
    )
    try:
        consumer = replica_b.consumer._consumer  # type: ignore[union-attr]

        def predictions_of_b() -> set[int]:
            return {tp.partition for tp in consumer.assignment() if tp.topic == PREDICTION_LOGGED}

        await eventually(lambda: 0 < len(predictions_of_b()) < PARTITIONS, 60)  # A joined
        owned_by_b = predictions_of_b()
        async with Feed(kafka, stack) as feed:
            await feed.predictions(WINDOW + WINDOW // 2, drifted=False)
            store = replica_b.processor.store  # type: ignore[union-attr]

            async def all_saved() -> bool:
                return all(
                    [await store.stored_offset(t, p) >= o for (t, p), o in feed.last.items()]
                )

            deadline = time.monotonic() + 45
            while not await all_saved():
                assert time.monotonic() < deadline, "the replicas did not catch up"
                await asyncio.sleep(0.1)
            processor = replica_b.processor
            assert processor is not None
            ours = {p: feed.sent[p][0][3] for p in range(PARTITIONS)}  # our first offsets
            worked_by_b = {
                p
                for (t, p), state in processor.partitions.items()
                if t == PREDICTION_LOGGED and state.offset >= ours[p]
            }
            assert worked_by_b == owned_by_b  # B did its share, A the rest

            await feed.predictions(WINDOW // 2, drifted=False)
            replica_a.send_signal(signal.SIGKILL)  # mid-stream: no commit, no goodbye
            killed_at = time.monotonic()
            await feed.predictions(WINDOW, drifted=False)
            await eventually(caught_up(replica_b, feed.last), 60)
            recovery_s = time.monotonic() - killed_at
    finally:
        if replica_a.returncode is None:
            replica_a.kill()
        await asyncio.wait_for(replica_a.wait(), 10)
        log_file.close()
        await stopped(replica_b, task)
    print(f"\nkilled replica's partitions recovered by the other in {recovery_s:.1f}s")
    assert replica_a.returncode == -signal.SIGKILL
    # Whoever counted them, each partition's records were counted once: nothing lost or twice.
    saved = await saved_states(stack)
    assert saved == await uninterrupted(kafka, stack, feed)
