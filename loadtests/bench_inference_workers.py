"""Saturated ModelInfer throughput with 1 and 2 worker processes, and resident memory per worker.

`python -m mlbus.inference --workers N` runs as it would in production (the
supervisor spawns N servers on one port; N=1 is the plain single process),
following the embedded broker; the model (LogisticRegression, 20 FP32
features, as in bench_inference.py) arrives as a real `model.published`.
The load comes from separate client processes (`--clients`, default 2), each
keeping `--inflight` calls going over `--connections` TCP connections: the
kernel spreads connections, not calls, over the workers. Two same-run
baselines, one process each, same payload, same load:

- a bare `grpc.aio` echo server (the throughput goal's baseline);
- a bare ModelInfer server: grpc.aio + protobuf + ONNX Runtime on the same
  model and nothing else (`serve_bare_model`). Its memory is the floor of any
  Python Open Inference Protocol server on this stack; mlbus's RSS minus it is
  what mlbus itself holds (settings, pydantic, Kafka, telemetry, its code).

Memory: VmRSS (and PSS) of every server process, read from /proc while the
load runs; the maximum per process is reported. Goal (issue #7): ≤ 100 MB
per worker. The machine has 2 cores shared by servers and clients, so two
workers cannot double anything here: the gain is reported, not a goal.

    python loadtests/bench_inference_workers.py [--seconds 4] [--repeats 3] [--clients 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import grpc
import grpc.aio

from _harness import Benchmark, console
from _inference_bench import (
    BASELINES,
    ECHO,
    ECHO_METHOD,
    INFER_METHOD,
    MODEL,
    MemorySampler,
    build_model,
    free_port,
    memory_mb,
    model_published,
    publish,
    request_bytes,
    start_server,
    stop_process,
)

BARE = "bare ModelInfer (grpc.aio + ORT)"
ONE = "mlbus 1 worker"
TWO = "mlbus 2 workers"


# ── processes ────────────────────────────────────────────────────────────────


class Workers:
    """`python -m mlbus.inference --workers N` with its stderr collected."""

    def __init__(
        self,
        n: int,
        bootstrap: str,
        folder: Path,
        log: bool,
        *,
        model: str = MODEL,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """`settings`: more MLBUS_* variables (a spec and Redis for Predict)."""
        self.n = n
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLBUS_")}
        env |= {
            "MLBUS_DATA_DIR": str(folder / f"data-{n}"),
            "MLBUS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "MLBUS_INFERENCE_GRPC_HOST": "127.0.0.1",
            "MLBUS_INFERENCE_GRPC_PORT": str(self.port),
            "MLBUS_INFERENCE_MODELS": model,
            "MLBUS_INFERENCE_PREDICTION_LOG": "true" if log else "false",
            "MLBUS_INFERENCE_SHUTDOWN_GRACE_S": "1",
            **(settings or {}),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlbus.inference", "--workers", str(n)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_following(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while sum("following mlbus.model.published" in line for line in self.lines) < self.n:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("workers did not start:\n" + "".join(self.lines))
            time.sleep(0.1)

    def server_pids(self) -> list[int]:
        """The processes that serve: the workers (N > 1) or the process itself."""
        if self.n == 1:
            return [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = [int(p) for p in children.read_text().split()]
        return [p for p in pids if "resource_tracker" not in _cmdline(p)]

    def stop(self) -> None:
        stop_process(self.process, 30)


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    return ""


async def wait_all_loaded(port: int, workers: int, payload: bytes, timeout_s: float = 60) -> None:
    """Fresh connections until `workers` distinct processes answered ModelInfer."""
    from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb
    from mlbus.inference import WORKER_PARAMETER

    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(seen)} of {workers} workers loaded the model")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                raw = await channel.unary_unary(INFER_METHOD)(payload, timeout=5)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
                continue
        response = pb.ModelInferResponse.FromString(raw)
        seen.add(response.parameters[WORKER_PARAMETER].int64_param)


# ── load (in client processes) ───────────────────────────────────────────────


async def load(
    address: str, method: str, payload: bytes, seconds: float, inflight: int, connections: int
) -> dict[str, float]:
    options = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(connections)]
    calls = [channel.unary_unary(method) for channel in channels]
    for call in calls:
        for _ in range(20):
            await call(payload)
    done = errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
        nonlocal done, errors
        while time.perf_counter() < deadline:
            try:
                await call(payload)
                done += 1
            except grpc.aio.AioRpcError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(calls[i % connections]) for i in range(inflight)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return {"requests": done, "seconds": elapsed, "errors": errors}


def run_load(
    address: str, method: str, clients: int, seconds: float, inflight: int, connections: int
) -> tuple[float, int]:
    """(requests/s, errors) summed over `clients` load processes started together."""
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--load",
                address,
                method,
                str(seconds),
                str(inflight),
                str(connections),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    results = [json.loads(p.communicate(timeout=seconds + 120)[0]) for p in processes]
    rate = sum(r["requests"] / r["seconds"] for r in results)
    return rate, int(sum(r["errors"] for r in results))


# ── main ─────────────────────────────────────────────────────────────────────


def main(
    seconds: float, repeats: int, clients: int, inflight: int, connections: int, log: bool
) -> bool:
    from mlbus.runtime import EmbeddedBroker

    bench = Benchmark(
        "inference_workers",
        "saturated ModelInfer throughput, 1 vs 2 worker processes; RSS per worker under load",
        seconds=seconds,
        repeats=repeats,
        clients=clients,
        inflight_per_client=inflight,
        connections_per_client=connections,
        prediction_log=log,
    )
    payload = request_bytes()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "logs") as broker:
        folder = Path(tmp)
        model_path = folder / "model.onnx"
        build_model(model_path)
        echo_process, echo_port = start_server(BASELINES, "echo")
        bare_process, bare_port = start_server(BASELINES, "bare", str(model_path))
        servers = {ONE: Workers(1, broker.bootstrap_servers, folder, log)}
        servers[TWO] = Workers(2, broker.bootstrap_servers, folder, log)
        try:
            for server in servers.values():
                server.wait_following()
            event = model_published(1, None, model_path, model_path.read_bytes())
            asyncio.run(publish(broker.bootstrap_servers, event))
            for server in servers.values():
                asyncio.run(wait_all_loaded(server.port, server.n, payload))
            pids = {name: server.server_pids() for name, server in servers.items()}
            supervisor = servers[TWO].process.pid
            bench.parameters["server_pids"] = pids
            targets = {
                ECHO: (f"127.0.0.1:{echo_port}", ECHO_METHOD, [echo_process.pid]),
                BARE: (f"127.0.0.1:{bare_port}", INFER_METHOD, [bare_process.pid]),
                **{
                    name: (f"127.0.0.1:{server.port}", INFER_METHOD, pids[name])
                    for name, server in servers.items()
                },
            }
            for run in range(repeats):
                line = []
                for name, (address, method, server_pids) in targets.items():
                    sampler = MemorySampler(server_pids)
                    with sampler.running():
                        rate, errors = run_load(
                            address, method, clients, seconds, inflight, connections
                        )
                    bench.record(name, "throughput", rate, "req/s", higher_is_better=True)
                    bench.record(name, "errors", errors, "calls", higher_is_better=False)
                    rss = max(peak[0] for peak in sampler.peak.values())
                    pss = max(peak[1] for peak in sampler.peak.values())
                    bench.record(name, "max RSS per worker", rss, "MB", higher_is_better=False)
                    bench.record(name, "max PSS per worker", pss, "MB", higher_is_better=False)
                    line.append(f"{name} {rate:,.0f} req/s")
                rss_sup, _ = memory_mb(supervisor)
                bench.record(TWO, "supervisor RSS", rss_sup, "MB", higher_is_better=False)
                console.print(f"run {run + 1}/{repeats}: " + ", ".join(line))
        finally:
            for server in servers.values():
                server.stop()
            stop_process(echo_process)
            stop_process(bare_process)
    bench.goal("throughput, one process vs echo", ONE, ECHO, "throughput", ">=", 0.7)
    gain = bench.ratio(TWO, ONE, "throughput")
    bench.notes.append(
        f"2 workers / 1 worker throughput = {gain:.2f} (reported, not a goal: 2 cores shared "
        f"by {clients} client processes and the servers)"
    )
    floor = bench.median(BARE, "max RSS per worker")
    bench.notes.append(
        f"{BARE}: {bench.ratio(BARE, ECHO, 'throughput'):.2f}x echo's throughput, max RSS "
        f"{floor:.0f} MB (echo alone: {bench.median(ECHO, 'max RSS per worker'):.0f} MB): "
        "the floor under any Python ModelInfer server on this stack"
    )
    for name in (ONE, TWO):
        rss = bench.median(name, "max RSS per worker")
        pss = bench.median(name, "max PSS per worker")
        bench.notes.append(
            f"{name}: max RSS per worker {rss:.0f} MB (goal <= 100 MB: "
            f"{'met' if rss <= 100 else 'NOT met'}), PSS {pss:.0f} MB; "
            f"{rss - floor:+.0f} MB over the bare server's"
        )
    return bench.report() and all(
        bench.median(name, "max RSS per worker") <= 100 for name in (ONE, TWO)
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--inflight", type=int, default=16, help="calls in flight per client")
    parser.add_argument("--connections", type=int, default=4, help="TCP connections per client")
    parser.add_argument("--log", action="store_true", help="log predictions to the broker")
    parser.add_argument("--load", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        address, method, secs, flight, conns = args.load
        result = asyncio.run(
            load(address, method, request_bytes(), float(secs), int(flight), int(conns))
        )
        print(json.dumps(result))
        sys.exit(0)
    ok = main(args.seconds, args.repeats, args.clients, args.inflight, args.connections, args.log)
    sys.exit(0 if ok else 1)
