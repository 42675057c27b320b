"""A real Faust worker reads mlbus events as typed records through `mlbus.faust`.

The worker (tests/integration/_faust_worker.py, a user's app) runs as its own
process on the embedded broker. mlbus's own publisher sends predictions and a
drift detection with their CloudEvents headers inside a traced span; records
with another `ce_type` or a value that breaks the contract are skipped.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace import TracerProvider

from mlbus.bus import Publisher, ensure_topics
from mlbus.config import KafkaSettings
from mlbus.events import (
    DRIFT_DETECTED,
    MODEL_PUBLISHED,
    PREDICTION_LOGGED,
    DriftDetected,
    DriftTestResult,
    PredictionLogged,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WORKER = Path(__file__).with_name("_faust_worker.py")
READ_TIMEOUT_S = 90.0


def prediction(model: str, i: int) -> PredictionLogged:
    return PredictionLogged(
        model=model,
        version=1,
        alias="champion",
        entity_id=f"card_{i:06d}",
        features={"amount": 10.0 * i, "channel": "online"},
        outputs={"probabilities": [0.9, 0.1]},
        latency_ms=1.5,
        features_at=datetime.now(UTC),
    )


def detection(model: str) -> DriftDetected:
    now = datetime.now(UTC)
    result = DriftTestResult(
        feature="amount", kind="covariate", test="psi", statistic=0.4, threshold=0.2, drifted=True
    )
    return DriftDetected(
        model=model,
        version=1,
        results=(result,),
        window_start=now - timedelta(minutes=5),
        window_end=now,
        offsets={"0": (10, 20)},
        n_reference=1000,
        n_live=500,
    )


async def publish(kafka: KafkaSettings, model: str) -> tuple[list[str], str, str]:
    """Predictions and a detection inside one traced span; plus two records to skip."""
    from mlbus.bus import _publisher

    provider = TracerProvider()
    saved = _publisher._tracer
    _publisher._tracer = provider.get_tracer("mlbus.bus")
    try:
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("serve") as span:
            trace_id = f"{span.get_span_context().trace_id:032x}"
            async with Publisher(kafka, "inference") as publisher:
                predictions = [prediction(model, i) for i in range(3)]
                for event in predictions:
                    await publisher.send(event, key=event.entity_id)
                drift = detection(model)
                await publisher.send(drift, key=model)
                await publisher.producer.flush()
    finally:
        _publisher._tracer = saved
        provider.shutdown()
    producer = AIOKafkaProducer(**kafka.client_kwargs())
    await producer.start()
    try:  # another event type on the topic, and a value that breaks the contract
        wrong_type = prediction(model, 99).model_dump_json().encode()
        await producer.send_and_wait(
            PREDICTION_LOGGED, wrong_type, headers=[("ce_type", MODEL_PUBLISHED.encode())]
        )
        broken = json.dumps({"model": model, "version": "one"}).encode()
        await producer.send_and_wait(
            PREDICTION_LOGGED, broken, headers=[("ce_type", PREDICTION_LOGGED.encode())]
        )
    finally:
        await producer.stop()
    return [p.event_id for p in predictions], drift.event_id, trace_id


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def test_a_faust_worker_reads_typed_predictions_and_detections(
    kafka: KafkaSettings, unique: str, tmp_path: Path
) -> None:
    await ensure_topics(kafka, [PREDICTION_LOGGED, DRIFT_DETECTED])
    model = f"faust-{unique}"
    out = tmp_path / "seen.jsonl"
    log = tmp_path / "worker.log"
    with log.open("wb") as log_file:
        worker = subprocess.Popen(  # noqa: ASYNC220 - a real worker process, started once
            [
                sys.executable,
                str(WORKER),
                kafka.require_bootstrap(),
                f"mlbus-faust-{unique}",
                str(out),
                model,
                "worker",
                "-l",
                "info",
                "--without-web",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        prediction_ids, drift_id, trace_id = await publish(kafka, model)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while len(seen := read_lines(out)) < 4:
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"worker saw {seen}\n{log.read_text()[-3000:]}"
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # anything that should have been skipped would show now
        seen = read_lines(out)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    predictions = [line for line in seen if line["kind"] == "prediction"]
    drifts = [line for line in seen if line["kind"] == "drift"]
    assert sorted(p["event_id"] for p in predictions) == sorted(prediction_ids)  # 2 skipped
    assert [d["event_id"] for d in drifts] == [drift_id]
    for line in predictions:
        assert line["record"] == "PredictionLoggedRecord"
        assert line["outputs"] == {"probabilities": [0.9, 0.1]}
        assert line["cloud_event"]["type"] == PREDICTION_LOGGED
        assert line["cloud_event"]["id"] == line["event_id"]
        assert line["cloud_event"]["source"] == "/mlbus/inference"
        assert line["cloud_event"]["specversion"] == "1.0"
        assert line["trace_id"] == trace_id  # the producer's trace continues in the agent
    (drift,) = drifts
    assert drift["record"] == "DriftDetectedRecord"
    assert drift["result"] == "DriftTestResultRecord"
    assert (drift["feature"], drift["drifted"]) == ("amount", True)
    assert drift["cloud_event"]["type"] == DRIFT_DETECTED
    assert drift["trace_id"] == trace_id
    assert datetime.fromisoformat(drift["occurred_at"]).tzinfo is not None
    worker_log = log.read_text()
    assert worker_log.count(f"skipped {PREDICTION_LOGGED}") == 2, worker_log[-3000:]
    assert "Crashed" not in worker_log  # skipped records never reach (nor crash) the agent
