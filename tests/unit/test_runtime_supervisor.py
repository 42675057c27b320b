"""Restart policy, supervised services with fake children, the service catalogue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlbus.config import MlbusSettings
from mlbus.runtime import SERVICES, RestartPolicy, ServiceSpec
from mlbus.runtime._services import split_installed
from mlbus.runtime._supervisor import RestartTracker, ServiceProcess, terminate_all

FAST = RestartPolicy(
    backoff_base_s=0.01, backoff_cap_s=0.05, stable_after_s=30, max_rapid_crashes=3
)


def poll_until(service: ServiceProcess, done: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"{service.name} stuck in {service.status}"
        service.poll(time.monotonic())
        time.sleep(0.01)


@pytest.fixture
def services() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    terminate_all([s.proc for s in started if s.proc is not None], grace_s=5)


def python_service(name: str, code: str) -> ServiceSpec:
    return ServiceSpec(name, f"fake.{name}", argv=(sys.executable, "-c", code))


def test_delays_double_from_the_base_up_to_the_cap() -> None:
    policy = RestartPolicy(backoff_base_s=0.5, backoff_cap_s=3.0)
    assert [policy.delay_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay_s(10_000) == 3.0


def test_tracker_gives_up_on_the_nth_rapid_crash() -> None:
    tracker = RestartTracker(
        RestartPolicy(backoff_base_s=1, stable_after_s=10, max_rapid_crashes=3)
    )
    tracker.started(0.0)
    assert tracker.crashed(1.0) == 1.0
    tracker.started(2.0)
    assert tracker.crashed(3.0) == 2.0
    tracker.started(5.0)
    assert tracker.crashed(6.0) is None
    assert tracker.restarts == 2
    assert tracker.rapid_crashes == 3


def test_a_crash_after_a_stable_run_starts_the_count_again() -> None:
    tracker = RestartTracker(
        RestartPolicy(backoff_base_s=1, stable_after_s=10, max_rapid_crashes=3)
    )
    tracker.started(0.0)
    assert tracker.crashed(1.0) == 1.0
    tracker.started(2.0)
    assert tracker.crashed(3.0) == 2.0
    tracker.started(5.0)
    assert tracker.crashed(100.0) == 1.0  # ran 95 s: stable, so this is crash 1 again
    assert tracker.rapid_crashes == 1


def test_a_child_that_always_crashes_is_restarted_then_given_up(
    tmp_path: Path, services: list[ServiceProcess]
) -> None:
    spec = python_service("crasher", "print('boom', flush=True); raise SystemExit(3)")
    service = ServiceProcess(spec, env={}, log_path=tmp_path / "crasher.log", policy=FAST)
    services.append(service)
    service.start(time.monotonic())

    poll_until(service, lambda: service.status == "failed")

    state = service.state()
    assert state.restarts == FAST.max_rapid_crashes - 1
    assert state.pid is None
    assert (tmp_path / "crasher.log").read_text().count("boom") == FAST.max_rapid_crashes


def test_a_child_that_crashes_once_is_restarted_and_keeps_running(
    tmp_path: Path, services: list[ServiceProcess]
) -> None:
    marker = tmp_path / "crashed-once"
    past = tmp_path / "past-the-crash"
    code = (
        "import pathlib, sys, time\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.touch(); sys.exit(1)\n"
        f"pathlib.Path({str(past)!r}).touch()\n"
        "time.sleep(600)\n"
    )
    service = ServiceProcess(
        python_service("flaky", code), env={}, log_path=tmp_path / "flaky.log", policy=FAST
    )
    services.append(service)
    service.start(time.monotonic())
    first_pid = service.state().pid

    poll_until(service, lambda: service.tracker.restarts == 1 and service.status == "running")
    # No window to wait out for a second crash: the child says when it is past the only
    # point where it exits, and is still running after that.
    poll_until(service, past.exists)
    service.poll(time.monotonic())

    state = service.state()
    assert state.status == "running"
    assert state.restarts == 1
    assert state.pid is not None
    assert state.pid != first_pid


def test_service_gets_its_ports_and_the_shared_settings(tmp_path: Path) -> None:
    settings = MlbusSettings(data_dir=tmp_path).model_copy(deep=True)
    settings.kafka.bootstrap_servers = "127.0.0.1:1234"
    spec = next(s for s in SERVICES if s.name == "inference")

    env = spec.environment(settings, grpc_port=18001, metrics_port=19001)

    assert env["MLBUS_INFERENCE_GRPC_PORT"] == "18001"
    assert env["MLBUS_TELEMETRY_METRICS_PORT"] == "19001"
    assert env["MLBUS_KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:1234"
    assert env["MLBUS_DATA_DIR"] == str(tmp_path.resolve())
    assert spec.command() == [sys.executable, "-m", "mlbus.inference"]


def test_services_that_call_the_registry_are_told_where_it_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    settings = MlbusSettings(data_dir=tmp_path)
    callers = [s for s in SERVICES if s.calls_registry]
    assert {s.name for s in callers} == {"trainer", "inference", "drift", "outcomes", "console"}
    for spec in SERVICES:
        env = spec.environment(settings, None, None, registry_address="127.0.0.1:18002")
        variable = f"MLBUS_{spec.name.upper()}_REGISTRY_ADDRESS"
        assert (variable in env) == spec.calls_registry
    for spec in callers:
        # The variable is a real settings field of that service, read as given.
        env = spec.environment(settings, None, None, registry_address="127.0.0.1:18002")
        module = importlib.import_module(spec.module)
        settings_class = getattr(module, f"{spec.name.capitalize()}Settings")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        loaded = settings_class()
        assert loaded.registry_address == "127.0.0.1:18002"


def test_catalogue_names_every_service_and_their_grpc_ports() -> None:
    assert [s.name for s in SERVICES] == [
        "ingestion",
        "features",
        "trainer",
        "registry",
        "inference",
        "drift",
        "outcomes",
        "console",
    ]
    ports = {s.name: s.grpc_port for s in SERVICES if s.serves_grpc}
    assert ports["inference"] == 8001
    assert set(ports) == {"features", "registry", "inference", "outcomes"}
    assert len(set(ports.values())) == len(ports)
    assert {s.name: s.http_port for s in SERVICES if s.serves_http} == {"console": 8080}


def test_an_http_service_is_told_its_port_and_reported_by_url(tmp_path: Path) -> None:
    console = next(s for s in SERVICES if s.name == "console")
    env = console.environment(MlbusSettings(data_dir=tmp_path), None, 19001, None, 18080)
    assert env["MLBUS_CONSOLE_HTTP_PORT"] == "18080"
    assert "MLBUS_CONSOLE_GRPC_PORT" not in env


def test_only_installed_services_run() -> None:
    present = ServiceSpec("json", "json")
    absent = ServiceSpec("nope", "mlbus.no_such_service_here")
    explicit = ServiceSpec("fake", "fake.module", argv=("true",))

    installed, missing = split_installed([present, absent, explicit])

    assert installed == [present, explicit]
    assert missing == [absent]


def test_terminate_all_kills_a_child_that_ignores_sigterm() -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    stubborn = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    assert stubborn.stdout is not None
    assert stubborn.stdout.readline() == b"ready\n"
    stubborn.stdout.close()

    terminate_all([stubborn, polite], grace_s=0.5)

    assert stubborn.returncode == -signal.SIGKILL
    assert polite.returncode == -signal.SIGTERM


def test_a_spawned_child_dies_with_its_parent_even_when_the_parent_is_killed(
    tmp_path: Path,
) -> None:
    parent_code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from mlbus.runtime._process import spawn\n"
        "child = spawn([sys.executable, '-c', 'import time; time.sleep(600)'],"
        f" Path({str(tmp_path / 'child.log')!r}))\n"
        "print(child.pid, flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert os.getpgid(child_pid) == child_pid  # its own group: Ctrl-C reaches the parent only
    deadline = time.monotonic() + 10  # the guard has exec'd once the command line says so
    while (
        b"sleep(600)" not in Path(f"/proc/{child_pid}/cmdline").read_bytes()
        or _state(child_pid) != "S"  # started and asleep, not still starting up
    ):
        assert time.monotonic() < deadline, "the child never became its command"
        time.sleep(0.05)

    parent.kill()
    parent.wait()
    parent.stdout.close()

    deadline = time.monotonic() + 30
    while Path(f"/proc/{child_pid}").exists() and _state(child_pid) != "Z":
        assert time.monotonic() < deadline, "the child outlived its killed parent"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
