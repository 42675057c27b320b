"""`python -m mlbus.inference --workers 2`: two processes on one port, both reload, stop together.

The service runs as a real subprocess tree (supervisor + 2 spawned workers)
against the embedded broker; which worker answered is read from the
`mlbus.worker_pid` response parameter. Connections, not calls, are spread by
SO_REUSEPORT, so every probe opens a fresh channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest

from mlbus.api.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from mlbus.bus import Publisher
from mlbus.config import KafkaSettings
from mlbus.errors import ConfigError
from mlbus.inference import WORKER_PARAMETER
from mlbus.inference._workers import reserve_port
from tests.integration.test_inference import (
    FEATURES,
    infer_request,
    output_of,
    publication,
    published_event,
)

pytestmark = pytest.mark.integration

WORKERS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    process: asyncio.subprocess.Process
    port: int
    lines: list[str] = field(default_factory=list)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_for_lines(self, text: str, n: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count(text) < n:
            if self.process.returncode is not None:
                raise AssertionError(f"the service exited early:\n{''.join(self.lines)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{n}x {text!r} not logged in time:\n{''.join(self.lines)}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def workers_service(
    kafka: KafkaSettings, tmp_path: Path, model: str
) -> AsyncIterator[Service]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLBUS_", "OTEL_"))}
    port = free_port()
    env |= {
        "MLBUS_DATA_DIR": str(tmp_path / "data"),  # no `mlbus up` to discover
        "MLBUS_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers or "",
        "MLBUS_INFERENCE_GRPC_HOST": "127.0.0.1",
        "MLBUS_INFERENCE_GRPC_PORT": str(port),
        "MLBUS_INFERENCE_MODELS": model,
        "MLBUS_INFERENCE_SHUTDOWN_GRACE_S": "1",
        "MLBUS_INFERENCE_PREDICTION_LOG": "false",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlbus.inference",
        "--workers",
        str(WORKERS),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    service = Service(process, port)

    async def read() -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            service.lines.append(line.decode(errors="replace"))

    reading = asyncio.create_task(read())
    try:
        yield service
    finally:
        if process.returncode is None:
            process.kill()  # only if the test failed before stopping it
        await process.wait()
        await reading


async def answer(port: int, model: str) -> tuple[int, int, float]:
    """(worker pid, version, y[0]) from a fresh connection."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        x = np.ones((1, FEATURES), dtype=np.float32)
        response = await stub.ModelInfer(infer_request(model, x), timeout=5)
    pid = response.parameters[WORKER_PARAMETER].int64_param
    return pid, int(response.model_version), float(output_of(response)[0, 0])


async def versions_by_worker(
    port: int, model: str, version: int, failures: list[str], *, first_load: bool
) -> dict[int, int]:
    """Ask over fresh connections until every worker has answered with `version`.

    Every failed request is appended to `failures`, but one: UNAVAILABLE while
    `first_load`, from a worker that has not loaded any version yet. A reload
    must not fail a single request.
    """
    latest: dict[int, int] = {}
    deadline = time.monotonic() + 30
    while sum(v == version for v in latest.values()) < WORKERS:
        if time.monotonic() > deadline:
            raise AssertionError(f"workers did not all reach v{version}: {latest}")
        try:
            pid, answered, y = await answer(port, model)
        except grpc.aio.AioRpcError as exc:
            if not (first_load and exc.code() == grpc.StatusCode.UNAVAILABLE):
                failures.append(f"waiting for v{version}: {exc.code().name}: {exc.details()}")
        else:
            if y != pytest.approx(float(np.linspace(-1, 1, FEATURES).sum()) + answered):
                failures.append(f"v{answered} from pid {pid} computed {y}")
            latest[pid] = answered
        await asyncio.sleep(0.01)
    return latest


ONNXRUNTIME = "onnxruntime_pybind11_state"  # the library `import onnxruntime` maps
GRPC = "cygrpc"  # the library `import grpc` maps


def maps(pid: int, library: str) -> bool:
    """Whether the process has `library` mapped (it imported the package)."""
    return library in Path(f"/proc/{pid}/maps").read_text()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_two_workers_share_the_port_both_reload_and_stop_on_sigterm(
    kafka: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    model = f"m-{unique}"
    async with (
        workers_service(kafka, tmp_path, model) as service,
        Publisher(kafka, source="tests") as publisher,
    ):
        await service.wait_for_lines("following mlbus.model.published.v1", WORKERS)
        failures: list[str] = []
        for version in (1, 2):
            await publisher.publish(
                published_event(publication(tmp_path, model, version), version - 1 or None)
            )
            latest = await versions_by_worker(
                service.port, model, version, failures, first_load=version == 1
            )
            assert len(latest) == WORKERS  # two processes answered on one port
            assert service.process.pid not in latest  # workers, not the supervisor
        # The supervisor only spawns and watches: the serving stack is the workers' alone.
        assert all(maps(pid, ONNXRUNTIME) and maps(pid, GRPC) for pid in latest)
        assert not maps(service.process.pid, ONNXRUNTIME)
        assert not maps(service.process.pid, GRPC)
        assert failures == []  # the v1 → v2 reload failed no request
        service.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(service.process.wait(), 30)
    assert code == 0, "".join(service.lines)
    assert all(gone(pid) for pid in latest)
    assert service.count("inference stopping") == WORKERS


async def test_a_worker_that_dies_stops_the_service_with_an_error(
    kafka: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    model = f"m-{unique}"
    async with (
        workers_service(kafka, tmp_path, model) as service,
        Publisher(kafka, source="tests") as publisher,
    ):
        await service.wait_for_lines("following mlbus.model.published.v1", WORKERS)
        await publisher.publish(published_event(publication(tmp_path, model, 1)))
        failures: list[str] = []
        pids = set(await versions_by_worker(service.port, model, 1, failures, first_load=True))
        assert failures == []
        victim, survivor = sorted(pids)
        os.kill(victim, signal.SIGKILL)
        code = await asyncio.wait_for(service.process.wait(), 30)
    assert code == 1
    report = "".join(service.lines)
    assert f"(pid {victim}) stopped on its own (killed by SIGKILL)" in report, report
    assert gone(survivor)


async def test_the_port_is_checked_held_and_shared_only_by_the_workers() -> None:
    # a gRPC server already there binds with SO_REUSEPORT too: still refused
    other = grpc.aio.server()
    port = other.add_insecure_port("127.0.0.1:0")
    await other.start()
    try:
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*MLBUS_INFERENCE_GRPC_PORT"):
            reserve_port("127.0.0.1", port)
    finally:
        await other.stop(0)

    held = reserve_port("127.0.0.1", 0)  # 0: a concrete port, kept for the workers
    try:
        chosen = held.getsockname()[1]
        assert chosen > 0
        with socket.socket() as intruder, pytest.raises(OSError):
            intruder.bind(("127.0.0.1", chosen))
        worker = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        assert worker.add_insecure_port(f"127.0.0.1:{chosen}") == chosen
        await worker.start()
        try:  # the held socket never listens, so the worker gets the connections
            async with grpc.aio.insecure_channel(f"127.0.0.1:{chosen}") as channel:
                await asyncio.wait_for(channel.channel_ready(), 5)
        finally:
            await worker.stop(0)
    finally:
        held.close()
