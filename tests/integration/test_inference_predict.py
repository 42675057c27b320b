"""Predict by entity against a real Redis, and the canary split and shadow over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import grpc.aio
import numpy as np
import pyarrow as pa
import pytest
import yaml

from mlbus.api.inference.v1 import predict_pb2 as ppb
from mlbus.api.inference.v1 import predict_pb2_grpc as ppb_grpc
from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb
from mlbus.bus import Consumer, Publisher, Received
from mlbus.config import KafkaSettings, RedisSettings
from mlbus.events import Event, PredictionLogged, Scalar
from mlbus.example import fraud_spec_path
from mlbus.featurestore import OnlineStore, empty_value
from mlbus.inference import ENTITY_PARAMETER, Publication, goes_to_canary
from mlbus.spec import ProjectSpec, parse_spec
from mlbus.training import dataset_from_table, onnx_scores, train
from tests.integration.test_inference import output_of, serving, wait_for, write_artifact
from tests.unit.test_inference_model import linear_model
from tests.unit.test_inference_predict import NUMERIC, numeric_spec

pytestmark = pytest.mark.integration
W = np.linspace(-1.0, 1.0, 3)  # linear_model(v, width=3): y = x @ W + v


def pub(folder: Path, model: str, version: int, alias: str = "champion") -> Publication:
    uri, digest = write_artifact(folder, version, linear_model(version, width=3))
    return Publication(model, version, uri, digest, None, alias)


async def write(
    url: str, prefix: str, rows: dict[str, tuple[float, float, float]], age_s: float
) -> None:
    """Online hashes as the feature service writes them: the raw field, and each window
    as its step function (constant here: nothing leaves the window while the test runs)."""
    async with OnlineStore.from_url(url, key_prefix=prefix) as store:
        pipe = store.client.pipeline(transaction=False)
        ts = int((time.time() - age_s) * 1000)
        for entity, (count, total, amount) in rows.items():
            steps = {"count_10m": [[None, count]], "amount_sum_1h": [[None, total]]}
            store.stage_write(
                pipe,
                "card_activity",
                1,
                entity,
                {"amount": amount},
                ts,
                "t",
                600,
                steps=steps,
                counted=3,
            )
        await pipe.execute()


def spec_for(model: str, **serving_: object) -> ProjectSpec:
    spec = numeric_spec(**serving_)
    data = spec.model_dump()
    data["model"]["name"] = model
    data["serving"]["model"] = model
    return ProjectSpec.model_validate(data)


async def predict(port: int, request: ppb.PredictRequest) -> ppb.PredictResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ppb_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
        return await stub.Predict(request, timeout=10)  # type: ignore[no-any-return]


def answers(response: ppb.PredictResponse) -> list[tuple[str, str, str, list[float]]]:
    """What a response decided, without the feature ages (they grow between calls)."""
    return [
        (p.entity_id, p.alias, p.model_version, list(p.outputs["y"].values))
        for p in response.predictions
    ]


async def failure(port: int, request: ppb.PredictRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await predict(port, request)
    return failed.value


async def test_predict_reads_online_features_and_applies_defaults(
    redis_url: str, tmp_path: Path, unique: str
) -> None:
    model, prefix = f"m_{unique.replace('-', '_')}", f"pred-{unique}"
    await write(redis_url, prefix, {"fresh": (1.0, 2.0, 5.0)}, age_s=10)
    await write(redis_url, prefix, {"old": (9.0, 9.0, 9.0)}, age_s=7200)
    redis = RedisSettings(url=redis_url, key_prefix=prefix)
    spec = spec_for(model, defaults={"card_activity.amount": 0.5})
    async with serving(model, None, redis=redis, spec_=spec) as (server, _):
        await server.reloader.apply(pub(tmp_path, model, 4))
        assert server.port is not None
        request = ppb.PredictRequest(entity_ids=["fresh", "unknown", "old"])
        answer = await predict(server.port, request)
        assert (answer.model_name, answer.model_version) == (model, "4")
        fresh, unknown, old = answer.predictions
        assert fresh.entity_id == "fresh"
        assert list(fresh.outputs["y"].values) == pytest.approx([float(W @ [1, 2, 5]) + 4])
        assert set(fresh.feature_ages_s) == set(NUMERIC)
        assert all(5 < age < 60 for age in fresh.feature_ages_s.values())
        assert list(fresh.defaulted_features) == []
        assert (fresh.model_version, fresh.alias) == ("4", "champion")
        # the raw field has no value / is older than max_feature_age_s (3600): defaulted;
        # the windows are never missing: empty for an unknown entity, as stored for an old one
        for p in (unknown, old):
            assert list(p.defaulted_features) == ["card_activity.amount"]
        assert dict(unknown.feature_ages_s) == {}
        assert list(unknown.outputs["y"].values) == pytest.approx([float(W @ [0, 0, 0.5]) + 4])
        assert set(old.feature_ages_s) == set(NUMERIC[:2])
        assert list(old.outputs["y"].values) == pytest.approx([float(W @ [9, 9, 0.5]) + 4])

        # a request-time field replaces the online value
        fields = {"amount": ppb.FieldValue(double_value=100.0)}
        answer = await predict(server.port, ppb.PredictRequest(entity_ids=["fresh"], fields=fields))
        assert list(answer.predictions[0].outputs["y"].values) == pytest.approx(
            [float(W @ [1, 2, 100]) + 4]
        )
        assert "card_activity.amount" not in answer.predictions[0].feature_ages_s

        bad = await failure(
            server.port, ppb.PredictRequest(entity_ids=["x"], fields={"nope": fields["amount"]})
        )
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'nope'" in (bad.details() or "")


async def test_fail_policy_and_redis_down_and_no_spec(
    redis_url: str, tmp_path: Path, unique: str
) -> None:
    model, prefix = f"m_{unique.replace('-', '_')}", f"pred-{unique}"
    await write(redis_url, prefix, {"fresh": (1.0, 2.0, 5.0)}, age_s=1)
    spec = spec_for(model, missing_features="fail", defaults={})
    redis = RedisSettings(url=redis_url, key_prefix=prefix)
    async with serving(model, None, redis=redis, spec_=spec) as (server, _):
        await server.reloader.apply(pub(tmp_path, model, 1))
        assert server.port is not None
        ok = await predict(server.port, ppb.PredictRequest(entity_ids=["fresh"]))
        assert ok.predictions[0].outputs["y"].values
        failed = await failure(server.port, ppb.PredictRequest(entity_ids=["fresh", "ghost"]))
        assert failed.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'ghost': card_activity.amount (no online value)" in (failed.details() or "")

    down = RedisSettings(url="redis://127.0.0.1:1/0", socket_timeout_s=0.5)
    async with serving(model, None, redis=down, spec_=spec) as (server, _):
        await server.reloader.apply(pub(tmp_path, model, 1))
        assert server.port is not None
        failed = await failure(server.port, ppb.PredictRequest(entity_ids=["fresh"]))
        assert failed.code() == grpc.StatusCode.UNAVAILABLE
        assert "online store" in (failed.details() or "")

    async with serving(model, None) as (server, stub):
        await server.reloader.apply(pub(tmp_path, model, 1))
        assert server.port is not None
        failed = await failure(server.port, ppb.PredictRequest(entity_ids=["fresh"]))
        assert failed.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no spec" in (failed.details() or "")
        x = np.ones((1, 3), dtype=np.float32)  # the OIP still serves
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
        request.raw_input_contents.append(x.tobytes())
        assert (await stub.ModelInfer(request)).model_version == "1"


async def test_canary_is_sticky_per_entity_and_shadow_never_changes_a_response(
    redis_url: str, tmp_path: Path, unique: str
) -> None:
    model, prefix = f"m_{unique.replace('-', '_')}", f"pred-{unique}"
    ids = [f"card_{i:04d}" for i in range(300)]
    await write(redis_url, prefix, dict.fromkeys(ids, (1.0, 1.0, 1.0)), age_s=1)
    # Reading 300 entities takes ~20-30 ms of CPU here, 60-100+ ms when the 2 cores
    # are shared: the default 100 ms budget made this test fail under load
    # (UNAVAILABLE), which says nothing about the canary split it checks. The default
    # budget is tested on its own, within it and beyond it, further down.
    spec = spec_for(model, canary_weight=0.3, shadow=True, timeout_ms=2000)
    redis = RedisSettings(url=redis_url, key_prefix=prefix)
    async with serving(model, None, redis=redis, spec_=spec) as (server, stub):
        assert server.port is not None
        await server.reloader.apply(pub(tmp_path, model, 1))
        before = await predict(server.port, ppb.PredictRequest(entity_ids=ids))
        assert {p.alias for p in before.predictions} == {"champion"}
        assert await server.reloader.apply(pub(tmp_path, model, 2, "canary"))
        split = await predict(server.port, ppb.PredictRequest(entity_ids=ids))
        again = await predict(server.port, ppb.PredictRequest(entity_ids=ids))
        assert answers(split) == answers(again)  # sticky
        for p in split.predictions:
            canary = goes_to_canary(model, p.entity_id, 0.3)
            assert (p.alias, p.model_version) == (("canary", "2") if canary else ("champion", "1"))
            assert p.outputs["y"].values[0] == pytest.approx(float(W.sum()) + (2 if canary else 1))
        assert 0 < sum(p.alias == "canary" for p in split.predictions) < len(ids)

        # ModelInfer with an entity id follows the same split
        for entity in ids[:40]:
            request = pb.ModelInferRequest(model_name=model)
            request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
            request.raw_input_contents.append(np.ones((1, 3), np.float32).tobytes())
            request.parameters[ENTITY_PARAMETER].string_param = entity
            answer = await stub.ModelInfer(request)
            expected = "2" if goes_to_canary(model, entity, 0.3) else "1"
            assert answer.model_version == expected
            assert output_of(answer)[0, 0] == pytest.approx(float(W.sum()) + int(expected))

        assert await server.reloader.apply(pub(tmp_path, model, 3, "shadow"))
        assert server.shadow is not None
        with_shadow = await predict(server.port, ppb.PredictRequest(entity_ids=ids))
        assert answers(with_shadow) == answers(split)
        await server.shadow.drain(5)
        assert server.shadow.scored >= 1
        assert server.shadow.failed == 0


async def test_event_ids_reach_the_prediction_log_beside_their_entities(
    kafka: KafkaSettings, redis_url: str, tmp_path: Path, unique: str
) -> None:
    model, prefix = f"m_{unique.replace('-', '_')}", f"pred-{unique}"
    ids = [f"card_{i:03d}" for i in range(40)]
    await write(redis_url, prefix, dict.fromkeys(ids, (1.0, 1.0, 1.0)), age_s=1)
    # a canary splits the batch: each event id must still follow its own entity
    spec = spec_for(model, canary_weight=0.5, shadow=False)
    redis = RedisSettings(url=redis_url, key_prefix=prefix)
    logged: list[PredictionLogged] = []

    async def collect(received: Received[Event]) -> None:
        if isinstance(received.payload, PredictionLogged) and received.payload.model == model:
            logged.append(received.payload)

    async with (
        serving(model, kafka, redis=redis, spec_=spec) as (server, _),
        Publisher(kafka, source="tests") as publisher,
    ):
        assert server.port is not None
        await server.reloader.apply(pub(tmp_path, model, 1))
        assert await server.reloader.apply(pub(tmp_path, model, 2, "canary"))
        mismatch = await failure(
            server.port, ppb.PredictRequest(entity_ids=ids[:2], event_ids=["tx-only-one"])
        )
        assert mismatch.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "event_ids" in (mismatch.details() or "")

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
            events = [f"tx-{entity}" for entity in ids]
            answer = await predict(
                server.port, ppb.PredictRequest(entity_ids=ids, event_ids=events)
            )
            await predict(server.port, ppb.PredictRequest(entity_ids=ids[:3]))  # none named
            await wait_for(lambda: len(logged) >= len(ids) + 3, timeout_s=30)
        finally:
            consumer.stop()
            await consuming
    assert {p.alias for p in answer.predictions} == {"champion", "canary"}
    named = {e.entity_id: e for e in logged if e.scored_event_id is not None}
    assert len(named) == len(ids)
    version_of = {p.entity_id: int(p.model_version) for p in answer.predictions}
    for entity, event in named.items():
        assert event.scored_event_id == f"tx-{entity}"
        assert event.version == version_of[entity]
    assert sum(e.scored_event_id is None for e in logged) == 3
    for event in logged:  # what the model was served, before encoding, and where from
        assert event.features == {
            "card_activity.count_10m": 1.0,
            "card_activity.amount_sum_1h": 1.0,
            "card_activity.amount": 1.0,
        }
        assert set(event.feature_ages_s) == set(NUMERIC)
        assert event.defaulted_features == ()
        assert event.features_at is not None
        assert event.view_event_counts == {"card_activity": 3}


@contextlib.asynccontextmanager
async def slow_to_answer_first(url: str, delay_s: float) -> AsyncIterator[str]:
    """A TCP proxy to Redis that holds each connection's first bytes `delay_s`, then relays.

    What a busy machine does to a cold connection: the handshake of a new
    connection is slow, the commands after it are not.
    """
    target = urlparse(url)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        first = await reader.read(65536)
        await asyncio.sleep(delay_s)
        up_writer.write(first)
        await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}{target.path}"
    finally:
        server.close()


async def test_the_first_predict_does_not_pay_for_connecting_to_redis(
    redis_url: str, tmp_path: Path, unique: str
) -> None:
    # Seen under load: the first Predict after start failed UNAVAILABLE because
    # opening the Redis connection ran inside serving.timeout_ms.
    model, prefix = f"m_{unique.replace('-', '_')}", f"pred-{unique}"
    await write(redis_url, prefix, {"card": (1.0, 2.0, 3.0)}, age_s=1)
    spec = spec_for(model, timeout_ms=200)
    async with slow_to_answer_first(redis_url, delay_s=0.5) as slow_url:
        redis = RedisSettings(url=slow_url, key_prefix=prefix)
        async with serving(model, None, redis=redis, spec_=spec) as (server, _):
            await server.reloader.apply(pub(tmp_path, model, 1))
            assert server.port is not None
            answer = await predict(server.port, ppb.PredictRequest(entity_ids=["card"]))
    assert list(answer.predictions[0].outputs["y"].values) == pytest.approx(
        [float(W @ [1, 2, 3]) + 1]
    )
    assert list(answer.predictions[0].defaulted_features) == []


@dataclass
class DelayingProxy:
    """A TCP proxy in front of the real Redis; Redis's replies are held `delay_s`."""

    url: str
    delay_s: float = 0.0


@contextlib.asynccontextmanager
async def delaying_proxy(url: str) -> AsyncIterator[DelayingProxy]:
    target = urlparse(url)
    proxy = DelayingProxy(url="")
    writers: list[asyncio.StreamWriter] = []
    handlers: list[asyncio.Task[Any]] = []

    async def relay(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if replies and proxy.delay_s:
                    await asyncio.sleep(proxy.delay_s)  # the slow Redis this proxy plays
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        writers.extend((writer, up_writer))
        await asyncio.gather(
            relay(reader, up_writer, replies=False), relay(up_reader, writer, replies=True)
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy.url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}{target.path}"
    try:
        yield proxy
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*handlers, return_exceptions=True)


async def test_predict_within_the_default_budget_and_beyond_it(
    redis_url: str, tmp_path: Path, unique: str
) -> None:
    """The default `serving.timeout_ms` (100 ms), as shipped: a Redis whose replies take a
    fifth of it serves the prediction; one whose replies take three budgets fails the call
    with UNAVAILABLE after a second try, naming the budget; once Redis is quick again, so
    is Predict. (Delays are fractions of the budget, so the budget itself is what is checked.)"""
    model, prefix = f"m_{unique.replace('-', '_')}", f"pred-{unique}"
    await write(redis_url, prefix, {"card": (1.0, 2.0, 3.0)}, age_s=1)
    spec = spec_for(model)
    budget_ms = spec.serving.timeout_ms
    assert budget_ms == 100  # the default, not a value raised for the test
    request = ppb.PredictRequest(entity_ids=["card"])
    expected = [float(W @ [1, 2, 3]) + 1]
    async with delaying_proxy(redis_url) as proxy:
        redis = RedisSettings(url=proxy.url, key_prefix=prefix)
        async with serving(model, None, redis=redis, spec_=spec) as (server, _):
            await server.reloader.apply(pub(tmp_path, model, 1))
            assert server.port is not None
            proxy.delay_s = budget_ms / 5 / 1000
            quick = await predict(server.port, request)
            assert list(quick.predictions[0].outputs["y"].values) == pytest.approx(expected)
            assert list(quick.predictions[0].defaulted_features) == []

            proxy.delay_s = 3 * budget_ms / 1000
            slow = await failure(server.port, request)
            assert slow.code() == grpc.StatusCode.UNAVAILABLE
            assert f"did not answer within {budget_ms} ms" in (slow.details() or "")
            assert "twice" in (slow.details() or "")  # tried again: the deadline had room

            # Redis at its own speed again: the next call answers. (Not at a fifth of the
            # budget: redis-py drops a connection whose read timed out, and the next call's
            # reconnection handshake, several round trips, also runs inside the budget.)
            proxy.delay_s = 0.0
            again = await predict(server.port, request)
            assert list(again.predictions[0].outputs["y"].values) == pytest.approx(expected)


def fraud_spec_for(model: str) -> ProjectSpec:
    """The fraud example as is (string features included), small enough to train in a moment."""
    data = yaml.safe_load(Path(fraud_spec_path()).read_text())
    data["model"].update(name=model, min_rows=10, params={"max_iter": 20})
    data["serving"]["model"] = model
    return parse_spec(yaml.safe_dump(data))


def fraud_values(spec: ProjectSpec, rng: np.random.Generator) -> dict[str, Scalar]:
    """One entity's online values by feature name: enum strings and numbers."""
    out: dict[str, Scalar] = {}
    for f in spec.model_features():
        if f.values:
            out[f.name] = str(rng.choice(list(f.values)))
        elif f.dtype == "int":
            out[f.name] = int(rng.integers(0, 5))
        else:
            out[f.name] = round(float(rng.gamma(2.0, 40.0)), 2)
    return out


async def test_predict_serves_a_trainer_model_with_categorical_features(
    redis_url: str, tmp_path: Path, unique: str
) -> None:
    model, prefix = f"m_{unique.replace('-', '_')}", f"pred-{unique}"
    spec = fraud_spec_for(model)
    features = spec.model_features()
    refs = [f.ref for f in features]
    rng = np.random.default_rng(3)
    history = [fraud_values(spec, rng) for _ in range(300)]
    start = datetime(2025, 1, 1, tzinfo=UTC)
    table = pa.table(
        {
            "as_of": pa.array(
                [start + timedelta(minutes=i) for i in range(len(history))],
                pa.timestamp("ms", tz="UTC"),
            ),
            "label": [v["channel"] == "online" and rng.random() < 0.8 for v in history],
            **{f.ref: [v[f.name] for v in history] for f in features},
        }
    )
    dataset = dataset_from_table(spec, table, "fingerprint")
    trained = train(spec, dataset)
    uri, digest = write_artifact(tmp_path, 1, trained.onnx)

    online = {"known": fraud_values(spec, rng), "odd": fraud_values(spec, rng)}
    online["odd"]["merchant_category"] = "casino"  # not in the enum: NaN, as in training
    async with OnlineStore.from_url(redis_url, key_prefix=prefix) as store:
        pipe = store.client.pipeline(transaction=False)
        ts = int((time.time() - 10) * 1000)
        for entity, values in online.items():
            store.stage_write(pipe, "card_activity", 1, entity, values, ts, "t", 600)
        await pipe.execute()

    redis = RedisSettings(url=redis_url, key_prefix=prefix)
    async with serving(model, None, redis=redis, spec_=spec) as (server, _):
        await server.reloader.apply(Publication(model, 1, uri, digest, None, "champion"))
        assert server.port is not None
        answer = await predict(server.port, ppb.PredictRequest(entity_ids=[*online, "new"]))

    # "new" gets the spec's defaults for its raw fields, empty windows for its aggregates
    defaults: dict[str, Any] = {
        ref.partition(".")[2]: v for ref, v in spec.serving.defaults.items()
    }
    defaults.update((f.name, empty_value(f.function)) for f in features if f.function is not None)
    raw: list[dict[str, Any]] = [*online.values(), defaults]
    x = dataset.encoding.encode({f.ref: [v[f.name] for v in raw] for f in features})
    assert np.isnan(x[1, refs.index("card_activity.merchant_category")])
    expected = onnx_scores(trained.onnx, x, "classification")
    got = [p.outputs["probabilities"].values[1] for p in answer.predictions]
    assert got == pytest.approx(expected.tolist(), abs=1e-6)
    assert [p.entity_id for p in answer.predictions] == ["known", "odd", "new"]
    assert list(answer.predictions[2].defaulted_features) == [
        f.ref for f in features if f.function is None
    ]
