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

Goals (issue #7): p50 ≤ 1.3 × and p99 ≤ 2 × those of "echo + ORT", one client
at a time; throughput at 32 in flight ≥ 0.7 × echo. "echo + ORT" is measured
as one pipeline (an echo round trip, then the ORT call, timed together), not
as the sum of the two parts' percentiles.

    python loadtests/bench_inference.py [--calls 3000] [--seconds 3] [--repeats 3] [--log]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import grpc.aio

from _harness import Benchmark, console, latencies_ms, pipeline_latencies_ms
from _inference_bench import (
    BASELINES,
    ECHO,
    ECHO_METHOD,
    INFER_METHOD,
    build_model,
    feature_row,
    ort_latencies_ms,
    ort_run,
    request_bytes,
    serve_inference,
    start_server,
    stop_process,
)

ORT = "bare ORT call"
BASELINE = "echo + ORT"
MLBUS = "mlbus ModelInfer"


# ── client side ──────────────────────────────────────────────────────────────


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
        ort = ort_run(model_path, feature_row())
        broker = None
        if log:
            from mlbus.runtime import EmbeddedBroker

            broker = EmbeddedBroker(folder / "logs").__enter__()
        processes = []
        try:
            echo_process, echo_port = start_server(BASELINES, "echo")
            processes.append(echo_process)
            mlbus_args = ["mlbus", str(model_path), str(folder)]
            if broker is not None:
                mlbus_args.append(broker.bootstrap_servers)
            mlbus_process, mlbus_port = start_server(__file__, *mlbus_args)
            processes.append(mlbus_process)
            targets = {
                ECHO: (f"127.0.0.1:{echo_port}", ECHO_METHOD),
                MLBUS: (f"127.0.0.1:{mlbus_port}", INFER_METHOD),
            }
            channels = {
                name: grpc.aio.insecure_channel(addr) for name, (addr, _) in targets.items()
            }
            echo = channels[ECHO].unary_unary(ECHO_METHOD)
            for run in range(repeats):
                measured = {ORT: ort_latencies_ms(model_path, feature_row(), calls)}
                rps = {}
                for name, (_, method) in targets.items():
                    call = channels[name].unary_unary(method)
                    measured[name] = await latencies_ms(call, [payload], calls)
                    rps[name] = await throughput(channels[name], method, payload, inflight, seconds)
                measured[BASELINE] = await pipeline_latencies_ms(
                    [lambda _: echo(payload), lambda _: ort()], calls
                )
                p50 = bench.record_percentiles(measured)
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
                stop_process(process)
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
        from mlbus.config import KafkaSettings

        rest = args.serve[1:]  # mlbus MODEL_PATH DATA_DIR [BOOTSTRAP]
        kafka = rest[2] if len(rest) > 2 else None
        serve_inference(
            Path(rest[0]),
            data_dir=Path(rest[1]),
            kafka=KafkaSettings(bootstrap_servers=kafka),
            prediction_log=kafka is not None,
        )
        sys.exit(0)
    ok = asyncio.run(main(args.calls, args.seconds, args.repeats, args.inflight, args.log))
    sys.exit(0 if ok else 1)
