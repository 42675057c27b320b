"""The labeling API (`mlbus.labeling.v1.Labeling`) of the outcomes service, over real gRPC,
on the real embedded broker and a real Redis, with ingestion running.

A prediction near the threshold is queued; ListRequests shows it; SubmitLabel
answers it (guarded by the registry's token); the label is on the labels source
topic, ingestion validates it, and the queue counts it answered. Requests that
break the contract are refused with a status and a message naming the field.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpc_health.v1.health_pb2_grpc import HealthStub
from pydantic import SecretStr

from mlbus.api.labeling.v1 import labeling_pb2 as pb
from mlbus.api.labeling.v1 import labeling_pb2_grpc as pb_grpc
from mlbus.bus import encode_event, ensure_topics, event_headers
from mlbus.config import KafkaSettings, RedisSettings
from mlbus.events import INGEST_VALIDATED, LABELING_REQUESTED, PREDICTION_LOGGED, PredictionLogged
from mlbus.ingestion import IngestionService, IngestionSettings
from mlbus.outcomes import OutcomesService, OutcomesSettings
from mlbus.spec import ProjectSpec, load_spec
from tests.integration.test_outcomes import wait_for, write_spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOKEN = "labeling-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@dataclass
class Labeling:
    stub: pb_grpc.LabelingStub
    channel: grpc.aio.Channel
    spec: ProjectSpec
    kafka: KafkaSettings
    service: OutcomesService


@pytest.fixture
async def labeling(
    kafka: KafkaSettings, redis_url: str, tmp_path: Path, unique: str
) -> AsyncIterator[Labeling]:
    path = write_spec(tmp_path / "mlbus.yaml", f"labeling_{unique}")
    doc = json.loads(path.read_text())
    doc["outcomes"]["labeling"] = {"band": 0.1, "sample_rate": 0.0, "max_open": 10}
    path.write_text(json.dumps(doc))
    spec = load_spec(path)
    await ensure_topics(
        kafka,
        [
            spec.sources["tx"].topic,
            spec.sources["labels"].topic,
            PREDICTION_LOGGED,
            INGEST_VALIDATED,
            LABELING_REQUESTED,
        ],
    )
    redis = RedisSettings(url=redis_url, key_prefix=f"lab-grpc-{unique}")
    outcomes = OutcomesService(
        OutcomesSettings(
            data_dir=tmp_path / "outcomes",
            kafka=kafka,
            redis=redis,
            spec=path,
            registry_address="127.0.0.1:1",  # no verdict here: the registry is never called
            registry_token=SecretStr(TOKEN),
            group_id=f"outcomes-{unique}",
            grpc_host="127.0.0.1",
            grpc_port=0,
            evaluate_interval_s=0.5,
        ),
        spec,
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
    tasks = [asyncio.create_task(outcomes.run()), asyncio.create_task(ingestion.run())]
    try:
        await outcomes.wait_started(60)
        await ingestion.wait_started(60)
        assert outcomes.grpc_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{outcomes.grpc_port}") as channel:
            yield Labeling(pb_grpc.LabelingStub(channel), channel, spec, kafka, outcomes)
    finally:
        outcomes.stop()
        ingestion.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def scored(lab: Labeling, tx_id: str, card: str, probability: float) -> None:
    """The champion's logged prediction of one event."""
    event = PredictionLogged(
        occurred_at=datetime.now(UTC),
        model=lab.spec.model.name,
        version=1,
        alias="champion",
        entity_id=card,
        features={"v.amount": 12.5},
        outputs={"probabilities": [1.0 - probability, probability]},
        latency_ms=1.0,
        scored_event_id=tx_id,
    )
    producer = AIOKafkaProducer(**lab.kafka.client_kwargs())
    await producer.start()
    try:
        headers = [(k, v) for k, v in event_headers(event, "/test") if k != "traceparent"]
        await producer.send_and_wait(
            event.topic, encode_event(event), key=card.encode(), headers=headers
        )
    finally:
        await producer.stop()


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def on_topic(kafka: KafkaSettings, topic: str, tx_id: str) -> list[Any]:
    """The records on `topic` that label `tx_id`."""
    reader = AIOKafkaConsumer(
        topic, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
    )
    await reader.start()
    found = []
    try:
        batches = await reader.getmany(timeout_ms=2000)
        while batches:
            for records in batches.values():
                found += [r for r in records if json.loads(r.value or b"{}").get("tx_id") == tx_id]
            batches = await reader.getmany(timeout_ms=500)
    finally:
        await reader.stop()
    return found


async def test_a_label_submitted_over_grpc_reaches_the_topic_and_answers_its_request(
    labeling: Labeling, unique: str
) -> None:
    lab = labeling
    health = await HealthStub(lab.channel).Check(
        HealthCheckRequest(service="mlbus.labeling.v1.Labeling"), timeout=10
    )
    assert health.status == HealthCheckResponse.SERVING
    tx_id = f"tx-{unique}"
    await scored(lab, tx_id, "card_7", 0.53)  # near the threshold: worth a label

    async def queued() -> pb.ListRequestsResponse | None:
        found = await lab.stub.ListRequests(pb.ListRequestsRequest(limit=5), timeout=10)
        return found if found.counts.requested == 1 else None

    listed = await wait_for(queued, timeout_s=60)
    assert listed.model == lab.spec.model.name
    assert (listed.counts.open, listed.counts.answered) == (1, 0)
    assert not listed.counts.HasField("answer_rate")  # nothing answered or expired yet
    (request,) = listed.requests
    assert request.scored_event_id == tx_id
    assert request.entity_id == "card_7"
    assert request.reason == "band"
    assert request.scores["champion"] == pytest.approx(0.53)
    assert request.features["v.amount"].double_value == 12.5

    answer = pb.SubmitLabelRequest(scored_event_id=tx_id, value="true")
    # The registry's token guards the call that changes what the next model learns.
    no_token = await refused(lab.stub.SubmitLabel(answer, timeout=10))
    assert no_token.code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = await refused(
        lab.stub.SubmitLabel(answer, timeout=10, metadata=(("authorization", "Bearer nope"),))
    )
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    # Reading the queue needs no token.
    await lab.stub.ListRequests(pb.ListRequestsRequest(), timeout=10)

    sent = await lab.stub.SubmitLabel(answer, timeout=30, metadata=AUTH)
    labels_topic = lab.spec.sources["labels"].topic
    assert sent.topic == labels_topic
    assert sent.entity_id == "card_7"  # from the queued request
    written = json.loads(sent.label_json)
    assert (written["tx_id"], written["is_fraud"], written["card_id"]) == (tx_id, True, "card_7")
    (record,) = await on_topic(lab.kafka, labels_topic, tx_id)
    assert (record.partition, record.offset) == (sent.partition, sent.offset)
    assert record.key == b"card_7"
    assert json.loads(record.value) == written

    # Ingestion validates it and the outcomes service joins it: the request is answered.
    async def answered() -> pb.ListRequestsResponse | None:
        found = await lab.stub.ListRequests(pb.ListRequestsRequest(), timeout=10)
        return found if found.counts.answered == 1 else None

    after = await wait_for(answered, timeout_s=90)
    assert (after.counts.open, after.counts.requested) == (0, 1)
    assert after.counts.answer_rate == 1.0
    assert list(after.requests) == []


async def test_requests_that_break_the_contract_are_refused_naming_the_field(
    labeling: Labeling, unique: str
) -> None:
    lab = labeling
    cases: list[tuple[pb.SubmitLabelRequest, grpc.StatusCode, str]] = [
        (
            pb.SubmitLabelRequest(scored_event_id="", value="true", entity_id="card_1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "scored_event_id",
        ),
        (
            pb.SubmitLabelRequest(scored_event_id="tx-1", value="maybe", entity_id="card_1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "value: expected true or false",
        ),
        (
            pb.SubmitLabelRequest(scored_event_id="tx-1", value="", entity_id="card_1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "value",
        ),
        (
            pb.SubmitLabelRequest(scored_event_id="tx-1", value="true", entity_id=""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "entity_id",
        ),
        (  # a field that would replace the answer's own value
            pb.SubmitLabelRequest(
                scored_event_id="tx-1",
                value="true",
                entity_id="card_1",
                fields={"is_fraud": pb.FieldValue(bool_value=False)},
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "is_fraud",
        ),
        (  # the labels source's contract has no such field
            pb.SubmitLabelRequest(
                scored_event_id="tx-1",
                value="true",
                entity_id="card_1",
                fields={"comment": pb.FieldValue(string_value="looked odd")},
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "comment",
        ),
        (
            pb.SubmitLabelRequest(
                scored_event_id="tx-1",
                value="true",
                entity_id="card_1",
                fields={"note": pb.FieldValue()},
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "note",
        ),
        (  # no request waits for this event, and no entity is named
            pb.SubmitLabelRequest(scored_event_id=f"never-asked-{unique}", value="true"),
            grpc.StatusCode.NOT_FOUND,
            "entity_id",
        ),
    ]
    for request, code, named in cases:
        error = await refused(lab.stub.SubmitLabel(request, timeout=10, metadata=AUTH))
        assert error.code() == code, (request, error.details())
        assert named in (error.details() or ""), (request, error.details())
    too_many = await refused(lab.stub.ListRequests(pb.ListRequestsRequest(limit=5000), timeout=10))
    assert too_many.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in (too_many.details() or "")
    # Nothing refused reached the labels topic.
    assert await on_topic(lab.kafka, lab.spec.sources["labels"].topic, "tx-1") == []
    # The service still answers after all of them; a label with its entity needs no request.
    ok = await lab.stub.SubmitLabel(
        pb.SubmitLabelRequest(scored_event_id=f"tx-{unique}", value="no", entity_id="card_2"),
        timeout=30,
        metadata=AUTH,
    )
    assert json.loads(ok.label_json)["is_fraud"] is False
