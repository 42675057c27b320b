"""Hostile ONNX files through the registry's real gRPC server: each refused, the champion stays."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from mlbus.api.registry.v1 import registry_pb2 as pb
from mlbus.api.registry.v1 import registry_pb2_grpc as pb_grpc
from mlbus.bus import ensure_topics
from mlbus.config import KafkaSettings
from mlbus.events import MODEL_PUBLISHED, MODEL_REGISTERED
from mlbus.registry import RegistryServer, RegistrySettings
from mlbus.soak._hostile_onnx import ESCAPING_PATH, good_model, hostile_models

pytestmark = pytest.mark.integration

MAX_TENSOR_MB = 1

# What each refusal must name, so an operator reading the status knows what to fix.
NAMED = {
    "external_data_escaping": ESCAPING_PATH,
    "external_data_beside": "weights.bin",
    "custom_domain": "com.example.evil",
    "contrib_domain": "com.microsoft",
    "large_initializer": "MLBUS_REGISTRY_MAX_TENSOR_MB",
    "huge_sparse_initializer": "sparse initializer 'huge'",
}


@pytest.fixture
async def stub(kafka: KafkaSettings, tmp_path: Path) -> AsyncIterator[pb_grpc.RegistryServiceStub]:
    await ensure_topics(kafka, [MODEL_PUBLISHED, MODEL_REGISTERED])
    settings = RegistrySettings(
        data_dir=tmp_path, kafka=kafka, grpc_port=0, spec=None, max_tensor_mb=MAX_TENSOR_MB
    )
    async with (
        RegistryServer(settings, host="127.0.0.1") as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield pb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]


async def test_each_hostile_file_is_refused_by_name_and_the_champion_keeps_serving(
    stub: pb_grpc.RegistryServiceStub, unique: str
) -> None:
    model = f"fraud-{unique}"
    good = good_model()
    first = await stub.Register(
        pb.RegisterRequest(model=model, content=good, alias="champion", reason="bootstrap"),
        timeout=30,
    )
    assert first.version.version == 1

    hostile = hostile_models(MAX_TENSOR_MB << 20)
    assert set(hostile) == set(NAMED)
    for kind, data in hostile.items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Register(
                pb.RegisterRequest(model=model, content=data, alias="champion", reason=kind),
                timeout=30,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, kind
        assert NAMED[kind] in (refused.value.details() or ""), (kind, refused.value.details())

    champion = await stub.ResolveAlias(
        pb.ResolveAliasRequest(model=model, alias="champion"), timeout=10
    )
    assert champion.version == 1
    assert champion.sha256 == hashlib.sha256(good).hexdigest()
    versions = await stub.ListModelVersions(pb.ListModelVersionsRequest(model=model), timeout=10)
    assert [v.version for v in versions.versions] == [1]  # nothing hostile was recorded

    second = await stub.Register(
        pb.RegisterRequest(model=model, content=good_model(2.0), alias="champion", reason="ok"),
        timeout=30,
    )
    assert second.version.version == 2
    assert second.promoted
