"""The registry over gRPC with the library client, publishing to the real embedded broker."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from aiokafka import AIOKafkaConsumer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from mlbus.bus import ensure_topics
from mlbus.config import KafkaSettings
from mlbus.errors import InvalidInput, NotFound, Unauthenticated
from mlbus.events import MODEL_PUBLISHED, MODEL_REGISTERED, ModelPublished
from mlbus.registry import RegistryServer, RegistrySettings
from mlbus.registry_client import RegistryClient
from tests.unit.test_registry_onnx import tiny_model

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"


@pytest.fixture
async def server(kafka: KafkaSettings, tmp_path: Path) -> AsyncIterator[RegistryServer]:
    await ensure_topics(kafka, [MODEL_PUBLISHED, MODEL_REGISTERED])
    settings = RegistrySettings(
        data_dir=tmp_path, kafka=kafka, grpc_port=0, token=SecretStr(TOKEN), spec=None
    )
    async with RegistryServer(settings, host="127.0.0.1") as running:
        yield running


@pytest.fixture
async def client(server: RegistryServer) -> AsyncIterator[RegistryClient]:
    async with RegistryClient(f"127.0.0.1:{server.port}", token=TOKEN) as c:
        yield c


@pytest.fixture
async def anonymous(server: RegistryServer) -> AsyncIterator[RegistryClient]:
    async with RegistryClient(f"127.0.0.1:{server.port}") as c:
        yield c


async def published_events(kafka: KafkaSettings, model: str, expected: int) -> list[ModelPublished]:
    """Every model.published event of `model` on the topic, read until `expected` arrived
    and the topic then stayed quiet for one more poll round."""
    reader = AIOKafkaConsumer(
        MODEL_PUBLISHED, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
    )
    await reader.start()
    events: list[ModelPublished] = []
    try:
        async with asyncio.timeout(30):
            quiet_rounds = 0
            while len(events) < expected or quiet_rounds < 2:
                batches = await reader.getmany(timeout_ms=300)
                fresh = [r for batch in batches.values() for r in batch if r.key == model.encode()]
                quiet_rounds = 0 if fresh else quiet_rounds + 1
                events.extend(ModelPublished.model_validate_json(r.value) for r in fresh)
    finally:
        await reader.stop()
    return events


async def test_alias_moves_reach_kafka_once_each_in_order(
    client: RegistryClient, kafka: KafkaSettings, unique: str
) -> None:
    model = f"churn-{unique}"
    for scale in (1.0, 2.0, 3.0):
        await client.register(model, tiny_model(scale), metrics={"auc": 0.7 + scale / 100})
    first = await client.set_alias(model, "champion", 1, reason="bootstrap", actor="ops")
    await client.set_alias(model, "shadow", 3, reason="watch v3", actor="ops")
    await client.set_alias(model, "champion", 2, reason="better", actor="ops")
    back = await client.rollback(model, "champion", reason="latency regression", actor="ops")
    assert back.version == 1

    events = await published_events(kafka, model, expected=4)
    assert [(e.alias, e.version, e.previous_version) for e in events] == [
        ("champion", 1, None),
        ("shadow", 3, None),
        ("champion", 2, 1),
        ("champion", 1, 2),
    ]
    history = await client.alias_history(model)
    assert [h.event_id for h in reversed(history)] == [e.event_id for e in events]
    assert events[0].event_id == first.event_id
    v1 = await client.resolve_alias(model, "champion")
    assert (events[-1].sha256, events[-1].signature) == (v1.sha256, v1.signature)


async def test_reads_for_inference_resolve_download_and_lineage(
    client: RegistryClient, unique: str
) -> None:
    model = f"fraud-{unique}"
    artifact = tiny_model(7.0)
    result = await client.register(
        model, artifact, run_id="run-1", feature_views={"card": 3}, alias="canary", reason="try"
    )
    assert result.promoted
    canary = await client.resolve_alias(model, "canary")
    assert canary.version == 1
    assert canary.aliases == ("canary",)
    assert await client.download_artifact(model, 1) == artifact
    assert canary.sha256 == hashlib.sha256(artifact).hexdigest()
    lineage = await client.lineage(model, 1)
    assert lineage.version.run_id == "run-1"
    assert [c.reason for c in lineage.alias_history] == ["try"]
    assert [m.model for m in await client.list_models() if m.model == model] == [model]
    with pytest.raises(NotFound, match="no alias 'champion'"):
        await client.resolve_alias(model, "champion")
    with pytest.raises(NotFound):
        await client.download_artifact(model, 2)


async def test_mutations_need_the_token_and_reads_do_not(
    client: RegistryClient, anonymous: RegistryClient, unique: str
) -> None:
    model = f"guarded-{unique}"
    await client.register(model, tiny_model())
    with pytest.raises(Unauthenticated, match="MLBUS_REGISTRY_TOKEN"):
        await anonymous.register(model, tiny_model(2.0))
    with pytest.raises(Unauthenticated):
        await anonymous.set_alias(model, "champion", 1, reason="x")
    with pytest.raises(Unauthenticated):
        await anonymous.rollback(model, "champion", reason="x")
    assert [v.version for v in await anonymous.list_versions(model)] == [1]  # reads stay open
    assert await anonymous.download_artifact(model, 1) == tiny_model()


async def test_refusals_come_back_as_invalid_input(client: RegistryClient, unique: str) -> None:
    model = f"refused-{unique}"
    with pytest.raises(InvalidInput, match="not an ONNX model"):
        await client.register(model, b"definitely not onnx")
    with pytest.raises(InvalidInput, match="sha256 mismatch"):
        await client.register(model, tiny_model(), expected_sha256="f" * 64)
    with pytest.raises(InvalidInput, match="inside the store"):
        await client.register(model, location="../../etc/passwd")
    assert model not in [m.model for m in await client.list_models()]


async def test_health_is_serving(server: RegistryServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mlbus.registry.v1.RegistryService"):
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
