"""Commands find the running `mlbus up` of their data folder: its Redis, key prefix and spec.

A newcomer runs `mlbus up --spec …` and then `mlbus features get card_… --json`
with nothing else set: the command must read the stack's own (embedded) Redis
under the instance's key prefix, with the stack's spec, and `--verbose` must say
which addresses it used.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from mlbus.config import DataDir
from mlbus.example import fraud_spec_path
from mlbus.featurestore import FeatureKeys, encode_value
from mlbus.runstate import RunState, read_state

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CLI = [sys.executable, "-c", "from mlbus.cli import main; main()"]
T0 = 1_735_689_600_000  # 2025-01-01T00:00Z
ENTITY = "card_000001"

# `mlbus up --spec` with no services: the broker, the embedded Redis and the run state.
BARE_UP = """
import sys
from pathlib import Path
from mlbus.config import load_settings, MlbusSettings
from mlbus.runtime import Supervisor

settings = load_settings(MlbusSettings, data_dir=Path(sys.argv[1]), spec=Path(sys.argv[2]))
sys.exit(Supervisor(settings, services=[]).run())
"""


def bare_env() -> dict[str, str]:
    """A newcomer's shell: no broker, Redis, prefix, spec or data folder configured."""
    dropped = (
        "MLBUS_KAFKA_BOOTSTRAP_SERVERS",
        "MLBUS_REDIS_URL",
        "REDIS_URL",
        "MLBUS_REDIS_KEY_PREFIX",
        "MLBUS_DATA_DIR",
        "MLBUS_SPEC",
    )
    return {k: v for k, v in os.environ.items() if k not in dropped}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, RunState]]:
    data_dir = tmp_path / "data"
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", BARE_UP, str(data_dir), str(fraud_spec_path())],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=bare_env(),
        )
    try:
        deadline = time.monotonic() + 40
        while (state := read_state(DataDir(data_dir))) is None or state.status != "running":
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "mlbus up did not start"
            time.sleep(0.1)
        yield data_dir, state
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=bare_env(), cwd=cwd, timeout=60
    )


def test_features_get_reads_the_running_stacks_redis_with_its_spec_and_prefix(
    stack: tuple[Path, RunState], tmp_path: Path
) -> None:
    data_dir, state = stack
    assert state.redis is not None
    assert state.redis.embedded
    client = redis.Redis.from_url(state.redis.url)
    key = FeatureKeys(state.redis.key_prefix).online("card_activity", 1, ENTITY)
    client.hset(key, mapping={"count_10m": encode_value(3), "__ts": str(T0), "__eid": "e"})
    client.close()

    done = run_cli(
        "features", "get", ENTITY, "--json", "--data-dir", str(data_dir), "-v", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["views"]["card_activity"]["values"]["count_10m"] == 3
    # --verbose names the addresses, the prefix and the spec, and where they came from.
    assert state.redis.url in done.stderr
    assert state.redis.key_prefix in done.stderr
    assert str(fraud_spec_path()) in done.stderr
    assert f"pid {state.supervisor_pid}" in done.stderr

    # The data folder named once for every command, before the command.
    root_option = run_cli(
        "--data-dir", str(data_dir), "features", "get", ENTITY, "--json", cwd=tmp_path
    )
    assert root_option.returncode == 0, root_option.stderr
    assert json.loads(root_option.stdout)["views"]["card_activity"]["values"] == {"count_10m": 3}
    assert root_option.stderr == ""  # quiet without -v


def test_without_a_running_stack_features_get_says_how_to_start_one(tmp_path: Path) -> None:
    done = run_cli(
        "features", "get", ENTITY, "--data-dir", str(tmp_path / "none"), "-v", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "no mlbus up running" in done.stderr
    assert "mlbus up --spec" in done.stderr
