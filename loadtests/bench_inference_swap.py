"""ModelInfer p99 in a window around each hot swap vs steady state, same server, same run.

An `InferenceServer` (one process, as `python -m mlbus.inference` runs it)
follows the embedded broker; this process keeps one client calling
ModelInfer one call at a time (batch 1, 20 FP32 features, pre-serialised
bytes) and, between calm periods, publishes a new version as a real
`model.published` (LogisticRegression variants, distinct artifacts). The
server fetches, verifies, loads, warms up and swaps while serving.

Window of a swap: from the moment the publication is acknowledged by the
broker until `--after-s` (0.5 s) after the first response naming the new
version. Steady state: calls more than `--margin-s` (0.25 s) away from any
window (the calm periods between swaps, and before the first).
Also counted: failed calls (goal: none) and responses naming a version that
was never published (goal: none).

Goal (issue #7): p99 in the swap windows ≤ 2 × steady-state p99.

    python loadtests/bench_inference_swap.py [--swaps 12] [--calm-s 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import grpc.aio
import numpy as np

from _harness import Benchmark, console, percentile
from _inference_bench import (
    INFER_METHOD,
    MODEL,
    build_model,
    model_published,
    request_bytes,
    serve_inference,
    start_server,
    stop_process,
)

SWAP = "during a swap"
STEADY = "steady state"


def build_version(path: Path, seed: int) -> None:
    """The seed makes each version's artifact distinct (labels with noise drawn from it)."""
    build_model(path, seed=seed, label_noise=0.5)


@dataclass(frozen=True, slots=True)
class Call:
    started: float
    latency_ms: float
    version: int  # 0: failed


@dataclass(frozen=True, slots=True)
class Swap:
    version: int
    published: float
    seen: float


async def drive(
    port: int, publish: object, versions: list[tuple[int, Path]], calm_s: float
) -> tuple[list[Call], list[Swap]]:
    from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb

    payload = request_bytes()
    calls: list[Call] = []
    swaps: list[Swap] = []
    current = {"version": 1}
    stopping = asyncio.Event()

    async def client() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(INFER_METHOD)
            while not stopping.is_set():
                started = time.perf_counter()
                try:
                    raw = await call(payload, timeout=10)
                    version = int(pb.ModelInferResponse.FromString(raw).model_version)
                except grpc.aio.AioRpcError:
                    version = 0
                calls.append(Call(started, (time.perf_counter() - started) * 1000, version))
                current["version"] = version or current["version"]

    running = asyncio.create_task(client())
    try:
        await asyncio.sleep(calm_s)
        for version, path in versions:
            published = time.perf_counter()
            await publish(version, path)  # type: ignore[operator]
            while current["version"] != version:
                if time.perf_counter() - published > 60:
                    raise SystemExit(f"v{version} was not swapped in within 60 s")
                await asyncio.sleep(0.001)
            swaps.append(Swap(version, published, time.perf_counter()))
            await asyncio.sleep(calm_s)
    finally:
        stopping.set()
        await running
    return calls, swaps


async def one_run(
    bootstrap: str, folder: Path, swaps: int, calm_s: float, first: int
) -> tuple[list[Call], list[Swap], set[int]]:
    from mlbus.bus import Publisher
    from mlbus.config import KafkaSettings

    versions = []
    for version in range(first, first + swaps):
        path = folder / f"v{version}.onnx"
        build_version(path, seed=version)
        versions.append((version, path))
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    async with Publisher(kafka, source="loadtests") as publisher:

        async def publish(version: int, path: Path) -> None:
            data = await asyncio.to_thread(path.read_bytes)
            event = model_published(version, version - 1, path, data)
            await publisher.publish(event, key=MODEL)

        port = int((folder / "port").read_text())
        calls, done = await drive(port, publish, versions, calm_s)
    return calls, done, {v for v, _ in versions}


def split(
    calls: list[Call], swaps: list[Swap], after_s: float, margin_s: float
) -> tuple[list[float], list[float]]:
    windows = [(s.published, s.seen + after_s) for s in swaps]
    margin = margin_s
    during, steady = [], []
    for c in calls:
        if any(lo <= c.started <= hi for lo, hi in windows):
            during.append(c.latency_ms)
        elif all(c.started < lo - margin or c.started > hi + margin for lo, hi in windows):
            steady.append(c.latency_ms)
    return during, steady


def main(swaps: int, calm_s: float, after_s: float, margin_s: float, repeats: int) -> bool:
    from mlbus.runtime import EmbeddedBroker

    bench = Benchmark(
        "inference_swap",
        "ModelInfer p99 around hot swaps (published on the broker) vs steady state",
        swaps_per_run=swaps,
        calm_s=calm_s,
        after_s=after_s,
        margin_s=margin_s,
        repeats=repeats,
    )
    failed = unknown = 0
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "logs") as broker:
        folder = Path(tmp)
        first_model = folder / "v1.onnx"
        build_version(first_model, seed=1)
        bootstrap = broker.bootstrap_servers
        process, port = start_server(__file__, str(first_model), str(folder), bootstrap)
        (folder / "port").write_text(str(port))
        try:
            next_version = 2
            for run in range(repeats):
                calls, done, published = asyncio.run(
                    one_run(bootstrap, folder, swaps, calm_s, next_version)
                )
                next_version += swaps
                during, steady = split(calls, done, after_s, margin_s)
                failed += sum(c.version == 0 for c in calls)
                allowed = published | {max(published) - swaps, 1}
                unknown += sum(c.version not in allowed and c.version != 0 for c in calls)
                for name, values in ((SWAP, during), (STEADY, steady)):
                    bench.record(name, "p99", percentile(values, 99), "ms", higher_is_better=False)
                    bench.record(name, "p50", percentile(values, 50), "ms", higher_is_better=False)
                    bench.record(name, "calls", len(values), "calls", higher_is_better=True)
                swap_s = [s.seen - s.published for s in done]
                bench.record(
                    SWAP,
                    "publish→served",
                    float(np.median(swap_s)) * 1000,
                    "ms",
                    higher_is_better=False,
                )
                console.print(
                    f"run {run + 1}/{repeats}: {len(done)} swaps (median "
                    f"{np.median(swap_s) * 1000:.0f} ms publish→served); p99 during "
                    f"{percentile(during, 99):.3f} ms ({len(during)} calls), steady "
                    f"{percentile(steady, 99):.3f} ms ({len(steady)} calls)"
                )
        finally:
            stop_process(process)
    bench.goal("p99 around a swap vs steady state", SWAP, STEADY, "p99", "<=", 2.0)
    bench.notes.append(
        f"failed calls: {failed}; responses naming an unpublished version: {unknown}"
    )
    return bench.report() and failed == 0 and unknown == 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=12, help="swaps per run")
    parser.add_argument("--calm-s", type=float, default=2.0, help="steady time between swaps")
    parser.add_argument("--after-s", type=float, default=0.5, help="window after the swap")
    parser.add_argument("--margin-s", type=float, default=0.25, help="gap kept off steady")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        from mlbus.config import KafkaSettings

        # v1 applied directly, then whatever the broker publishes
        model, data_dir, bootstrap = args.serve
        serve_inference(
            Path(model),
            wait_following=True,
            data_dir=Path(data_dir),
            kafka=KafkaSettings(bootstrap_servers=bootstrap),
            prediction_log=False,
        )
        sys.exit(0)
    ok = main(args.swaps, args.calm_s, args.after_s, args.margin_s, args.repeats)
    sys.exit(0 if ok else 1)
