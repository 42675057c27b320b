"""Events per second per core through the drift service against a raw consume loop.

Same embedded broker, same run, same topic and records: N `PredictionLogged`
events of the fraud example's model (13 features, 3 of them categorical codes,
≈900 B JSON with CloudEvents headers), stationary against the version's
reference profile, spread over 3 partitions. Variants, interleaved per repeat,
each a fresh consumer group reading the topic from the start:

- raw aiokafka + json: `getmany` → `json.loads` per record → commit per batch;
  what a hand-written consumer does at the least (the baseline).
- mlbus.bus, no-op handler: the bus Consumer decoding every record into a
  `PredictionLogged` (pydantic) with a batch handler that does nothing.
- drift service: `DriftService` itself (registry profile, decoding codes,
  `DriftMonitor.observe_many` per partition and fetch, window tests every
  `window_size` records per partition, state + offset saved to Redis at each
  commit).

Throughput is events per wall second and per CPU second of this process (the
broker runs in its own process), from the consumer's assignment until every
record is applied; the drift service's CPU also counts its state save after the
last record (wall does not wait for it: the service saves once per
`commit_interval_s`). An untimed round of every variant goes first (`--warmup`): a
process's first pass pays once what a running service paid long ago (first calls,
page faults of new heaps). The machine is shared: compare ratios, not absolutes. The
ratio is printed of the variants' medians and repeat by repeat (median and
range: how far one run can be off).
A measurement: no goal is set, so the exit status only says the run completed.

    python loadtests/bench_drift.py [--events 30000] [--repeats 5] [--warmup 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from onnx import TensorProto, helper

from _harness import Benchmark, console
from mlbus.bus import Consumer, Publisher, Received, encode_event, ensure_topics, event_headers
from mlbus.config import KafkaSettings, MlbusSettings, RedisSettings
from mlbus.drift import DriftService, DriftSettings
from mlbus.events import (
    DRIFT_DETECTED,
    INGEST_VALIDATED,
    MODEL_PUBLISHED,
    MODEL_REGISTERED,
    PREDICTION_LOGGED,
    TRAINING_REQUESTED,
    PredictionLogged,
)
from mlbus.example import fraud_spec_path
from mlbus.profiles import ReferenceProfile
from mlbus.registry import RegistryServer, RegistrySettings
from mlbus.registry_client import RegistryClient
from mlbus.runtime import EmbeddedBroker, EmbeddedRedis, local_redis_url
from mlbus.service import tune_gc_for_streams
from mlbus.spec import FeatureDef, ProjectSpec, load_spec

RAW = "raw aiokafka + json"
BUS = "mlbus.bus, no-op handler"
DRIFT = "drift service"
START = datetime(2026, 11, 1, tzinfo=UTC)


def draw(
    features: tuple[FeatureDef, ...], rng: np.random.Generator, n: int
) -> dict[str, list[Any]]:
    """Raw values per feature ref: numbers around a scale, categories from the spec's values."""
    columns: dict[str, list[Any]] = {}
    for j, feature in enumerate(features):
        if feature.kind == "categorical":
            values = list(feature.values or ["a", "b"])
            columns[feature.ref] = list(rng.choice(values, n))
        else:
            columns[feature.ref] = list(rng.gamma(2.0, 10.0 * (j + 1), n))
    return columns


def artifact(features: tuple[FeatureDef, ...]) -> bytes:
    width = len(features)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    categories = {f.ref: list(f.values or []) for f in features if f.kind == "categorical"}
    helper.set_model_props(
        model,
        {
            "mlbus.encoding": json.dumps(
                {"refs": [f.ref for f in features], "categories": categories}
            ),
            "mlbus.classes": "false,true",
        },
    )
    return bytes(model.SerializeToString())


def prediction_records(
    spec: ProjectSpec, version: int, n: int
) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    features = spec.model_features()
    rng = np.random.default_rng(5)
    columns = draw(features, rng, n)
    scores = rng.beta(2.0, 8.0, n)
    out = []
    for i in range(n):
        row: dict[str, Any] = {}
        for feature in features:
            value = columns[feature.ref][i]
            if feature.kind == "categorical":
                value = float(list(feature.values or []).index(value))  # the model's code
            row[feature.ref] = float(value)
        event = PredictionLogged(
            occurred_at=START + timedelta(milliseconds=10 * i),
            model=spec.model.name,
            version=version,
            alias="champion",
            entity_id=f"card_{i % 5000:06d}",
            features=row,
            outputs={"label": [0.0], "probabilities": [1 - float(scores[i]), float(scores[i])]},
            latency_ms=1.2,
            scored_event_id=str(uuid.UUID(int=i)),
        )
        out.append((encode_event(event), list(event_headers(event, "/mlbus/inference"))))
    return out


async def produce(
    kafka: KafkaSettings, records: list[tuple[bytes, list[tuple[str, bytes]]]]
) -> dict[int, int]:
    producer = AIOKafkaProducer(
        **kafka.client_kwargs(), linger_ms=5, max_batch_size=kafka.max_batch_bytes
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                PREDICTION_LOGGED, value, key=b"card_%06d" % (i % 5000), headers=headers
            )
            for i, (value, headers) in enumerate(records)
        ]
        last: dict[int, int] = {}
        for meta in await asyncio.gather(*futures):
            last[meta.partition] = max(last.get(meta.partition, -1), meta.offset)
        return last
    finally:
        await producer.stop()


async def raw_loop(kafka: KafkaSettings, n: int) -> tuple[float, float]:
    consumer = AIOKafkaConsumer(
        PREDICTION_LOGGED,
        **kafka.client_kwargs(),
        group_id=f"raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
    )
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100, max_records=1)
            consumer.seek_to_beginning()
        received = 0
        wall, cpu = time.perf_counter(), time.process_time()
        while received < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            for records in batch.values():
                for record in records:
                    json.loads(record.value)
                received += len(records)
            if batch:
                await consumer.commit()
        return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)
    finally:
        await consumer.stop()


async def bus_loop(kafka: KafkaSettings, n: int) -> tuple[float, float]:
    received = 0
    done = asyncio.Event()

    async def count(batch: list[Received[Any]]) -> None:
        nonlocal received
        received += len(batch)
        if received >= n:
            done.set()

    async def one(record: Received[Any]) -> None:
        await count([record])

    async with Publisher(kafka, source="bench") as publisher:
        consumer = Consumer.of_events(
            kafka,
            types=[PredictionLogged],
            group_id=f"bus-{uuid.uuid4().hex[:8]}",
            handler=one,
            batch_handler=count,
            publisher=publisher,
            max_batch=1000,
        )
        running = asyncio.create_task(consumer.run())
        await consumer.wait_assigned()
        wall, cpu = time.perf_counter(), time.process_time()
        await done.wait()
        result = n / (time.perf_counter() - wall), n / (time.process_time() - cpu)
        consumer.stop()
        await running
    return result


async def drift_loop(
    settings: DriftSettings, spec: ProjectSpec, last: dict[int, int], n: int
) -> tuple[float, float]:
    service = DriftService(
        settings.model_copy(update={"group_id": f"drift-{uuid.uuid4().hex[:8]}"}), spec
    )
    running = asyncio.create_task(service.run())
    await service.wait_started()
    wall, cpu = time.perf_counter(), time.process_time()
    processor = service.processor
    assert processor is not None
    applied_s: float | None = None
    while True:
        states = [processor.partitions.get((PREDICTION_LOGGED, p)) for p in last]
        reached = [
            s is not None and s.offset >= last[p] for s, p in zip(states, last, strict=False)
        ]
        if applied_s is None and all(reached):
            applied_s = time.perf_counter() - wall
        if all(reached) and not any(s is not None and s.dirty for s in states):
            break
        await asyncio.sleep(0.005)
    # Wall: until every record is applied. The service saves its state once per
    # `commit_interval_s` (1 s), so waiting for that save too would add up to a
    # second of idle to a run that takes about one. CPU: until the save, so its
    # cost is counted.
    assert applied_s is not None
    result = n / applied_s, n / (time.process_time() - cpu)
    service.stop()
    await running
    return result


async def main(events: int, repeats: int, warmup: int) -> bool:
    bench = Benchmark(
        "drift_throughput",
        "events/s per core through the drift service vs a raw aiokafka consume loop",
        events=events,
        repeats=repeats,
        warmup=warmup,
    )
    spec = load_spec(fraud_spec_path())
    features = spec.model_features()
    with tempfile.TemporaryDirectory() as tmp:
        from mlbus.telemetry import setup_telemetry

        handle = setup_telemetry("bench", MlbusSettings(data_dir=Path(tmp)))
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
        logging.getLogger("mlbus").setLevel(logging.WARNING)
        redis_url = local_redis_url()
        embedded_redis = None if redis_url else EmbeddedRedis(Path(tmp) / "logs")
        if embedded_redis is not None:
            embedded_redis.__enter__()
            redis_url = embedded_redis.url
        try:
            with EmbeddedBroker(Path(tmp) / "logs") as broker:
                kafka = KafkaSettings(
                    bootstrap_servers=broker.bootstrap_servers, session_timeout_s=6.0
                )
                await ensure_topics(
                    kafka,
                    [
                        PREDICTION_LOGGED,
                        INGEST_VALIDATED,
                        DRIFT_DETECTED,
                        TRAINING_REQUESTED,
                        MODEL_PUBLISHED,
                        MODEL_REGISTERED,
                    ],
                    partitions=3,
                )
                registry_settings = RegistrySettings(
                    data_dir=Path(tmp) / "registry", kafka=kafka, grpc_port=0, spec=None
                )
                async with RegistryServer(registry_settings, host="127.0.0.1") as registry:
                    rng = np.random.default_rng(1)
                    columns = draw(features, rng, 20_000)
                    profile = ReferenceProfile.from_samples(
                        columns, predictions=rng.beta(2.0, 8.0, 20_000)
                    )
                    async with RegistryClient(f"127.0.0.1:{registry.port}") as client:
                        registered = await client.register(
                            spec.model.name, artifact(features), reference_profile=profile
                        )
                    records = prediction_records(spec, registered.version.version, events)
                    last = await produce(kafka, records)
                    bench.parameters["value_bytes"] = round(
                        sum(len(v) for v, _ in records) / events
                    )
                    bench.parameters["window_size"] = spec.drift.window_size
                    settings = DriftSettings(
                        data_dir=Path(tmp),
                        kafka=kafka,
                        redis=RedisSettings(
                            url=redis_url, key_prefix=f"bench-{uuid.uuid4().hex[:6]}"
                        ),
                        spec=fraud_spec_path(),
                        registry_address=f"127.0.0.1:{registry.port}",
                    )
                    # as every stream service's process does before it runs (every variant
                    # runs after it, so the baseline gets the same collector)
                    tune_gc_for_streams()
                    for run in range(-warmup, repeats):
                        results = {
                            RAW: await raw_loop(kafka, events),
                            BUS: await bus_loop(kafka, events),
                            DRIFT: await drift_loop(settings, spec, last, events),
                        }
                        label = f"run {run + 1}/{repeats}" if run >= 0 else "warm-up (not counted)"
                        console.print(
                            f"{label}: "
                            + ", ".join(
                                f"{v} {w:,.0f}/s ({c:,.0f}/cpu-s)" for v, (w, c) in results.items()
                            )
                        )
                        if run < 0:
                            continue
                        for variant, (wall, cpu) in results.items():
                            bench.record(
                                variant, "throughput", wall, "events/s", higher_is_better=True
                            )
                            bench.record(
                                variant, "per core", cpu, "events/cpu-s", higher_is_better=True
                            )
        finally:
            if embedded_redis is not None:
                embedded_redis.__exit__(None, None, None)
            handle.shutdown()
    for metric in ("per core", "throughput"):
        ratio = bench.ratio(DRIFT, RAW, metric)
        bench.notes.append(f"drift service / {RAW} ({metric}) = {ratio:.3f}")
        ratio = bench.ratio(BUS, RAW, metric)
        bench.notes.append(
            f"{BUS} / {RAW} ({metric}) = {ratio:.3f} (what decoding through the bus costs)"
        )
    # Each repeat runs the variants back to back, so its own ratio cancels what the
    # shared machine does to all of them at once; their spread is the run-to-run noise.
    paired = [
        drift / raw
        for drift, raw in zip(
            bench.metrics[(DRIFT, "per core")].values,
            bench.metrics[(RAW, "per core")].values,
            strict=True,
        )
    ]
    bench.notes.append(
        f"drift service / {RAW} (per core) repeat by repeat: median "
        f"{statistics.median(paired):.3f}, {min(paired):.3f}-{max(paired):.3f}"
    )
    bench.notes.append(
        "the machine is shared with other work: ratios of one run, not absolute rates"
    )
    return bench.report(measurement_only=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    # five: the raw loop alone moves ±15 % between runs
    parser.add_argument("--repeats", type=int, default=5)
    # one: a process's first pass pays once what a running service paid long ago
    # (first calls, page faults of new heaps, cold caches)
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds of every variant first"
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    sys.exit(0 if asyncio.run(main(args.events, args.repeats, args.warmup)) else 1)
