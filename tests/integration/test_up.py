"""`mlbus up` and `mlbus status` as real processes: embedded broker and Redis, a clean
Ctrl-C, children dying with a killed supervisor, crashed services reported unhealthy."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from mlbus.config import DataDir
from mlbus.events import ALL_TOPICS
from mlbus.runstate import RunState, pid_alive, read_state
from mlbus.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SPEC = Path(__file__).resolve().parents[2] / "examples" / "fraud" / "mlbus.yaml"
CLI = [sys.executable, "-c", "from mlbus.cli import main; main()"]
START_TIMEOUT_S = 40.0
STOP_TIMEOUT_S = 25.0

# A supervisor with a fake catalogue: one service that sleeps, one that always crashes.
FAKE_UP = """
import sys
from pathlib import Path
from mlbus.config import MlbusSettings
from mlbus.runtime import RestartPolicy, ServiceSpec, Supervisor

sleep, crash = "import time; time.sleep(600)", "raise SystemExit(7)"
services = [
    ServiceSpec("sleeper", "fake.sleeper", argv=(sys.executable, "-c", sleep)),
    ServiceSpec("crasher", "fake.crasher", argv=(sys.executable, "-c", crash)),
]
policy = RestartPolicy(backoff_base_s=0.05, backoff_cap_s=0.2, max_rapid_crashes=2)
settings = MlbusSettings(data_dir=Path(sys.argv[1]))
sys.exit(Supervisor(settings, services=services, embedded_redis=True, policy=policy).run())
"""


def child_env() -> dict[str, str]:
    """This environment without any configured broker, Redis or data folder."""
    dropped = ("MLBUS_KAFKA_BOOTSTRAP_SERVERS", "MLBUS_REDIS_URL", "REDIS_URL", "MLBUS_DATA_DIR")
    return {k: v for k, v in os.environ.items() if k not in dropped}


def wait_for(
    what: str, check: Callable[[], Any], timeout_s: float, proc: subprocess.Popen[bytes]
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if proc.poll() is not None:
            pytest.fail(f"supervisor exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def status(data_dir: Path) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [*CLI, "status", "--json", "--data-dir", str(data_dir), "--timeout", "5"],
        capture_output=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    return done.returncode, json.loads(done.stdout)


def running_state(data_dir: Path, *services: str) -> Callable[[], RunState | None]:
    def check() -> RunState | None:
        state = read_state(DataDir(data_dir))
        if state is None or state.status != "running":
            return None
        if any(state.services.get(name) is None for name in services):
            return None
        return state

    return check


def assert_all_gone(pids: dict[str, int], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while alive := {name: pid for name, pid in pids.items() if pid_alive(pid)}:
        assert time.monotonic() < deadline, f"still running: {alive}"
        time.sleep(0.05)


async def produce(bootstrap_servers: str, topic: str) -> Any:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    await producer.start()
    try:
        return await producer.send_and_wait(topic, b"{}")
    finally:
        await producer.stop()


async def list_topics(bootstrap_servers: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed if the test leaves them running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start_up(
    argv: list[str], log: Path, procs: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=child_env())
    procs.append(proc)
    return proc


def test_up_runs_broker_and_embedded_redis_and_ctrl_c_stops_everything(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    data_dir = tmp_path / "data"
    argv = [*CLI, "up", "--data-dir", str(data_dir), "--embedded-redis", "--spec", str(SPEC)]
    up = start_up(argv, tmp_path / "up.log", started)

    def healthy() -> dict[str, Any] | None:
        code, report = status(data_dir)
        return report if code == 0 else None

    wait_for("the run to start", running_state(data_dir), START_TIMEOUT_S, up)
    report = wait_for("a healthy status", healthy, START_TIMEOUT_S, up)
    broker, redis = report["components"]["broker"], report["components"]["redis"]
    assert broker["healthy"]
    assert broker["embedded"]
    assert redis["healthy"]
    assert redis["embedded"]
    assert redis["address"].startswith("redis://127.0.0.1:")
    assert report["supervisor"]["pid"] == up.pid
    assert (data_dir / "logs" / "broker.log").exists()

    sent = asyncio.run(produce(broker["address"], "mlbus.training.requested.v1"))
    assert sent.topic == "mlbus.training.requested.v1"
    topics = set(asyncio.run(list_topics(broker["address"])))
    assert topics >= {*ALL_TOPICS, *load_spec(SPEC).topics()}

    second = subprocess.run(
        [*CLI, "up", "--data-dir", str(data_dir)],
        capture_output=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert f"already running in {data_dir.resolve()} (pid {up.pid})" in " ".join(
        second.stderr.decode().split()
    )

    state = read_state(DataDir(data_dir))
    assert state is not None
    pids = state.pids()
    # Broker, Redis, and every service installed in this checkout (each must stop too).
    assert set(pids) == {"broker", "redis", *state.services}

    up.send_signal(signal.SIGINT)
    assert up.wait(timeout=STOP_TIMEOUT_S) == 0, (tmp_path / "up.log").read_text()
    assert_all_gone(pids)
    assert not (data_dir / "run" / "state.json").exists()
    code, report = status(data_dir)
    assert code == 3
    assert report["supervisor"] is None


def test_status_reports_a_crashed_service_unhealthy_and_sigterm_stops_all(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    data_dir = tmp_path / "data"
    up = start_up([sys.executable, "-c", FAKE_UP, str(data_dir)], tmp_path / "up.log", started)

    def crasher_failed() -> RunState | None:
        state = running_state(data_dir, "sleeper", "crasher")()
        return state if state and state.services["crasher"].status == "failed" else None

    state = wait_for("the crasher to be given up", crasher_failed, START_TIMEOUT_S, up)
    assert state.services["crasher"].restarts == 1
    assert state.services["sleeper"].status == "running"

    code, report = status(data_dir)
    assert code == 1
    components = report["components"]
    assert components["broker"]["healthy"]
    assert components["redis"]["healthy"]
    assert components["sleeper"]["healthy"]
    assert not components["crasher"]["healthy"]
    assert components["crasher"]["status"] == "failed"

    pids = state.pids()
    assert set(pids) == {"broker", "redis", "sleeper"}
    up.send_signal(signal.SIGTERM)
    assert up.wait(timeout=STOP_TIMEOUT_S) == 0, (tmp_path / "up.log").read_text()
    assert_all_gone(pids)
    assert not (data_dir / "run" / "state.json").exists()


def test_children_die_with_a_killed_supervisor_and_its_state_is_stale(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    data_dir = tmp_path / "data"
    up = start_up([sys.executable, "-c", FAKE_UP, str(data_dir)], tmp_path / "up.log", started)
    state = wait_for("the run to start", running_state(data_dir, "sleeper"), START_TIMEOUT_S, up)
    pids = state.pids()
    assert {"broker", "redis", "sleeper"} <= set(pids)

    up.kill()
    up.wait(timeout=STOP_TIMEOUT_S)

    assert_all_gone(pids)
    assert read_state(DataDir(data_dir)) is not None  # left behind by the crash…
    code, report = status(data_dir)
    assert code == 3  # …and recognised as stale
    assert report["supervisor"] is None


def test_a_killed_embedded_broker_comes_back_on_its_address_with_the_topics(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    data_dir = tmp_path / "data"
    up = start_up([*CLI, "up", "--data-dir", str(data_dir)], tmp_path / "up.log", started)
    state = wait_for("the run to start", running_state(data_dir), START_TIMEOUT_S, up)
    assert state.broker is not None
    assert state.redis is not None
    assert state.redis.embedded  # a Redis on :6379 is only used when named (ADR 0021)
    first_pid, address = state.broker.pid, state.broker.bootstrap_servers
    assert first_pid is not None

    os.kill(first_pid, signal.SIGKILL)

    def restarted() -> RunState | None:
        found = read_state(DataDir(data_dir))
        broker = found.broker if found is not None else None
        return found if broker is not None and broker.restarts == 1 else None

    state = wait_for("the broker to be restarted", restarted, START_TIMEOUT_S, up)
    assert state.broker is not None
    assert state.broker.bootstrap_servers == address
    assert state.broker.pid not in (None, first_pid)

    def healthy() -> dict[str, Any] | None:  # installed services may still be starting
        code, report = status(data_dir)
        return report if code == 0 else None

    report = wait_for("a healthy status", healthy, START_TIMEOUT_S, up)
    assert report["components"]["broker"]["detail"].endswith(f"{len(ALL_TOPICS)} topic(s)")

    pids = state.pids()
    up.send_signal(signal.SIGINT)
    assert up.wait(timeout=STOP_TIMEOUT_S) == 0, (tmp_path / "up.log").read_text()
    assert_all_gone(pids)


def test_status_with_nothing_running_exits_3_and_says_how_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "status", "--data-dir", str(tmp_path)],
        capture_output=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    assert "mlbus up" in done.stderr.decode()
