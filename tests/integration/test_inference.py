"""The inference service in-process on a real port: the six OIP RPCs, errors, health,
reflection, and the prediction log on the embedded broker (and without one).

Helpers here (`serving`, `publish_version`, `infer`) are shared by the other
inference integration tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb
from mlbus.api.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from mlbus.bus import Consumer, Publisher, Received
from mlbus.config import KafkaSettings
from mlbus.events import Event, ModelPublished, ModelSignature, PredictionLogged, TensorSpec
from mlbus.inference import VERSION_PARAMETER, InferenceServer, InferenceSettings, Publication
from tests.unit.test_inference_model import FEATURES, linear_model, sha, version_of

pytestmark = pytest.mark.integration

SIGNATURE = ModelSignature(
    inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, FEATURES)),),
    outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 1)),),
)


def write_artifact(folder: Path, version: int, data: bytes | None = None) -> tuple[str, str]:
    """(file:// URI, sha256) of a version's artifact written under `folder`."""
    data = linear_model(version) if data is None else data
    path = folder / f"v{version}-{sha(data)[:12]}.onnx"
    path.write_bytes(data)
    return path.as_uri(), sha(data)


def publication(
    folder: Path,
    model: str,
    version: int,
    data: bytes | None = None,
    signature: ModelSignature | None = SIGNATURE,
) -> Publication:
    uri, digest = write_artifact(folder, version, data)
    return Publication(model, version, uri, digest, signature, "champion")


def published_event(pub: Publication, previous: int | None = None) -> ModelPublished:
    return ModelPublished(
        model=pub.model,
        alias=pub.alias,
        version=pub.version,
        previous_version=previous,
        artifact_uri=pub.artifact_uri,
        sha256=pub.sha256,
        signature=pub.signature or SIGNATURE,
        reason="test",
        actor="tests",
    )


@contextlib.asynccontextmanager
async def serving(
    model: str, kafka: KafkaSettings | None, **overrides: object
) -> AsyncIterator[tuple[InferenceServer, pb_grpc.GRPCInferenceServiceStub]]:
    fields: dict[str, object] = {
        "grpc_port": 0,
        "models": (model,),
        "shutdown_grace_s": 1.0,
        "reload_retry_s": 0.5,
    }
    if kafka is not None:
        fields["kafka"] = kafka
    spec = overrides.pop("spec_", None)  # a ProjectSpec object, not MLBUS_SPEC
    settings = InferenceSettings(**(fields | overrides))  # type: ignore[arg-type]
    async with (
        InferenceServer(settings, host="127.0.0.1", spec=spec) as server,  # type: ignore[arg-type]
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield server, pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]


def infer_request(
    model: str, x: np.ndarray, *, raw: bool = True, version: str = ""
) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)
    request = pb.ModelInferRequest(model_name=model, model_version=version, inputs=[tensor])
    if raw:
        request.raw_input_contents.append(x.astype("<f4").tobytes())
    else:
        tensor = request.inputs[0]
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    return request


def output_of(response: pb.ModelInferResponse) -> np.ndarray:
    tensor = response.outputs[0]
    if response.raw_output_contents:
        values = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    else:
        values = np.array(tensor.contents.fp32_contents, dtype=np.float32)
    return values.reshape(list(tensor.shape))


async def wait_for(condition: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# ── tests ────────────────────────────────────────────────────────────────────


async def test_the_six_rpcs_answer_for_a_served_model(tmp_path: Path, unique: str) -> None:
    model = f"m-{unique}"
    async with serving(model, None) as (server, stub):
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
        assert await server.reloader.apply(publication(tmp_path, model, 4))
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
        assert (await stub.ModelReady(pb.ModelReadyRequest(name=model))).ready
        assert (await stub.ModelReady(pb.ModelReadyRequest(name=model, version="4"))).ready
        assert not (await stub.ModelReady(pb.ModelReadyRequest(name=model, version="3"))).ready
        metadata = await stub.ServerMetadata(pb.ServerMetadataRequest())
        assert metadata.name == "mlbus"

        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
        assert (meta.name, list(meta.versions), meta.platform) == (model, ["4"], "onnxruntime_onnx")
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("x", "FP32", [-1, FEATURES])
        ]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
            ("y", "FP32", [-1, 1])
        ]

        x = np.random.default_rng(1).normal(size=(7, FEATURES)).astype(np.float32)
        for raw in (True, False):
            response = await stub.ModelInfer(infer_request(model, x, raw=raw, version="4"))
            assert response.model_version == "4"
            assert response.parameters[VERSION_PARAMETER].int64_param == 4
            assert bool(response.raw_output_contents) == raw
            y = output_of(response)
            assert y.shape == (7, 1)
            assert list(version_of(x, y)) == [4] * 7


async def test_errors_carry_the_right_status_and_say_what_was_wrong(
    tmp_path: Path, unique: str
) -> None:
    model = f"m-{unique}"
    async with serving(model, None) as (server, stub):
        await server.reloader.apply(publication(tmp_path, model, 1))
        x = np.zeros((1, FEATURES), dtype=np.float32)
        cases = [
            (infer_request("nope", x), grpc.StatusCode.NOT_FOUND, "model 'nope' is not served"),
            (infer_request(model, x, version="9"), grpc.StatusCode.NOT_FOUND, "version '9'"),
            (
                infer_request(model, np.zeros((1, 3), dtype=np.float32)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "input 'x': expected FP32 with shape [-1, 20], got FP32 with shape [1, 3]",
            ),
            (
                pb.ModelInferRequest(model_name=model),
                grpc.StatusCode.INVALID_ARGUMENT,
                "missing input(s) 'x'",
            ),
        ]
        for request, code, words in cases:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ModelInfer(request)
            assert failed.value.code() == code
            assert words in (failed.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_and_reflection(tmp_path: Path, unique: str) -> None:
    model = f"m-{unique}"
    async with (
        serving(model, None) as (server, _),
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        process = health_pb2.HealthCheckRequest(service="")
        assert (await health.Check(process)).status == health_pb2.HealthCheckResponse.SERVING
        await server.reloader.apply(publication(tmp_path, model, 1))
        assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.SERVING

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = [a async for a in reflect.ServerReflectionInfo(iter([request]))]
        names = {s.name for s in answers[0].list_services_response.service}
        assert "inference.GRPCInferenceService" in names
        assert "grpc.health.v1.Health" in names


async def test_the_token_guards_inference_but_not_health(tmp_path: Path, unique: str) -> None:
    model = f"m-{unique}"
    async with serving(model, None, token="s3cret") as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.ServerLive(pb.ServerLiveRequest())
        assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = await stub.ServerLive(
            pb.ServerLiveRequest(), metadata=(("authorization", "Bearer s3cret"),)
        )
        assert answer.live


async def test_each_prediction_row_is_logged(
    kafka: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    model = f"m-{unique}"
    logged: list[PredictionLogged] = []

    async def collect(received: Received[Event]) -> None:
        if isinstance(received.payload, PredictionLogged) and received.payload.model == model:
            logged.append(received.payload)

    async with (
        serving(model, kafka) as (server, stub),
        Publisher(kafka, source="tests") as publisher,
    ):
        await server.reloader.apply(publication(tmp_path, model, 2))
        consumer = Consumer.of_events(
            kafka,
            types=[PredictionLogged],
            group_id=f"predlog-{unique}",
            handler=collect,
            publisher=publisher,
        )
        consuming = asyncio.create_task(consumer.run())
        try:
            await consumer.wait_assigned()
            x = np.arange(3 * FEATURES, dtype=np.float32).reshape(3, FEATURES)
            await stub.ModelInfer(infer_request(model, x))
            await wait_for(lambda: len(logged) >= 3, timeout_s=30)
        finally:
            consumer.stop()
            await consuming
    assert len(logged) == 3
    first = min(logged, key=lambda e: e.features["x[0]"] or 0)
    assert first.version == 2
    assert first.alias == "champion"
    assert first.features["x[1]"] == 1.0
    assert first.outputs["y"][0] == pytest.approx(
        float(x[0] @ np.linspace(-1, 1, FEATURES)) + 2, rel=1e-5
    )
    assert server.prediction_log is not None
    assert server.prediction_log.dropped == 0


async def test_without_a_broker_responses_are_unaffected_and_drops_counted(
    tmp_path: Path, unique: str
) -> None:
    model = f"m-{unique}"
    down = KafkaSettings(bootstrap_servers="127.0.0.1:1", request_timeout_s=1.0)
    async with serving(model, down) as (server, stub):
        await server.reloader.apply(publication(tmp_path, model, 1))
        x = np.ones((1, FEATURES), dtype=np.float32)
        for _ in range(20):
            response = await stub.ModelInfer(infer_request(model, x))
            assert response.model_version == "1"
        log = server.prediction_log
        assert log is not None
        await wait_for(lambda: log.dropped == 20, timeout_s=30)
        assert log.sent == 0
