"""Peer: KServe's Python ModelServer vs mlbus, same ONNX model, same tritonclient load.

Both servers serve the LogisticRegression of bench_inference.py (20 FP32
features) through ONNX Runtime with 1 intra-op / 1 inter-op thread, one
process each, over gRPC (Open Inference Protocol v2):

- KServe: `kserve` from PyPI (loadtests/.venv-kserve, made by
  loadtests/kserve_venv.sh on first use; never in the project's
  dependencies: it pins its own protobuf/grpcio), a custom `kserve.Model`
  (loadtests/kserve_server.py), `ModelServer` defaults otherwise;
- mlbus: `InferenceServer` as in bench_inference.py (prediction log off);
- ceiling (reported, not a goal): a bare `grpc.aio` server answering
  ModelInfer with mlbus's response bytes, canned: no parsing, no model, no
  Python beyond returning bytes. With client and server on the same cores, no
  Python gRPC server answers this load faster; `ceiling/KServe` bounds the
  ratio any server could reach here;
- bare ModelInfer (reported, not a goal): grpc.aio + protobuf + ONNX Runtime
  on the same model and nothing else (`serve_bare_model`): `bare/KServe` is
  what a Python server on this stack reaches before doing anything mlbus does
  (settings, checks, versions, telemetry, interceptors).

The load is `tritonclient.grpc.aio` in a separate process
(loadtests/kserve_tritonload.py; it cannot share a process with mlbus's stubs):
one call at a time for p50/p99, then `--inflight` calls over `--connections`
connections for throughput. Resident memory of each server (VmRSS) is
sampled while the load runs.

Goal (issue #7): mlbus throughput ≥ 2 × KServe's.

    python loadtests/bench_inference_kserve.py [--calls 2000] [--seconds 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Benchmark, console, percentile
from _inference_bench import (
    BASELINES,
    INFER_METHOD,
    MODEL,
    MemorySampler,
    build_model,
    free_port,
    memory_mb,
    request_bytes,
    serve_echo,
    start_server,
    stop_process,
)

HERE = Path(__file__).parent
BENCH_INFERENCE = HERE / "bench_inference.py"  # serves mlbus as that benchmark does
KSERVE_VENV = HERE / ".venv-kserve"
KSERVE = "KServe ModelServer"
MLBUS = "mlbus"
CEILING = "canned ModelInfer (ceiling)"
BARE = "bare ModelInfer (grpc.aio + ORT)"


def kserve_python() -> Path:
    """The benchmark-only venv's python, created by kserve_venv.sh when missing."""
    python = KSERVE_VENV / "bin" / "python"
    if not python.exists():
        console.print("creating loadtests/.venv-kserve (kserve from PyPI; once)…")
        setup = subprocess.run(
            ["sh", str(HERE / "kserve_venv.sh")], capture_output=True, text=True, check=False
        )
        if setup.returncode != 0 or not python.exists():
            raise SystemExit(
                "cannot install kserve into loadtests/.venv-kserve:\n"
                + setup.stdout[-2000:]
                + setup.stderr[-2000:]
            )
    return python


def start_kserve(model_path: Path) -> tuple[subprocess.Popen[str], int]:
    grpc_port, http_port = free_port(), free_port()
    process = subprocess.Popen(
        [str(kserve_python()), str(HERE / "kserve_server.py")],
        env={
            **os.environ,
            "KSERVE_MODEL_PATH": str(model_path),
            "KSERVE_MODEL_NAME": MODEL,
            "KSERVE_GRPC_PORT": str(grpc_port),
            "KSERVE_HTTP_PORT": str(http_port),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise SystemExit("the KServe server did not start (run loadtests/kserve_server.py by hand)")
    deadline = time.monotonic() + 60
    while True:  # the gRPC server starts a moment after the model is loaded
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", grpc_port)) == 0:
                break
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise SystemExit("the KServe gRPC port never opened")
        time.sleep(0.1)
    return process, grpc_port


def tritonload(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(HERE / "kserve_tritonload.py"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"tritonclient load failed: {done.stderr[-2000:]}")
    result: dict[str, object] = json.loads(done.stdout)
    return result


async def one_response(address: str) -> bytes:
    """mlbus's ModelInfer response to the benchmark's request, as bytes on the wire."""
    import grpc.aio

    async with grpc.aio.insecure_channel(address) as channel:
        response: bytes = await channel.unary_unary(INFER_METHOD)(request_bytes())
    return response


def main(calls: int, seconds: float, repeats: int, inflight: int, connections: int) -> bool:
    bench = Benchmark(
        "inference_kserve",
        "mlbus vs KServe's Python ModelServer: same ONNX model, same tritonclient gRPC load",
        calls=calls,
        seconds=seconds,
        repeats=repeats,
        inflight=inflight,
        connections=connections,
    )
    version = subprocess.run(
        [str(kserve_python()), "-m", "pip", "show", "kserve"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    bench.parameters["kserve"] = next(
        (line.split()[-1] for line in version.splitlines() if line.startswith("Version")), "?"
    )
    processes: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_path = folder / "model.onnx"
        build_model(model_path)
        try:
            kserve_process, kserve_port = start_kserve(model_path)
            processes.append(kserve_process)
            mlbus_process, mlbus_port = start_server(
                BENCH_INFERENCE, "mlbus", str(model_path), str(folder)
            )
            processes.append(mlbus_process)
            canned = folder / "response.bin"
            canned.write_bytes(asyncio.run(one_response(f"127.0.0.1:{mlbus_port}")))
            ceiling_process, ceiling_port = start_server(__file__, "canned", str(canned))
            processes.append(ceiling_process)
            bare_process, bare_port = start_server(BASELINES, "bare", str(model_path))
            processes.append(bare_process)
            servers = {
                MLBUS: (f"127.0.0.1:{mlbus_port}", mlbus_process.pid),
                KSERVE: (f"127.0.0.1:{kserve_port}", kserve_process.pid),
                CEILING: (f"127.0.0.1:{ceiling_port}", ceiling_process.pid),
                BARE: (f"127.0.0.1:{bare_port}", bare_process.pid),
            }
            for name, (_, pid) in servers.items():
                bench.record(name, "idle RSS", memory_mb(pid)[0], "MB", higher_is_better=False)
            per_run: list[float] = []  # interleaved runs: each ratio shares its noise
            failed = dict.fromkeys(servers, 0)
            for run in range(repeats):
                line = []
                rates: dict[str, float] = {}
                for name, (url, pid) in servers.items():
                    latencies = tritonload(url, MODEL, "latency", str(calls))["latencies_ms"]
                    assert isinstance(latencies, list)
                    sampler = MemorySampler([pid])
                    with sampler.running():
                        result = tritonload(
                            url, MODEL, "throughput", str(seconds), str(inflight), str(connections)
                        )
                    # "requests" are the answered calls; failed ones are "errors", and any
                    # fails the run (below): a peer that fails calls is slower for it, and
                    # the ratio would flatter whichever server did not fail.
                    rate = float(result["requests"]) / float(result["seconds"])  # type: ignore[arg-type]
                    errors = float(result["errors"])  # type: ignore[arg-type]
                    failed[name] += int(errors)
                    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
                    bench.record(name, "p50", p50, "ms", higher_is_better=False)
                    bench.record(name, "p99", p99, "ms", higher_is_better=False)
                    bench.record(name, "throughput", rate, "req/s", higher_is_better=True)
                    bench.record(name, "errors", errors, "calls", higher_is_better=False)
                    bench.record(
                        name, "RSS under load", sampler.peak[pid][0], "MB", higher_is_better=False
                    )
                    rates[name] = rate
                    line.append(f"{name} p50 {p50:.3f} ms p99 {p99:.3f} ms {rate:,.0f} req/s")
                per_run.append(rates[MLBUS] / rates[KSERVE])
                console.print(f"run {run + 1}/{repeats}: " + "; ".join(line))
        finally:
            for process in processes:
                stop_process(process, 15)
    bench.goal(
        "throughput vs KServe (same tritonclient load)", MLBUS, KSERVE, "throughput", ">=", 2.0
    )
    bench.notes.append("throughput mlbus/KServe per run: " + ", ".join(f"{r:.2f}" for r in per_run))
    bench.notes.append(
        f"ceiling: a canned ModelInfer answers {bench.ratio(CEILING, KSERVE, 'throughput'):.2f}× "
        f"KServe's throughput and mlbus reaches {bench.ratio(MLBUS, CEILING, 'throughput'):.2f}× "
        "the ceiling's, under the same load on the same cores"
    )
    bench.notes.append(
        f"bare ModelInfer: {bench.ratio(BARE, KSERVE, 'throughput'):.2f}× KServe's throughput; "
        f"mlbus reaches {bench.ratio(MLBUS, BARE, 'throughput'):.2f}× the bare server's"
    )
    bench.notes.append(
        f"p50 mlbus/KServe = {bench.ratio(MLBUS, KSERVE, 'p50'):.2f}, "
        f"p99 mlbus/KServe = {bench.ratio(MLBUS, KSERVE, 'p99'):.2f}"
    )
    met = bench.report()
    if any(failed.values()):
        # A comparison with a server that failed calls compares nothing: not a pass.
        console.print(f"[red]failed calls under load: {failed} (goal: none)[/]")
    return met and not any(failed.values())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:  # canned RESPONSE_FILE
        serve_echo(canned=Path(args.serve[1]).read_bytes(), method=INFER_METHOD)
        sys.exit(0)
    ok = main(args.calls, args.seconds, args.repeats, args.inflight, args.connections)
    sys.exit(0 if ok else 1)
