"""What the inference benchmarks share: the model, the servers they start, the calls they time.

- the model: scikit-learn LogisticRegression on 20 float features via skl2onnx
  (`build_model`), a batch-1 FP32 `ModelInferRequest` as Triton clients send
  it (`request_bytes`) and its `model.published` event (`model_published`);
- the servers, each in its own process (`start_server` runs a benchmark's
  `--serve` and reads the port it prints): a bare `grpc.aio` echo
  (`serve_echo`), the least any Python ModelInfer server does — grpc.aio,
  protobuf and ONNX Runtime, nothing else (`serve_bare_model`) — and an
  `InferenceServer` with the model applied (`serve_inference`). The baselines
  whose memory is reported run from this file (`start_server(BASELINES, …)`),
  not from a benchmark script: those import the report's rich (~5 MB);
- the bare ORT call (`ort_latencies_ms`) and /proc memory (`memory_mb`,
  `MemorySampler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import numpy as np

if TYPE_CHECKING:
    from mlbus.events import ModelPublished, ModelSignature
    from mlbus.inference import InferenceSettings

BASELINES = Path(__file__)  # `python _inference_bench.py --serve echo | bare MODEL_PATH`
FEATURES = 20
MODEL = "bench"
ECHO = "grpc.aio echo"
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
ECHO_METHOD = "/bench.Echo/Echo"


# ── the model ────────────────────────────────────────────────────────────────


def build_model(path: Path, *, seed: int = 0, label_noise: float = 0.0) -> None:
    """A LogisticRegression on 20 features as ONNX; another seed makes a distinct artifact."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(500, FEATURES)).astype(np.float32)
    noise = rng.normal(scale=label_noise, size=500) if label_noise else 0.0
    y = (x[:, 0] - x[:, 1] + noise > 0).astype(int)
    estimator = LogisticRegression().fit(x, y)
    onnx_model = to_onnx(
        estimator,
        initial_types=[("float_input", FloatTensorType([None, FEATURES]))],
        options={id(estimator): {"zipmap": False}},
        target_opset=17,
    )
    path.write_bytes(onnx_model.SerializeToString())


def feature_row() -> np.ndarray:
    """The one FP32 row every call sends."""
    return np.random.default_rng(1).normal(size=(1, FEATURES)).astype("<f4")


def request_bytes() -> bytes:
    from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[{"name": "float_input", "datatype": "FP32", "shape": [1, FEATURES]}],
        raw_input_contents=[feature_row().tobytes()],
    )
    serialized: bytes = request.SerializeToString()
    return serialized


def model_published(
    version: int,
    previous_version: int | None,
    path: Path,
    data: bytes,
    *,
    model: str = MODEL,
    signature: ModelSignature | None = None,
) -> ModelPublished:
    """The artifact at `path` (its bytes: `data`) published as `model`'s champion.

    `signature` defaults to `build_model`'s, written out rather than read from
    a session: the swap benchmark publishes while its load runs.
    """
    from mlbus.events import ModelPublished, ModelSignature, TensorSpec

    return ModelPublished(
        model=model,
        alias="champion",
        version=version,
        previous_version=previous_version,
        artifact_uri=path.as_uri(),
        sha256=hashlib.sha256(data).hexdigest(),
        signature=signature
        if signature is not None
        else ModelSignature(
            inputs=(TensorSpec(name="float_input", datatype="FP32", shape=(-1, FEATURES)),),
            outputs=(
                TensorSpec(name="label", datatype="INT64", shape=(-1,)),
                TensorSpec(name="probabilities", datatype="FP32", shape=(-1, 2)),
            ),
        ),
        reason="benchmark",
        actor="loadtests",
    )


async def publish(bootstrap: str, event: ModelPublished) -> None:
    """`event` on `mlbus.model.published.v1` of the broker at `bootstrap` (topic made if new)."""
    from mlbus.bus import Publisher, ensure_topics
    from mlbus.config import KafkaSettings
    from mlbus.events import MODEL_PUBLISHED

    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    await ensure_topics(kafka, [MODEL_PUBLISHED])
    async with Publisher(kafka, source="loadtests") as publisher:
        await publisher.publish(event, key=event.model)


# ── servers (each in its own process) ───────────────────────────────────────


def serve_echo(canned: bytes | None = None, method: str = ECHO_METHOD) -> None:
    """A bare grpc.aio server: answers `method` (`/service/name`) with the request, or with
    `canned` bytes when given."""
    asyncio.run(_serve_echo(canned, method))


async def _serve_echo(canned: bytes | None, method: str) -> None:

    # One handler or the other, not a test per call: the baseline stays as bare as it can be.
    if canned is None:

        async def echo(request: bytes, context: object) -> bytes:
            return request

    else:
        reply = canned

        async def echo(request: bytes, context: object) -> bytes:
            return reply

    await _serve_one(method, grpc.unary_unary_rpc_method_handler(echo))


async def _serve_one(method: str, handler: grpc.RpcMethodHandler) -> None:
    """A bare grpc.aio server (no interceptors) with `handler` for `method`; prints its port."""
    service, name = method.strip("/").split("/")
    generic = grpc.method_handlers_generic_handler(service, {name: handler})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def serve_bare_model(model_path: Path) -> None:
    """A bare ModelInfer server: parse, run ONNX Runtime, answer; prints its port.

    No settings, telemetry, interceptors, checks, versions or Kafka: the floor
    of what a Python Open Inference Protocol server on this stack (grpc,
    protobuf, numpy, ONNX Runtime) holds in memory and spends per call.
    """
    asyncio.run(_serve_bare_model(model_path))


async def _serve_bare_model(model_path: Path) -> None:
    import onnxruntime as ort

    from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb

    options = ort.SessionOptions()
    # One intra-op and one inter-op thread, as mlbus's default (its other options change
    # nothing measurable with one thread).
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [output.name for output in session.get_outputs()]
    datatypes = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64"}

    async def infer(request: Any, context: object) -> Any:
        shape = tuple(request.inputs[0].shape)
        x = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(shape)
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        for name, value in zip(output_names, session.run(None, {input_name: x}), strict=True):
            response.outputs.add(name=name, datatype=datatypes[value.dtype], shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        return response

    handler = grpc.unary_unary_rpc_method_handler(
        infer,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    await _serve_one(INFER_METHOD, handler)


def serve_inference(
    model_path: Path, *, model: str = MODEL, wait_following: bool = False, **settings: Any
) -> None:
    """An `InferenceServer` with `model_path` applied as v1 of `model`; prints its port.

    `settings` are `InferenceSettings` fields besides the port (a free one) and
    the models (`model`). Telemetry is set up as in a service. With
    `wait_following`, the port is printed once the server follows the broker.
    """
    from mlbus.inference import InferenceSettings

    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    inference_settings = InferenceSettings(grpc_port=0, models=(model,), **settings)
    asyncio.run(_serve_inference(model_path, digest, model, wait_following, inference_settings))


async def _serve_inference(
    model_path: Path,
    digest: str,
    model: str,
    wait_following: bool,
    inference_settings: InferenceSettings,
) -> None:
    from mlbus.inference import InferenceServer, Publication
    from mlbus.telemetry import setup_telemetry

    telemetry = setup_telemetry("inference", inference_settings)
    try:
        async with InferenceServer(inference_settings, host="127.0.0.1") as server:
            publication = Publication(model, 1, model_path.as_uri(), digest, None, "champion")
            if not await server.reloader.apply(publication):
                raise SystemExit(f"model refused: {server.reloader.stats.last_refusal}")
            if wait_following:
                await asyncio.wait_for(server.following.wait(), 60)
            print(server.port, flush=True)
            await asyncio.Event().wait()
    finally:
        telemetry.shutdown()


def start_server(script: str | Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    """Run `script --serve ARGS` and wait for the port it prints on stdout."""
    process = subprocess.Popen(
        [sys.executable, str(script), "--serve", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLBUS_TELEMETRY_LOG_LEVEL": "WARNING"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise SystemExit(f"{Path(script).name} --serve {args[0]}: the server did not start")
    return process, int(line)


def stop_process(process: subprocess.Popen[str], timeout_s: float = 10) -> None:
    """Terminate; kill when it does not exit within `timeout_s`."""
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ── measurements ─────────────────────────────────────────────────────────────


def ort_run(model_path: Path, row: np.ndarray) -> Callable[[], object]:
    """A warmed-up `InferenceSession.run` on `row` (1 intra/1 inter thread, as mlbus)."""
    import onnxruntime as ort

    from mlbus.inference import OrtThreads

    session = ort.InferenceSession(
        str(model_path),
        sess_options=OrtThreads().session_options(),
        providers=["CPUExecutionProvider"],
    )
    feed = {session.get_inputs()[0].name: row}
    for _ in range(200):  # warm up
        session.run(None, feed)
    return lambda: session.run(None, feed)


def ort_latencies_ms(model_path: Path, row: np.ndarray, calls: int) -> list[float]:
    """`InferenceSession.run` on `row`, one call at a time."""
    run = ort_run(model_path, row)
    values = []
    for _ in range(calls):
        started = time.perf_counter()
        run()
        values.append((time.perf_counter() - started) * 1000)
    return values


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB from /proc; PSS splits shared pages between the processes sharing them."""
    rss = pss = 0.0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
    return rss, pss


class MemorySampler:
    """Samples RSS/PSS of `pids` every 100 ms in a thread; keeps the maximum of each."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.peak: dict[int, tuple[float, float]] = dict.fromkeys(pids, (0.0, 0.0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for pid in self.peak:
                rss, pss = memory_mb(pid)
                old = self.peak[pid]
                self.peak[pid] = (max(old[0], rss), max(old[1], pss))

    @contextlib.contextmanager
    def running(self) -> Iterator[MemorySampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


if __name__ == "__main__":  # the baselines, in processes that import only what they serve with
    if sys.argv[1:3] == ["--serve", "echo"] and len(sys.argv) == 3:
        serve_echo()
    elif sys.argv[1:3] == ["--serve", "bare"] and len(sys.argv) == 4:
        serve_bare_model(Path(sys.argv[3]))
    else:
        raise SystemExit("usage: _inference_bench.py --serve echo | --serve bare MODEL_PATH")
