"""ModelInfer latency and throughput against a bare grpc.aio echo server and a bare ORT call.

One model (scikit-learn LogisticRegression on 20 float features, via skl2onnx),
batch 1, FP32 in `raw_input_contents` as Triton clients send it. Each server
runs in its own process (one process, no workers); the client runs here and
sends pre-serialised request bytes, so client cost is the same for both:

- echo: a bare `grpc.aio` server with one generic handler that returns the
  request bytes (same payload), no interceptors;
- ORT: `InferenceSession.run` called directly here (1 intra/1 inter thread);
- mlbus: `python -m mlbus.inference`'s server (interceptors: tracing, errors;
  telemetry SDK installed as in a service; prediction log off unless `--log`,
  which starts an embedded broker and logs every prediction to it).

Goals (issue #7): p50 ≤ 1.3 × (echo p50 + ORT p50), p99 ≤ 2 × (echo p99 +
ORT p99), one client at a time; throughput at 32 in flight ≥ 0.7 × echo.

    python loadtests/bench_inference.py [--calls 3000] [--seconds 3] [--repeats 3] [--log]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import grpc
import grpc.aio
import numpy as np

from _harness import Benchmark, console, percentile
from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb

FEATURES = 20
MODEL = "bench"
ECHO = "grpc.aio echo"
ORT = "bare ORT call"
BASELINE = "echo + ORT"
MLBUS = "mlbus ModelInfer"
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
ECHO_METHOD = "/bench.Echo/Echo"


def build_model(path: Path) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, FEATURES)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(int)
    estimator = LogisticRegression().fit(x, y)
    onnx_model = to_onnx(
        estimator,
        initial_types=[("float_input", FloatTensorType([None, FEATURES]))],
        options={id(estimator): {"zipmap": False}},
        target_opset=17,
    )
    path.write_bytes(onnx_model.SerializeToString())


def request_bytes() -> bytes:
    x = np.random.default_rng(1).normal(size=(1, FEATURES)).astype("<f4")
    request = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[{"name": "float_input", "datatype": "FP32", "shape": [1, FEATURES]}],
        raw_input_contents=[x.tobytes()],
    )
    return request.SerializeToString()


# ── servers (each in its own process) ───────────────────────────────────────


async def serve_echo() -> None:
    async def echo_async(request: bytes, context: object) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo_async)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def serve_mlbus(model_path: Path, data_dir: Path, kafka: str | None, digest: str) -> None:
    from mlbus.config import KafkaSettings
    from mlbus.inference import InferenceServer, InferenceSettings, Publication
    from mlbus.telemetry import setup_telemetry

    settings = InferenceSettings(
        grpc_port=0,
        models=(MODEL,),
        data_dir=data_dir,
        kafka=KafkaSettings(bootstrap_servers=kafka),
        prediction_log=kafka is not None,
    )
    telemetry = setup_telemetry("inference", settings)
    try:
        async with InferenceServer(settings, host="127.0.0.1") as server:
            publication = Publication(MODEL, 1, model_path.as_uri(), digest, None, "champion")
            if not await server.reloader.apply(publication):
                raise SystemExit(f"model refused: {server.reloader.stats.last_refusal}")
            print(server.port, flush=True)
            await asyncio.Event().wait()
    finally:
        telemetry.shutdown()


def start_server(*args: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLBUS_TELEMETRY_LOG_LEVEL": "WARNING"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise SystemExit(f"server {args} did not start")
    return process, int(line)


# ── client side ──────────────────────────────────────────────────────────────


async def latencies_ms(
    channel: grpc.aio.Channel, method: str, payload: bytes, calls: int
) -> list[float]:
    call = channel.unary_unary(method)
    for _ in range(200):  # warm up
        await call(payload)
    values = []
    for _ in range(calls):
        started = time.perf_counter()
        await call(payload)
        values.append((time.perf_counter() - started) * 1000)
    return values


async def throughput(
    channel: grpc.aio.Channel, method: str, payload: bytes, inflight: int, seconds: float
) -> float:
    call = channel.unary_unary(method)
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call(payload)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return done / (time.perf_counter() - started)


def ort_latencies_ms(model_path: Path, calls: int) -> list[float]:
    import onnxruntime as ort

    from mlbus.inference import OrtThreads

    session = ort.InferenceSession(
        str(model_path),
        sess_options=OrtThreads().session_options(),
        providers=["CPUExecutionProvider"],
    )
    feed = {"float_input": np.random.default_rng(1).normal(size=(1, FEATURES)).astype(np.float32)}
    for _ in range(200):
        session.run(None, feed)
    values = []
    for _ in range(calls):
        started = time.perf_counter()
        session.run(None, feed)
        values.append((time.perf_counter() - started) * 1000)
    return values


async def main(calls: int, seconds: float, repeats: int, inflight: int, log: bool) -> bool:
    bench = Benchmark(
        "inference",
        "ModelInfer (batch 1, 20 FP32 features) vs a bare grpc.aio echo and a bare ORT call",
        calls=calls,
        seconds=seconds,
        repeats=repeats,
        inflight=inflight,
        prediction_log=log,
    )
    payload = request_bytes()
    bench.parameters["request_bytes"] = len(payload)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_path = folder / "model.onnx"
        build_model(model_path)
        broker = None
        if log:
            from mlbus.runtime import EmbeddedBroker

            broker = EmbeddedBroker(folder / "logs").__enter__()
        processes = []
        try:
            echo_process, echo_port = start_server("echo")
            processes.append(echo_process)
            mlbus_args = ["mlbus", str(model_path), str(folder)]
            if broker is not None:
                mlbus_args.append(broker.bootstrap_servers)
            mlbus_process, mlbus_port = start_server(*mlbus_args)
            processes.append(mlbus_process)
            targets = {
                ECHO: (f"127.0.0.1:{echo_port}", ECHO_METHOD),
                MLBUS: (f"127.0.0.1:{mlbus_port}", INFER_METHOD),
            }
            channels = {
                name: grpc.aio.insecure_channel(addr) for name, (addr, _) in targets.items()
            }
            for run in range(repeats):
                ort_values = ort_latencies_ms(model_path, calls)
                p50 = {ORT: percentile(ort_values, 50)}
                p99 = {ORT: percentile(ort_values, 99)}
                rps = {}
                for name, (_, method) in targets.items():
                    values = await latencies_ms(channels[name], method, payload, calls)
                    p50[name], p99[name] = percentile(values, 50), percentile(values, 99)
                    rps[name] = await throughput(channels[name], method, payload, inflight, seconds)
                p50[BASELINE] = p50[ECHO] + p50[ORT]
                p99[BASELINE] = p99[ECHO] + p99[ORT]
                for name in p50:
                    bench.record(name, "p50", p50[name], "ms", higher_is_better=False)
                    bench.record(name, "p99", p99[name], "ms", higher_is_better=False)
                for name, value in rps.items():
                    bench.record(name, "throughput", value, "req/s", higher_is_better=True)
                console.print(
                    f"run {run + 1}/{repeats}: p50 "
                    + ", ".join(f"{n} {v:.3f}" for n, v in p50.items())
                    + " ms; "
                    + ", ".join(f"{n} {v:,.0f}" for n, v in rps.items())
                    + " req/s"
                )
            for channel in channels.values():
                await channel.close()
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)
            if broker is not None:
                broker.__exit__(None, None, None)
    bench.goal("p50, one client at a time", MLBUS, BASELINE, "p50", "<=", 1.3)
    bench.goal("p99, one client at a time", MLBUS, BASELINE, "p99", "<=", 2.0)
    bench.goal(f"throughput at {inflight} in flight", MLBUS, ECHO, "throughput", ">=", 0.7)
    return bench.report()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--log", action="store_true", help="log predictions to an embedded broker")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, *rest = args.serve
        if kind == "echo":
            asyncio.run(serve_echo())
        else:
            kafka = rest[2] if len(rest) > 2 else None
            digest = hashlib.sha256(Path(rest[0]).read_bytes()).hexdigest()
            asyncio.run(serve_mlbus(Path(rest[0]), Path(rest[1]), kafka, digest))
        sys.exit(0)
    ok = asyncio.run(main(args.calls, args.seconds, args.repeats, args.inflight, args.log))
    sys.exit(0 if ok else 1)
