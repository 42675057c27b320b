"""Run state: atomic write, read back, stale detection, the folder lock, `discover`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlbus.config import DataDir, MlbusSettings
from mlbus.runstate import (
    BrokerState,
    RedisState,
    RunState,
    ServiceState,
    discover,
    live_state,
    pid_alive,
    read_state,
    remove_state,
    write_state,
)
from mlbus.runtime import AlreadyRunningError, RunLock

DEAD_PID = 2**31 - 1  # above any pid_max: never a live process


@pytest.fixture(autouse=True)
def _no_configured_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLBUS_KAFKA_BOOTSTRAP_SERVERS", "MLBUS_REDIS_URL", "REDIS_URL", "MLBUS_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


def make_state(data: DataDir, pid: int) -> RunState:
    return RunState(
        supervisor_pid=pid,
        status="running",
        data_dir=data.root,
        broker=BrokerState(bootstrap_servers="127.0.0.1:19092", pid=11, embedded=True),
        redis=RedisState(url="redis://127.0.0.1:16379/0", embedded=False),
        services={
            "inference": ServiceState(
                pid=12, status="running", grpc_port=8001, metrics_port=9101, log=data.logs / "i.log"
            )
        },
    )


def test_write_then_read_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    state = make_state(data, os.getpid())

    write_state(data, state)

    assert read_state(data) == state
    assert sorted(p.name for p in data.run.iterdir()) == ["state.json"]


def test_write_replaces_the_previous_state(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    write_state(data, make_state(data, os.getpid()))
    newer = make_state(data, os.getpid())
    newer.services["inference"].restarts = 3

    write_state(data, newer)

    found = read_state(data)
    assert found is not None
    assert found.services["inference"].restarts == 3


def test_missing_or_unreadable_state_reads_as_none(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    assert read_state(data) is None
    data.ensure(data.run)
    data.run_state.write_text("{not json")
    assert read_state(data) is None


def test_state_of_a_dead_supervisor_is_stale(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    write_state(data, make_state(data, DEAD_PID))

    assert read_state(data) is not None
    assert live_state(data) is None


def test_state_of_a_live_supervisor_is_live(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    write_state(data, make_state(data, os.getpid()))

    live = live_state(data)

    assert live is not None
    assert live.grpc_address("inference") == "127.0.0.1:8001"
    assert live.grpc_address("drift") is None
    assert live.pids() == {"broker": 11, "inference": 12}


def test_remove_state_is_idempotent(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    write_state(data, make_state(data, os.getpid()))
    remove_state(data)
    remove_state(data)
    assert not data.run_state.exists()


def test_pid_alive_tells_live_dead_and_zombie_apart() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(DEAD_PID)
    assert not pid_alive(0)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while pid_alive(child.pid):  # exited but not reaped: a zombie counts as gone
            assert time.monotonic() < deadline, "child never exited"
            time.sleep(0.02)
    finally:
        child.wait()


def test_second_lock_on_the_same_folder_is_refused_with_the_holder_pid(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    with RunLock(data):
        with pytest.raises(AlreadyRunningError) as refused:
            RunLock(data).acquire()
        assert f"already running in {data.root} (pid {os.getpid()})" in str(refused.value)
    with RunLock(data):  # released: free again
        pass


def test_locks_on_different_folders_do_not_collide(tmp_path: Path) -> None:
    with RunLock(DataDir(tmp_path / "a")), RunLock(DataDir(tmp_path / "b")):
        pass


def test_taking_the_lock_replaces_a_stale_state(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    write_state(data, make_state(data, DEAD_PID))

    with RunLock(data):
        assert read_state(data) is None


def test_discover_fills_unset_addresses_from_the_running_up(tmp_path: Path) -> None:
    settings = MlbusSettings(data_dir=tmp_path)
    write_state(settings.data, make_state(settings.data, os.getpid()))

    found = discover(settings)

    assert found.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert found.redis.url == "redis://127.0.0.1:16379/0"
    assert settings.kafka.bootstrap_servers is None  # the input is left alone


def test_discover_keeps_explicit_addresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLBUS_KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    settings = MlbusSettings(data_dir=tmp_path)
    write_state(settings.data, make_state(settings.data, os.getpid()))

    found = discover(settings)

    assert found.kafka.bootstrap_servers == "kafka:9092"
    assert found.redis.url == "redis://127.0.0.1:16379/0"


def test_discover_without_a_running_up_changes_nothing(tmp_path: Path) -> None:
    settings = MlbusSettings(data_dir=tmp_path)
    write_state(settings.data, make_state(settings.data, DEAD_PID))

    found = discover(settings)

    assert found.kafka.bootstrap_servers is None
    assert found.redis.url is None


def test_a_free_port_is_outside_the_ephemeral_range_and_free() -> None:
    """Chosen below the kernel's ephemeral range, so no outgoing connection or bind(0)
    of another process takes it before the child that was handed it binds it."""
    import socket

    from mlbus.runtime import free_port

    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if not ranges.exists():
        pytest.skip("not Linux: no ephemeral range to compare with")
    low = int(ranges.read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(port < low for port in ports), (ports, low)
    assert len(ports) > 1  # not one fixed port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))  # it is free


class _RepeatingPicker:
    """Stands in for free_port's random picker: the same port twice, then others."""

    def __init__(self, ports: list[int]) -> None:
        self._ports = iter(ports)

    def choice(self, _: object) -> int:
        return next(self._ports)


def test_ports_picked_together_are_distinct(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port picked is not bound until its server starts, so a second pick can return
    it again: CI lost a Redis Cluster node to that, and `mlbus demo` picks one port per
    server the same way."""
    from mlbus.demo._stack import demo_catalogue
    from mlbus.runtime import SERVICES, _process, free_ports

    first = _process.free_port()  # a port free right now; the picker repeats it
    others = [p for p in range(first + 1, first + 200) if p < 32_000][:20]
    monkeypatch.setattr(_process, "_pick", _RepeatingPicker([first, first, *others]))
    assert len(set(free_ports(3))) == 3

    monkeypatch.setattr(_process, "_pick", _RepeatingPicker([first, first, *others]))
    servers = [s for s in demo_catalogue({}, SERVICES) if s.grpc_port or s.http_port]
    taken = [port for s in servers for port in (s.grpc_port, s.http_port) if port]
    assert len(taken) == len(set(taken)), taken
