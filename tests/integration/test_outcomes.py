"""The outcomes service on the real embedded broker and a real Redis, with an in-process registry.

Two versions are registered: v1 is the champion, v2 the canary. Predictions of
both (each entity sticky to one of them, as inference splits a canary) are
written to `prediction.logged` with the event they scored, then the labels of
those events to `ingest.validated`, each label with a sampled W3C trace. The
canary's scores are drawn truly better, truly worse, or from the same
distribution as the champion's; the service must promote, roll back, or never
decide.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from scipy.stats import norm
from typer.testing import CliRunner

from mlbus.bus import encode_event, ensure_topics, event_headers
from mlbus.cli import _experiments
from mlbus.config import KafkaSettings, RedisSettings
from mlbus.events import (
    EXPERIMENT_ACTED,
    EXPERIMENT_DECIDED,
    INGEST_VALIDATED,
    MODEL_PUBLISHED,
    MODEL_REGISTERED,
    OUTCOMES_MEASURED,
    PREDICTION_LOGGED,
    Event,
    ExperimentActed,
    ExperimentDecided,
    IngestValidated,
    PredictionLogged,
)
from mlbus.outcomes import OutcomesService, OutcomesSettings
from mlbus.registry import RegistryServer, RegistrySettings
from mlbus.registry_client import RegistryClient
from mlbus.spec import load_spec
from tests.unit.test_registry_onnx import tiny_model

# Thousands of records through a real broker per test: more than the default 120 s on a
# loaded machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PER_ARM = 1500
CHAMPION_AUC = 0.72


def write_spec(path: Path, model: str) -> Path:
    doc = {
        "project": "outcomestest",
        "sources": {
            "tx": {
                "topic": f"{model}.tx.v1",
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
            "labels": {
                "topic": f"{model}.labels.v1",
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
                "fields": ["amount"],
            }
        },
        "model": {
            "name": model,
            "task": "classification",
            "label": {"source": "labels", "field": "is_fraud"},
            "features": ["v"],
            "metric": "auc",
            "gates": {"min_improvement": 0.0, "minimums": {"auc": 0.6}},
        },
        "outcomes": {
            "windows": ["1h"],
            "experiments": {
                "alpha": 0.05,
                "min_samples": 300,
                "min_class_count": 30,
                "on_better": "promote",
                "on_worse": "rollback",
            },
        },
    }
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


@dataclass
class Stack:
    model: str
    registry: RegistryClient
    settings: OutcomesSettings
    service: OutcomesService
    kafka: KafkaSettings


@pytest.fixture
async def registry_server(kafka: KafkaSettings, tmp_path: Path) -> AsyncIterator[RegistryServer]:
    await ensure_topics(kafka, [MODEL_PUBLISHED, MODEL_REGISTERED])
    settings = RegistrySettings(data_dir=tmp_path / "registry", kafka=kafka, grpc_port=0, spec=None)
    async with RegistryServer(settings, host="127.0.0.1") as running:
        yield running


@pytest.fixture
async def stack(
    kafka: KafkaSettings,
    redis_url: str,
    registry_server: RegistryServer,
    tmp_path: Path,
    unique: str,
) -> AsyncIterator[Stack]:
    model = f"outcomes_{unique}"
    write_spec(tmp_path / "mlbus.yaml", model)
    address = f"127.0.0.1:{registry_server.port}"
    async with RegistryClient(address) as client:
        await client.register(model, tiny_model(1.0), alias="champion", reason="first")
        await client.register(model, tiny_model(2.0), alias="canary", reason="retrained")
        await ensure_topics(
            kafka,
            [
                PREDICTION_LOGGED,
                INGEST_VALIDATED,
                OUTCOMES_MEASURED,
                EXPERIMENT_DECIDED,
                EXPERIMENT_ACTED,
            ],
        )
        settings = OutcomesSettings(
            data_dir=tmp_path,
            kafka=kafka,
            redis=RedisSettings(url=redis_url, key_prefix=f"test-{unique}"),
            spec=tmp_path / "mlbus.yaml",
            registry_address=address,
            group_id=f"outcomes-{unique}",
            evaluate_interval_s=0.5,
            report_interval_s=5.0,
            bucket_s=60,
            grpc_host="127.0.0.1",
            grpc_port=0,  # the labeling API on a free port: tests may run side by side
        )
        service = OutcomesService(settings, load_spec(settings.spec or ""))
        task = asyncio.create_task(service.run())
        try:
            await service.wait_started(60)
            yield Stack(model, client, settings, service, kafka)
        finally:
            service.stop()
            await asyncio.wait_for(task, 30)


def scores(rng: np.random.Generator, auc: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Binormal scores with this AUC, prevalence 30%: (P(positive), label)."""
    actual = rng.random(n) < 0.3
    x = rng.normal(0.0, 1.0, n) + math.sqrt(2.0) * norm.ppf(auc) * actual
    return 1.0 / (1.0 + np.exp(-x)), actual


async def feed(stack: Stack, canary_auc: float, seed: int) -> set[str]:
    """Predictions of both arms, then their labels; returns the labels' trace ids."""
    rng = np.random.default_rng(seed)
    producer = AIOKafkaProducer(**stack.kafka.client_kwargs(), linger_ms=5)
    await producer.start()
    traces: set[str] = set()
    try:
        start = datetime.now(UTC) - timedelta(minutes=5)
        labels: list[tuple[str, bool, str]] = []
        futures = []
        for version, alias, auc in ((1, "champion", CHAMPION_AUC), (2, "canary", canary_auc)):
            probability, actual = scores(rng, auc, PER_ARM)
            for i in range(PER_ARM):
                tx_id = f"{stack.model}-{alias}-{i}"  # unique, as real event ids are
                entity = f"card_{alias}_{i % 200}"
                event = PredictionLogged(
                    occurred_at=start + timedelta(milliseconds=i),
                    model=stack.model,
                    version=version,
                    alias=alias,
                    entity_id=entity,
                    features={"v.amount": 1.0},
                    outputs={"probabilities": [1.0 - probability[i], float(probability[i])]},
                    latency_ms=1.0,
                    scored_event_id=tx_id,
                )
                futures.append(await _send(producer, event, entity.encode()))
                labels.append((tx_id, bool(actual[i]), entity))
        await asyncio.gather(*futures)
        # Labels come long after their predictions in life; here, wait until every
        # prediction waits in Redis (a label read first would find nothing to join).
        store = stack.service.processor.store if stack.service.processor else None
        assert store is not None
        wanted = [(stack.model, tx_id) for tx_id, _, _ in labels]

        async def all_waiting() -> bool:
            return len(await store.pending(wanted)) == len(wanted)

        await wait_for(all_waiting)
        futures = []
        order = rng.permutation(len(labels))
        for index in order:
            tx_id, is_fraud, entity = labels[index]
            trace_id = f"{rng.integers(1, 2**63):032x}"
            if index % 10 == 0:
                traces.add(trace_id)
            label = IngestValidated(
                source="labels",
                contract_version=1,
                entity_id=entity,
                event_time=datetime.now(UTC),
                payload={"label_id": f"l-{tx_id}", "tx_id": tx_id, "is_fraud": is_fraud},
                source_topic=f"{stack.model}.labels.v1",
                source_partition=0,
                source_offset=int(index),
            )
            # Every tenth label carries a sampled trace (a traced record is handled on its
            # own, with a span: all of them would only slow the test down).
            traceparent = (
                f"00-{trace_id}-{rng.integers(1, 2**63):016x}-01" if index % 10 == 0 else None
            )
            futures.append(await _send(producer, label, entity.encode(), traceparent))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return traces


async def _send(
    producer: AIOKafkaProducer, event: Event, key: bytes, traceparent: str | None = None
) -> Any:
    headers = [(k, v) for k, v in event_headers(event, "/test") if k != "traceparent"]
    if traceparent is not None:
        headers.append(("traceparent", traceparent.encode()))
    return await producer.send(event.topic, encode_event(event), key=key, headers=headers)


async def events_of(
    kafka: KafkaSettings, topic: str, model: str, parse: Callable[[bytes], Any]
) -> list[tuple[Any, str | None]]:
    """Every event of `model` on `topic` so far, with its traceparent's trace id."""
    reader = AIOKafkaConsumer(
        topic, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
    )
    await reader.start()
    found = []
    try:
        batches = await reader.getmany(timeout_ms=2000)
        while batches:
            for records in batches.values():
                for record in records:
                    event = parse(record.value or b"")
                    if event.model != model:
                        continue
                    parent = dict(record.headers or []).get("traceparent")
                    found.append((event, parent.decode().split("-")[1] if parent else None))
            batches = await reader.getmany(timeout_ms=500)
    finally:
        await reader.stop()
    return found


async def wait_for(
    check: Callable[[], Any], timeout_s: float = 240.0, seen: Callable[[], Any] | None = None
) -> Any:
    """Poll `check` until it gives something (generous: the test machine is shared).

    `seen` says what was last observed, so a timeout tells why it waited in vain.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last seen: {seen() if seen else '-'}")
        await asyncio.sleep(1.0)


async def test_a_truly_better_canary_is_promoted(stack: Stack) -> None:
    traces = await feed(stack, CHAMPION_AUC + 0.12, seed=1)

    async def promoted() -> bool:
        return (await stack.registry.resolve_alias(stack.model, "champion")).version == 2

    await wait_for(promoted)
    decided = await wait_for(
        lambda: events_of(
            stack.kafka, EXPERIMENT_DECIDED, stack.model, ExperimentDecided.model_validate_json
        )
    )
    acted = await wait_for(
        lambda: events_of(
            stack.kafka, EXPERIMENT_ACTED, stack.model, ExperimentActed.model_validate_json
        )
    )
    (decision, decision_trace), *_ = decided
    (action, action_trace), *_ = acted
    assert decision.verdict == "better"
    assert decision.challenger_version == 2
    assert decision.champion_version == 1
    assert decision.p_value <= 0.05
    assert decision.ci_low > 0
    assert decision.champion_samples >= 300
    assert decision.challenger_samples >= 300
    assert action.action == "promote"
    assert action.outcome == "done"
    assert action.decision_event_id == decision.event_id
    # The verdict and the action are in the trace of a label that was evidence.
    assert decision_trace in traces
    assert action_trace == decision_trace
    # The registry's own record says why.
    lineage = await stack.registry.lineage(stack.model, 2)
    reasons = [c.reason for c in lineage.alias_history if c.alias == "champion"]
    assert any("better" in r and decision.experiment_id in r for r in reasons)


async def test_a_worse_canary_is_rolled_back(stack: Stack) -> None:
    await feed(stack, CHAMPION_AUC - 0.12, seed=2)

    async def rolled_back() -> bool:
        return (await stack.registry.resolve_alias(stack.model, "canary")).version == 1

    await wait_for(rolled_back)
    assert (await stack.registry.resolve_alias(stack.model, "champion")).version == 1
    decided = await events_of(
        stack.kafka, EXPERIMENT_DECIDED, stack.model, ExperimentDecided.model_validate_json
    )
    acted = await wait_for(
        lambda: events_of(
            stack.kafka, EXPERIMENT_ACTED, stack.model, ExperimentActed.model_validate_json
        )
    )
    assert [d.verdict for d, _ in decided] == ["worse"]
    assert decided[0][0].ci_high < 0
    assert [(a.action, a.outcome) for a, _ in acted] == [("rollback", "done")]


async def test_an_equal_canary_is_never_declared_different(
    stack: Stack, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await feed(stack, CHAMPION_AUC, seed=3)
    last_status: list[dict[str, Any]] = [{}]

    async def all_counted() -> dict[str, Any] | None:
        assert stack.service.evaluator is not None
        status = await stack.service.evaluator.evaluate()
        last_status[0] = status
        experiments = status["experiments"]
        if not experiments:
            return None
        last = experiments[0]["last"]
        done = (
            last.get("champion", {}).get("n") == PER_ARM
            and last.get("challenger", {}).get("n") == PER_ARM
            and experiments[0]["looks"] >= 5
        )
        return status if done else None

    status = await wait_for(all_counted, seen=lambda: last_status[0].get("experiments"))
    (experiment,) = status["experiments"]
    assert experiment["verdict"] == "not yet"
    assert experiment["status"] == "running"
    assert experiment["p_value"] > 0.05
    # Outcomes per alias over the window, with intervals.
    rows = {(r["version"], r["alias"]): r for r in status["windows"]}
    for key in ((1, "champion"), (2, "canary")):
        auc = rows[key]["metrics"]["auc"]
        assert rows[key]["labelled"] == PER_ARM
        assert auc["ci_low"] < auc["value"] < auc["ci_high"]
        assert abs(auc["value"] - CHAMPION_AUC) < 0.05
    decided = await events_of(
        stack.kafka, EXPERIMENT_DECIDED, stack.model, ExperimentDecided.model_validate_json
    )
    assert decided == []
    assert (await stack.registry.resolve_alias(stack.model, "champion")).version == 1
    assert (await stack.registry.resolve_alias(stack.model, "canary")).version == 2

    # `mlbus experiments status` shows the same, as JSON and as tables.
    monkeypatch.setenv("MLBUS_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("MLBUS_REDIS_URL", redis_url)
    monkeypatch.setenv("MLBUS_REDIS_KEY_PREFIX", stack.settings.redis.key_prefix)
    monkeypatch.setenv("MLBUS_OUTCOMES_GROUP_ID", stack.settings.group_id)
    monkeypatch.delenv("MLBUS_SPEC", raising=False)
    app = typer.Typer()
    _experiments.register(app)
    result = await asyncio.to_thread(CliRunner().invoke, app, ["experiments", "status", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["model"] == stack.model
    assert [e["verdict"] for e in doc["experiments"]] == ["not yet"]
    table = await asyncio.to_thread(
        CliRunner().invoke, app, ["experiments", "status"], terminal_width=200
    )
    assert table.exit_code == 0, table.output
    assert "not yet" in table.output
    assert "canary" in table.output
    other = await asyncio.to_thread(
        CliRunner().invoke, app, ["experiments", "status", "--group", "nobody"]
    )
    assert other.exit_code == 0
    assert "no outcomes yet" in other.output


async def _shadowed(stack: Stack, ids: list[str], rng: np.random.Generator) -> list[bool]:
    """Champion v1 and shadow v2 score the same events; returns each event's label."""
    producer = AIOKafkaProducer(**stack.kafka.client_kwargs(), linger_ms=5)
    await producer.start()
    probability, actual = scores(rng, CHAMPION_AUC, len(ids))
    now = datetime.now(UTC) - timedelta(minutes=1)
    try:
        futures = []
        for i, tx_id in enumerate(ids):
            for version, alias, shadow in ((1, "champion", False), (2, "shadow", True)):
                event = PredictionLogged(
                    occurred_at=now + timedelta(milliseconds=i),
                    model=stack.model,
                    version=version,
                    alias=alias,
                    entity_id=f"card_{i}",
                    features={"v.amount": 1.0},
                    outputs={"probabilities": [1.0 - probability[i], float(probability[i])]},
                    latency_ms=1.0,
                    shadow=shadow,
                    scored_event_id=tx_id,
                )
                futures.append(await _send(producer, event, f"card_{i}".encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [bool(a) for a in actual]


async def _labels(stack: Stack, labels: list[tuple[str, Any]]) -> None:
    producer = AIOKafkaProducer(**stack.kafka.client_kwargs(), linger_ms=5)
    await producer.start()
    try:
        futures = []
        for n, (tx_id, value) in enumerate(labels):
            label = IngestValidated(
                source="labels",
                contract_version=1,
                entity_id="card_x",
                event_time=datetime.now(UTC),
                payload={"label_id": f"l-{n}-{tx_id}", "tx_id": tx_id, "is_fraud": value},
                source_topic=f"{stack.model}.labels.v1",
                source_partition=0,
                source_offset=n,
            )
            futures.append(await _send(producer, label, tx_id.encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _waiting(stack: Stack, service: OutcomesService, ids: list[str]) -> None:
    assert service.processor is not None
    store = service.processor.store

    async def all_waiting() -> bool:
        found = await store.pending([(stack.model, i) for i in ids])
        return len(found) == len(ids) and all(len(v) == 2 for v in found.values())

    await wait_for(all_waiting)


async def _counted(service: OutcomesService, n: int) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        assert service.evaluator is not None
        status = await service.evaluator.evaluate()
        rows = {(r["version"], r["alias"]): r["labelled"] for r in status["windows"]}
        arms = [
            (e["last"].get("champion", {}).get("n"), e["last"].get("challenger", {}).get("n"))
            for e in status["experiments"]
        ]
        if rows.get((1, "champion")) == n and rows.get((2, "shadow")) == n and arms == [(n, n)]:
            return status
        return None

    found: dict[str, Any] = await wait_for(done)
    return found


async def test_each_scored_event_counts_once_for_repeats_unknown_events_and_replays(
    stack: Stack,
) -> None:
    """Shadow outcomes are measured from logged scores; the first label of an event wins;
    a repeated label, a label of an unknown event and an unreadable one change nothing;
    after a restart that replays both topics from the start, nothing counts twice."""
    rng = np.random.default_rng(4)
    first = [f"{stack.model}-tx-{i}" for i in range(300)]
    actual = await _shadowed(stack, first, rng)
    await _waiting(stack, stack.service, first)
    labels: list[tuple[str, Any]] = list(zip(first, actual, strict=True))
    labels += [(tx_id, not value) for tx_id, value in labels[:50]]  # repeated, flipped
    labels += [(f"ghost-{i}", True) for i in range(40)]  # unknown events
    await _labels(stack, labels)
    status = await _counted(stack.service, 300)
    (experiment,) = status["experiments"]
    assert experiment["alias"] == "shadow"
    assert experiment["challenger_version"] == 2
    rows = {(r["version"], r["alias"]): r for r in status["windows"]}
    # The same scores on the same events: the shadow's outcomes are the champion's.
    assert rows[(2, "shadow")]["metrics"] == rows[(1, "champion")]["metrics"]
    positives = sum(actual) / len(actual)
    assert rows[(2, "shadow")]["metrics"]["positive_rate"]["value"] == pytest.approx(positives)

    # A crash before the commit: the group's offsets go back to the start of both topics.
    stack.service.stop()
    await asyncio.sleep(1.0)
    # Commit offset 0 for the group, as a member of it (the broker accepts members' commits).
    member = AIOKafkaConsumer(
        PREDICTION_LOGGED,
        INGEST_VALIDATED,
        **stack.kafka.client_kwargs(),
        group_id=stack.settings.group_id,
        enable_auto_commit=False,
        session_timeout_ms=int(stack.kafka.session_timeout_s * 1000),
        heartbeat_interval_ms=int(stack.kafka.session_timeout_s * 1000) // 3,
    )
    await member.start()
    try:
        async with asyncio.timeout(30):
            while not member.assignment():
                await member.getmany(timeout_ms=200, max_records=1)
        await member.commit(dict.fromkeys(member.assignment(), 0))
    finally:
        await member.stop()
    again = OutcomesService(stack.settings, stack.service.spec)
    task = asyncio.create_task(again.run())
    try:
        await again.wait_started(60)
        second = [f"{stack.model}-tx-late-{i}" for i in range(20)]
        late = await _shadowed(stack, second, rng)
        await _waiting(stack, again, second)
        await _labels(stack, list(zip(second, late, strict=True)))
        await _counted(again, 320)
    finally:
        again.stop()
        await asyncio.wait_for(task, 30)


async def test_labeling_round_trip_request_submit_ingest_answer(
    stack: Stack, redis_url: str, tmp_path: Path, unique: str
) -> None:
    """Predictions worth a label are queued (bounded, de-duplicated, by priority) and
    announced; a submitted label passes ingestion's contract and answers its request."""
    from mlbus.events import LABELING_REQUESTED, LabelingRequested
    from mlbus.ingestion import IngestionService, IngestionSettings
    from mlbus.labeling import LabelQueue, submit_label

    path = write_spec(tmp_path / "labeling.yaml", stack.model)
    doc = json.loads(path.read_text())
    doc["outcomes"]["labeling"] = {
        "band": 0.1,
        "disagreement": 0.3,
        "sample_rate": 0.0,
        "max_open": 5,
        "expire_s": "1d",
    }
    path.write_text(json.dumps(doc))
    spec = load_spec(path)
    labels_topic = spec.sources["labels"].topic
    await ensure_topics(stack.kafka, [spec.sources["tx"].topic, labels_topic, LABELING_REQUESTED])
    prefix = f"lab-{unique}"
    redis = RedisSettings(url=redis_url, key_prefix=prefix)
    settings = stack.settings.model_copy(
        update={"spec": path, "group_id": f"labeling-{unique}", "redis": redis}
    )
    outcomes = OutcomesService(settings, spec)
    ingestion = IngestionService(
        IngestionSettings(
            spec=path,
            data_dir=tmp_path / "ingestion",
            kafka=stack.kafka,
            redis=redis,
            group_id=f"ingest-{unique}",
        )
    )
    tasks = [asyncio.create_task(outcomes.run()), asyncio.create_task(ingestion.run())]
    try:
        await outcomes.wait_started(60)
        await ingestion.wait_started(60)
        # 6 champion scores near the threshold (band), 1 event champion and shadow disagree
        # on, 3 confident ones: 7 candidates for 5 places.
        champion = [0.45, 0.47, 0.49, 0.51, 0.53, 0.55, 0.9, 0.95, 0.96, 0.97]
        producer = AIOKafkaProducer(**stack.kafka.client_kwargs(), linger_ms=5)
        await producer.start()
        now = datetime.now(UTC)
        ids = [f"lab-{unique}-{i}" for i in range(len(champion))]

        async def predictions() -> None:
            futures = []
            for i, score in enumerate(champion):
                scored = [(1, "champion", False, score)]
                if i == 6:
                    scored.append((2, "shadow", True, 0.2))
                for version, alias, shadow, p in scored:
                    event = PredictionLogged(
                        occurred_at=now,
                        model=stack.model,
                        version=version,
                        alias=alias,
                        entity_id=f"card_{i}",
                        features={"v.amount": float(i)},
                        outputs={"probabilities": [1.0 - p, p]},
                        latency_ms=1.0,
                        shadow=shadow,
                        scored_event_id=ids[i],
                    )
                    futures.append(await _send(producer, event, f"card_{i}".encode()))
            await asyncio.gather(*futures)

        try:
            await predictions()
        finally:
            await producer.stop()
        assert outcomes.processor is not None
        queue = LabelQueue(outcomes.processor.store.client, prefix=prefix, model=stack.model)

        async def queued() -> dict[str, Any] | None:
            counts = await queue.counts()
            return counts if counts["requested"] == 7 else None

        counts = await wait_for(queued)
        assert (counts["open"], counts["dropped"], counts["answered"]) == (5, 2, 0)
        waiting = await queue.top(10)
        assert [w["scored_event_id"] for w in waiting][:1] == [ids[6]]  # disagreement first
        assert waiting[0]["reason"] == "disagreement"
        assert waiting[0]["scores"] == {"champion": 0.9, "shadow": 0.2}
        # the two farthest from the threshold were dropped; the confident ones never asked
        assert {w["scored_event_id"] for w in waiting} == {ids[6], ids[1], ids[2], ids[3], ids[4]}
        announced = await wait_for(
            lambda: events_of(
                stack.kafka, LABELING_REQUESTED, stack.model, LabelingRequested.model_validate_json
            )
        )
        # Every waiting request was announced; one announced before the queue filled up may
        # have been dropped since by a more urgent one (the two farthest from the threshold).
        told = {e.scored_event_id for e, _ in announced}
        assert {w["scored_event_id"] for w in waiting} <= told
        assert told - {w["scored_event_id"] for w in waiting} <= {ids[0], ids[5]}
        assert len(announced) == len(told)  # each event announced once

        # A person answers the disagreement; the label goes through ingestion.
        topic, raw = await submit_label(
            stack.kafka,
            redis,
            spec,
            scored_event_id=ids[6],
            value="true",
            entity_id=None,
            extra={},
        )
        assert topic == labels_topic
        assert json.loads(raw)["card_id"] == "card_6"

        async def answered() -> dict[str, Any] | None:
            found = await queue.counts()
            return found if found["answered"] == 1 else None

        counts = await wait_for(answered)
        assert counts["open"] == 4
        assert counts["answer_rate"] == 1.0
        assert ids[6] not in {w["scored_event_id"] for w in await queue.top(10)}
        # The same predictions again (a replay): nothing waiting is asked twice.
        producer = AIOKafkaProducer(**stack.kafka.client_kwargs(), linger_ms=5)
        await producer.start()
        try:
            await predictions()
        finally:
            await producer.stop()
        await asyncio.sleep(3)
        again = await queue.counts()
        assert (again["open"], again["requested"], again["dropped"]) == (4, 7, 2)
        # Requests nobody answers expire: four of five asked were never answered.
        assert await queue.expire(time.time() + 2 * 86_400, 86_400) == 4
        final = await queue.counts()
        assert (final["expired"], final["open"]) == (4, 0)
        assert final["answer_rate"] == pytest.approx(1 / 5)
    finally:
        outcomes.stop()
        ingestion.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
