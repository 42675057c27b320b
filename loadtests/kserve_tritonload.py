"""The same `tritonclient` load against any Open Inference Protocol server; prints JSON.

Runs in its own process: `tritonclient` registers the same `inference.*`
protobuf names as mlbus's stubs, so the two cannot share a process (ADR 0002).
Nothing from mlbus is imported. Used by bench_inference_kserve.py and
bench_inference_workers.py against mlbus and KServe alike.

    python loadtests/kserve_tritonload.py URL MODEL latency CALLS
    python loadtests/kserve_tritonload.py URL MODEL throughput SECONDS INFLIGHT CONNECTIONS

latency: one call at a time (after 200 warm-up calls) → {"latencies_ms": [...]}
throughput: INFLIGHT calls kept going over CONNECTIONS separate TCP connections
(a connection lands on one server process: SO_REUSEPORT spreads connections)
→ {"requests": n, "seconds": s, "errors": e}
Input: one FP32 row of 20 features named `float_input`, as tritonclient sends it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput

FEATURES = 20


def make_inputs() -> list[InferInput]:
    x = np.random.default_rng(1).normal(size=(1, FEATURES)).astype(np.float32)
    tensor = InferInput("float_input", [1, FEATURES], "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def client(url: str) -> triton_aio.InferenceServerClient:
    # A local subchannel pool: each client gets its own TCP connection.
    return triton_aio.InferenceServerClient(
        url, channel_args=[("grpc.use_local_subchannel_pool", 1)]
    )


async def latency(url: str, model: str, calls: int) -> dict[str, object]:
    inputs = make_inputs()
    one = client(url)
    try:
        for _ in range(200):
            await one.infer(model, inputs)
        values = []
        for _ in range(calls):
            started = time.perf_counter()
            await one.infer(model, inputs)
            values.append((time.perf_counter() - started) * 1000)
    finally:
        await one.close()
    return {"latencies_ms": values}


async def throughput(
    url: str, model: str, seconds: float, inflight: int, connections: int
) -> dict[str, object]:
    inputs = make_inputs()
    clients = [client(url) for _ in range(connections)]
    done = errors = 0
    try:
        for c in clients:  # connect and warm up every connection first
            for _ in range(20):
                await c.infer(model, inputs)
        deadline = time.perf_counter() + seconds

        async def worker(c: triton_aio.InferenceServerClient) -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                try:
                    await c.infer(model, inputs)
                    done += 1
                except Exception:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(clients[i % connections]) for i in range(inflight)))
        elapsed = time.perf_counter() - started
    finally:
        for c in clients:
            await c.close()
    return {"requests": done, "seconds": elapsed, "errors": errors}


def main(argv: list[str]) -> None:
    url, model, mode, *rest = argv
    if mode == "latency":
        answer = asyncio.run(latency(url, model, int(rest[0])))
    else:
        answer = asyncio.run(throughput(url, model, float(rest[0]), int(rest[1]), int(rest[2])))
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
