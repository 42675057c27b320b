"""Two `mlbus up` instances side by side on one Redis never collide (ADR 0021).

Each instance runs in its own data folder with its own embedded broker and the
ingestion service, both pointed at the same real Redis through `REDIS_URL`. The
same events (same ids) sent to each must be validated by each: de-duplication
marks, like every other key, live under the instance's own prefix. And without
`REDIS_URL`, `mlbus up` never writes to a Redis that merely answers on :6379.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from mlbus.config import DataDir
from mlbus.events import INGEST_VALIDATED
from mlbus.example import fraud_spec_path, generate
from mlbus.runstate import INSTANCE_PREFIX_PATTERN, RunState, read_state
from mlbus.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TX = "payments.transactions.v1"
START_TIMEOUT_S = 60.0
EVENTS = 40

# `mlbus up` with the ingestion service only: the collision is in its de-dup keys.
INGESTION_UP = """
import sys
from pathlib import Path
from mlbus.config import load_settings, MlbusSettings
from mlbus.runtime import ServiceSpec, Supervisor

services = [ServiceSpec("ingestion", "mlbus.ingestion", needs_spec=True)]
settings = load_settings(MlbusSettings, data_dir=Path(sys.argv[1]), spec=Path(sys.argv[2]))
sys.exit(Supervisor(settings, services=services).run())
"""


def env_with_redis(redis_url: str | None) -> dict[str, str]:
    dropped = (
        "MLBUS_KAFKA_BOOTSTRAP_SERVERS",
        "MLBUS_REDIS_URL",
        "REDIS_URL",
        "MLBUS_DATA_DIR",
        "MLBUS_REDIS_KEY_PREFIX",
    )
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return env


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_instance(
    data_dir: Path, redis_url: str | None, procs: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    log = data_dir.with_suffix(".log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", INGESTION_UP, str(data_dir), str(fraud_spec_path())],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env_with_redis(redis_url),
        )
    procs.append(proc)
    return proc


def wait_running(data_dir: Path, proc: subprocess.Popen[bytes]) -> RunState:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        state = read_state(DataDir(data_dir))
        ingestion = state.services.get("ingestion") if state is not None else None
        if state is not None and state.status == "running" and ingestion is not None:  # noqa: SIM102
            if ingestion.status == "running":
                return state
        if proc.poll() is not None:
            pytest.fail(f"mlbus up exited: {data_dir.with_suffix('.log').read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"mlbus up in {data_dir} did not start in {START_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def recent_transactions(n: int) -> list[bytes]:
    now = datetime.now(UTC)
    data = generate(load_spec(fraud_spec_path()), n, seed=3, start=now - timedelta(days=2), days=1)
    events = list(data.sources["transactions"].events())
    return [json.dumps(e, separators=(",", ":")).encode() for e in events]


async def send_and_count_validated(
    bootstrap_servers: str, values: list[bytes], timeout_s: float = 45.0
) -> set[str]:
    """Send `values` to the source topic; the event ids validated, once all arrived or timed out."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    await producer.start()
    try:
        for value in values:
            await producer.send(TX, value)
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        INGEST_VALIDATED,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    seen: set[str] = set()
    try:
        async with asyncio.timeout(timeout_s):
            while len(seen) < len(values):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    seen.update(
                        json.loads(r.value)["payload"]["transaction_id"] for r in records if r.value
                    )
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return seen


def test_two_instances_on_one_redis_each_validate_the_same_events(
    tmp_path: Path, redis_url: str, started: list[subprocess.Popen[bytes]]
) -> None:
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first = start_instance(first_dir, redis_url, started)
    second = start_instance(second_dir, redis_url, started)
    first_state, second_state = wait_running(first_dir, first), wait_running(second_dir, second)
    assert first_state.redis is not None
    assert second_state.redis is not None
    assert first_state.redis.url == second_state.redis.url == redis_url
    assert not first_state.redis.embedded
    prefixes = {first_state.redis.key_prefix, second_state.redis.key_prefix}
    assert len(prefixes) == 2, prefixes
    for data_dir, state in ((first_dir, first_state), (second_dir, second_state)):
        assert state.redis is not None
        assert INSTANCE_PREFIX_PATTERN.match(state.redis.key_prefix)
        assert (data_dir / "instance").read_text().strip() == state.redis.key_prefix

    values = recent_transactions(EVENTS)
    assert first_state.broker is not None
    assert second_state.broker is not None
    validated_first = asyncio.run(
        send_and_count_validated(first_state.broker.bootstrap_servers, values)
    )
    validated_second = asyncio.run(
        send_and_count_validated(second_state.broker.bootstrap_servers, values)
    )
    assert len(validated_first) == EVENTS
    assert validated_second == validated_first  # none dropped as the first one's duplicates

    client = redis.Redis.from_url(redis_url)
    try:
        for prefix in prefixes:
            assert any(True for _ in client.scan_iter(match=f"{prefix}:*", count=1000)), prefix
    finally:
        client.close()


def test_without_redis_url_up_starts_its_own_redis_and_keeps_its_prefix(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """A Redis answering on 127.0.0.1:6379 is the operator's: never written to unasked."""
    data_dir = tmp_path / "data"
    up = start_instance(data_dir, None, started)
    state = wait_running(data_dir, up)
    assert state.redis is not None
    assert state.redis.embedded
    assert state.redis.pid is not None
    assert not state.redis.url.endswith(":6379/0")
    prefix = state.redis.key_prefix
    up.send_signal(signal.SIGINT)
    assert up.wait(timeout=25) == 0

    again = start_instance(data_dir, None, started)  # the prefix belongs to the data folder
    state = wait_running(data_dir, again)
    assert state.redis is not None
    assert state.redis.key_prefix == prefix
