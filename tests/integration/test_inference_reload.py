"""Hot reload through the embedded broker: swaps under load, refusals of bad versions.

Publications are real `ModelPublished` events sent with `Publisher`; the
server's broadcast consumer picks them up and fetches `file://` artifacts.
Every version answers `x @ w + version`, so each response proves which version
computed it, and that it is the version the response names.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest

from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb
from mlbus.api.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from mlbus.bus import Publisher
from mlbus.config import KafkaSettings
from mlbus.events import ModelSignature, TensorSpec
from mlbus.inference import VERSION_PARAMETER, InferenceServer, Publication
from mlbus.soak._hostile_onnx import ESCAPING_PATH, custom_domain_model, external_data_model
from tests.integration.test_inference import (
    infer_request,
    output_of,
    publication,
    published_event,
    serving,
    wait_for,
)
from tests.unit.test_inference_model import FEATURES, linear_model, sha, version_of

pytestmark = pytest.mark.integration

SWAPS = 21
CLIENTS = 4


def serves(server: InferenceServer, model: str, version: int) -> bool:
    current = server.repository.current(model)
    return current is not None and current.version == version


async def first_version(server: InferenceServer, publisher: Publisher, pub: Publication) -> None:
    """Publish v1 once `following` is set and wait until it is served: from then on the
    broadcast consumer's start offset is known, so no publication can fall before it."""
    await asyncio.wait_for(server.following.wait(), 60)
    await publisher.publish(published_event(pub), key=pub.model)
    await wait_for(lambda: serves(server, pub.model, pub.version))


async def test_swaps_under_concurrent_load_fail_no_request(
    kafka: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    model = f"m-{unique}"
    answered: list[int] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def client(stub: pb_grpc.GRPCInferenceServiceStub, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            x = rng.normal(size=(1 + seed % 3, FEATURES)).astype(np.float32)
            try:
                response = await stub.ModelInfer(
                    infer_request(model, x, raw=seed % 2 == 0), timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")
                continue
            version = int(response.model_version)
            if response.parameters[VERSION_PARAMETER].int64_param != version:
                failures.append(f"parameter disagrees with model_version {version}")
            computed = set(version_of(x, output_of(response)).tolist())
            if computed != {version}:
                failures.append(f"response names v{version}, computed by {computed}")
            answered.append(version)

    async with (
        serving(model, kafka, prediction_log=False) as (server, stub),
        Publisher(kafka, source="tests") as publisher,
    ):
        published = {1}
        await first_version(server, publisher, publication(tmp_path, model, 1))
        clients = [asyncio.create_task(client(stub, seed)) for seed in range(CLIENTS)]
        try:
            for version in range(2, 2 + SWAPS):
                published.add(version)
                event = published_event(publication(tmp_path, model, version), version - 1)
                await publisher.publish(event, key=model)
                await wait_for(lambda v=version: serves(server, model, v))  # type: ignore[misc]
                seen = len(answered)
                await wait_for(lambda n=seen: len(answered) > n + CLIENTS)  # type: ignore[misc]
        finally:
            stop.set()
            await asyncio.gather(*clients)
        assert server.reloader.stats.loaded == 1 + SWAPS
        assert server.reloader.stats.refused_total == 0

    assert failures == []
    assert set(answered) <= published
    assert len(set(answered)) >= SWAPS  # clients really were answered across the swaps


SIGNATURE_10 = ModelSignature(
    inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 10)),),
    outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 1)),),
)


async def test_bad_versions_are_refused_and_the_served_one_keeps_answering(
    kafka: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    model = f"m-{unique}"
    corrupt = linear_model(2)[:-30] + b"\x07not onnx any more"
    sha_mismatch = publication(tmp_path, model, 3)
    narrow = publication(tmp_path, model, 4, linear_model(4, width=10))
    bad = [
        ("parse", publication(tmp_path, model, 2, corrupt)),
        (
            "sha256",
            Publication(model, 3, sha_mismatch.artifact_uri, sha(b"other"), None, "champion"),
        ),
        # Straight to inference, past the registry: the same policy refuses it (ADR 0027).
        ("policy", publication(tmp_path, model, 5, external_data_model(ESCAPING_PATH))),
        ("policy", publication(tmp_path, model, 6, custom_domain_model())),
        (
            "signature",
            Publication(model, 4, narrow.artifact_uri, narrow.sha256, SIGNATURE_10, "champion"),
        ),
    ]
    async with (
        serving(model, kafka, prediction_log=False) as (server, stub),
        Publisher(kafka, source="tests") as publisher,
    ):
        await first_version(server, publisher, publication(tmp_path, model, 1))
        stats = server.reloader.stats
        x = np.random.default_rng(3).normal(size=(2, FEATURES)).astype(np.float32)
        for stage, pub in bad:
            before = stats.refused[stage]
            await publisher.publish(published_event(pub, 1), key=model)
            await wait_for(lambda s=stage, b=before: stats.refused[s] == b + 1)  # type: ignore[misc]
            assert stats.last_refusal is not None
            assert f"refused at {stage}" in stats.last_refusal
            response = await stub.ModelInfer(infer_request(model, x))
            assert response.model_version == "1"
            assert set(version_of(x, output_of(response)).tolist()) == {1}
            ready = await stub.ModelReady(pb.ModelReadyRequest(name=model, version="1"))
            assert ready.ready
        assert stats.loaded == 1
        assert "served v1" in (stats.last_refusal or "")
