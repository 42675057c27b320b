"""Hostile bytes into the real gRPC servers: inference, registry, features, outcomes'
Labeling (`mlbus.soak._hostile`).

A seeded fuzz of every method (random, structured and mutated requests) while
slow clients hold streams unread and connections half-open; then a message
above each server's receive limit. Every call must end with a status from
`ALLOWED` before its deadline, and each server must still answer a good request.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest

from mlbus.api.features.v1 import features_pb2 as fpb
from mlbus.api.inference.v1 import predict_pb2 as ppb
from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as ipb
from mlbus.api.inference.v2 import grpc_predict_v2_pb2_grpc as ipb_grpc
from mlbus.api.registry.v1 import registry_pb2 as rpb
from mlbus.api.registry.v1 import registry_pb2_grpc as rpb_grpc
from mlbus.bus import ensure_topics
from mlbus.config import KafkaSettings, RedisSettings
from mlbus.events import MODEL_PUBLISHED, MODEL_REGISTERED
from mlbus.features import FeatureService
from mlbus.inference import InferenceServer
from mlbus.registry import RegistryServer, RegistrySettings
from mlbus.soak._hostile import (
    ALLOWED,
    FuzzResult,
    SlowClients,
    Target,
    answers,
    fuzz,
    oversize,
    server_methods,
)
from mlbus.soak._hostile_onnx import good_model, hostile_models
from tests.integration.test_features import VIEW, Harness, harness, spec  # noqa: F401
from tests.integration.test_inference import infer_request, output_of, serving
from tests.integration.test_inference_predict import pub, spec_for
from tests.integration.test_labeling_grpc import AUTH, Labeling, labeling  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LIMIT_MB = 1  # receive limits of (LIMIT_MB + 1) MB: an oversized message stays cheap to send


@pytest.fixture
async def registry(kafka: KafkaSettings, tmp_path: Path) -> AsyncIterator[RegistryServer]:
    await ensure_topics(kafka, [MODEL_PUBLISHED, MODEL_REGISTERED])
    settings = RegistrySettings(
        data_dir=tmp_path / "registry",
        kafka=kafka,
        grpc_port=0,
        spec=None,
        max_artifact_mb=LIMIT_MB,
        max_tensor_mb=LIMIT_MB,
    )
    async with RegistryServer(settings, host="127.0.0.1") as server:
        yield server


@pytest.fixture
async def inference(
    redis_url: str, tmp_path: Path, unique: str
) -> AsyncIterator[tuple[InferenceServer, str]]:
    model = f"m_{unique.replace('-', '_')}"
    redis = RedisSettings(url=redis_url, key_prefix=f"fuzz-{unique}")
    async with serving(
        model, None, redis=redis, spec_=spec_for(model), max_message_mb=LIMIT_MB
    ) as (server, _):
        assert await server.reloader.apply(pub(tmp_path, model, 3))
        yield server, model


def registry_target(port: int, model: str) -> Target:
    register = [
        rpb.RegisterRequest(model=model, content=data, alias="champion", reason="fuzz")
        for data in (good_model(), *hostile_models(LIMIT_MB << 20).values())
    ]
    seeds = {
        "Register": register,
        "GetModelVersion": [rpb.GetModelVersionRequest(model=model, version=1)],
        "ResolveAlias": [rpb.ResolveAliasRequest(model=model, alias="champion")],
        "ListModelVersions": [rpb.ListModelVersionsRequest(model=model, limit=5)],
        "SetAlias": [rpb.SetAliasRequest(model=model, alias="canary", version=1, reason="r")],
        "Rollback": [rpb.RollbackRequest(model=model, alias="champion", reason="r")],
        "GetLineage": [rpb.GetLineageRequest(model=model, version=1)],
        "ListAliasHistory": [rpb.ListAliasHistoryRequest(model=model)],
        "DownloadArtifact": [rpb.DownloadArtifactRequest(model=model, version=1)],
    }
    return Target(
        "registry",
        f"127.0.0.1:{port}",
        server_methods("registry", seeds),
        names=(model, "champion", "canary"),
    )


def inference_target(port: int, model: str) -> Target:
    x = np.zeros((2, 3), np.float32)
    seeds = {
        "ModelInfer": [infer_request(model, x), infer_request(model, x, raw=False)],
        "ModelMetadata": [ipb.ModelMetadataRequest(name=model)],
        "ModelReady": [ipb.ModelReadyRequest(name=model, version="3")],
        "Predict": [
            ppb.PredictRequest(
                entity_ids=["card-1", "card-2"],
                fields={"amount": ppb.FieldValue(double_value=3.0)},
            )
        ],
    }
    return Target(
        "inference",
        f"127.0.0.1:{port}",
        server_methods("inference", seeds),
        names=(model, "3", "x", "y", "card-1", "amount", "FP32"),
    )


async def test_every_method_survives_hostile_bytes_and_slow_clients(
    registry: RegistryServer, inference: tuple[InferenceServer, str], unique: str
) -> None:
    server, model = inference
    assert registry.port is not None
    assert server.port is not None
    name = f"fuzz-{unique}"
    # The fuzz may change `name` (a mutated Register can be a valid model, a Rollback a
    # valid rollback); `kept` is a model it never names, read back at the end.
    kept = f"kept-{unique}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{registry.port}") as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        for registered in (name, kept):
            await stub.Register(
                rpb.RegisterRequest(
                    model=registered, content=good_model(), alias="champion", reason="r"
                ),
                timeout=30,
            )
    targets = [registry_target(registry.port, name), inference_target(server.port, model)]

    async with SlowClients(targets, streams=3, sockets=5) as slow:
        result = await fuzz(targets, seed=25, duration_s=6.0, deadline_s=10.0)
    for target in targets:
        result.oversized[target.server] = await oversize(target, (LIMIT_MB + 2) << 20)
        result.answering[target.server] = await answers(target.address)
    result.slow = slow.summary

    report = result.as_json()
    assert result.unexpected_count == 0, report["unexpected_examples"]
    assert set(result.statuses()) <= ALLOWED
    assert {m.path for t in targets for m in t.methods} == set(result.calls)  # all reached
    assert result.total() > 200, report
    assert result.statuses()["OK"] > 0
    assert result.statuses()["INVALID_ARGUMENT"] > 0
    assert result.oversized == {"registry": "RESOURCE_EXHAUSTED", "inference": "RESOURCE_EXHAUSTED"}
    assert result.answering == {"registry": True, "inference": True}
    assert slow.summary["registry"]["streams"] == 4  # 3 health watches + DownloadArtifact

    # a good request still gets a good answer from each
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        infer = ipb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        x = np.ones((1, 3), np.float32)
        response = await infer.ModelInfer(infer_request(model, x), timeout=10)
        assert response.model_version == "3"
        assert output_of(response).shape == (1, 1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{registry.port}") as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        champion = await stub.ResolveAlias(
            rpb.ResolveAliasRequest(model=kept, alias="champion"), timeout=10
        )
        assert champion.sha256 == hashlib.sha256(good_model()).hexdigest()
        # Whatever the fuzz made of `name`, its champion is a version whose stored bytes
        # are the ones its sha256 names.
        fuzzed = await stub.ResolveAlias(
            rpb.ResolveAliasRequest(model=name, alias="champion"), timeout=10
        )
        chunks = stub.DownloadArtifact(
            rpb.DownloadArtifactRequest(model=name, version=fuzzed.version), timeout=10
        )
        data = b"".join([chunk.data async for chunk in chunks])
        assert hashlib.sha256(data).hexdigest() == fuzzed.sha256


async def test_predict_with_an_out_of_range_event_time_is_invalid_argument(
    inference: tuple[InferenceServer, str],
) -> None:
    # Found by the fuzz: protobuf's ToMilliseconds raised ValueError, answered INTERNAL.
    server, _ = inference
    request = ppb.PredictRequest(entity_ids=["card-1"])
    request.event_time.seconds, request.event_time.nanos = 1, -1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/mlbus.inference.v1.PredictionService/Predict")(
                request.SerializeToString(), timeout=10
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event_time is not a valid timestamp" in (caught.value.details() or "")


def assert_survived(result: FuzzResult, server: str) -> None:
    report = result.as_json()
    assert result.unexpected_count == 0, report["unexpected_examples"]
    assert result.total() > 50, report
    assert result.oversized == {server: "RESOURCE_EXHAUSTED"}
    assert result.answering == {server: True}


async def test_the_feature_service_survives_hostile_bytes(harness: Harness) -> None:  # noqa: F811
    results: list[FuzzResult] = []

    async def attack(service: FeatureService) -> None:
        if results or service.grpc_port is None:
            return
        seed = fpb.GetOnlineFeaturesRequest(entities=["card_000001"], features=[f"{VIEW}.amount"])
        target = Target(
            "features",
            f"127.0.0.1:{service.grpc_port}",
            server_methods("features", {"GetOnlineFeatures": [seed]}),
            names=("card_000001", f"{VIEW}.amount", f"{VIEW}.count_24h", VIEW),
        )
        result = await fuzz([target], seed=25, duration_s=4.0, deadline_s=10.0)
        result.oversized["features"] = await oversize(target, 5 << 20)  # limit: 4 MB
        result.answering["features"] = await answers(target.address)
        results.append(result)

    await harness.run_until(lambda _: bool(results), while_running=attack, timeout_s=90)
    assert_survived(results[0], "features")


async def test_labeling_survives_hostile_bytes_with_and_without_the_token(
    labeling: Labeling,  # noqa: F811
) -> None:
    address = f"127.0.0.1:{labeling.service.grpc_port}"
    methods = server_methods("outcomes")
    names = (labeling.spec.model.name, "tx-1", "card-1", "true", "false")
    targets = [
        Target("outcomes", address, methods, names=names),
        Target("outcomes-token", address, methods, names=names, metadata=AUTH),
    ]
    result = await fuzz(targets, seed=25, duration_s=4.0, deadline_s=10.0)
    result.oversized["outcomes"] = await oversize(targets[0], 5 << 20)  # limit: 4 MB
    result.answering["outcomes"] = await answers(address)
    assert_survived(result, "outcomes")
    assert result.statuses()["UNAUTHENTICATED"] > 0  # SubmitLabel without the token
