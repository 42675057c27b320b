"""Replicas racing to fire one armed retraining, on a real Redis (issue #8, ADR 0017).

The unit tests cover the race with an in-memory store, where nothing interleaves.
Here contenders with their own Redis connections (asyncio tasks, then two
processes) advance the same armed trigger at once, round after round: even rounds
fire on the label threshold (the contender whose label completes the evidence),
odd rounds at the maximum wait (every contender is due at once). Each round must
be fired by exactly one contender, and none may be lost: the WATCH/MULTI
transaction in `DriftStore.advance` and the firing lease are what make it so.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio

from mlbus.drift._store import ArmedTrigger, DriftStore
from mlbus.driftstats import PolicyState
from tests.integration._armed_contender import (
    MODEL,
    contend,
    done_key,
    published_key,
    ready_key,
    seen_key,
)

pytestmark = pytest.mark.integration

ROUNDS = 50
ROUND_TIMEOUT_S = 10.0
TEST_TIMEOUT_S = 90.0  # under pytest's per-test timeout, so a stuck race fails here
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def store(redis_url: str, unique: str) -> AsyncIterator[DriftStore]:
    client = redis.asyncio.Redis.from_url(redis_url)
    store = DriftStore(client, prefix=f"test-race-{unique}")
    try:
        yield store
    finally:
        keys = [key async for key in client.scan_iter(f"{store.prefix}:*")]
        if keys:
            await client.delete(*keys)
        await store.aclose()


async def run_rounds(store: DriftStore, *, min_labels: int) -> None:
    """Arm ROUNDS triggers one after the other; each must be fired (and disarmed) in time."""
    for r in range(ROUNDS):
        now = datetime.now(UTC)
        by_labels = r % 2 == 0
        trigger = ArmedTrigger(
            detection_id=f"race-{r}",
            model=MODEL,
            version=1,
            since=now - timedelta(minutes=5),
            window_end=now - timedelta(minutes=1),
            armed_at=now,
            deadline=now + timedelta(days=1) if by_labels else now,
            min_labels=min_labels if by_labels else 1_000_000,
        )
        stored = await store.arm(trigger)
        assert stored.detection_id == trigger.detection_id, "the previous round is still armed"
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        while (armed := await store.armed(MODEL)) is not None:
            if time.monotonic() > deadline:
                pytest.fail(f"round {r} was lost: still armed after {ROUND_TIMEOUT_S}s: {armed}")
            await asyncio.sleep(0.001)
    await store.client.set(done_key(store.prefix), 1)


async def check_each_round_fired_once(store: DriftStore) -> list[set[str]]:
    """The requests published, one per round; returns who took part in each round."""
    published = Counter(
        raw.decode() for raw in await store.client.lrange(published_key(store.prefix), 0, -1)
    )
    duplicated = {d: n for d, n in published.items() if n > 1}
    missing = [f"race-{r}" for r in range(ROUNDS) if f"race-{r}" not in published]
    assert (duplicated, missing) == ({}, []), "a round fired twice, or not at all"
    assert sum(published.values()) == ROUNDS
    raw_policy = await store.client.get(store.policy_key(MODEL))
    assert raw_policy is not None
    policy = PolicyState.model_validate(json.loads(raw_policy)["retrain"])
    assert len(policy.recent) == ROUNDS  # each firing recorded once by the RetrainPolicy
    return [
        {m.decode() for m in await store.client.smembers(seen_key(store.prefix, f"race-{r}"))}
        for r in range(ROUNDS)
    ]


async def test_tasks_with_their_own_connections_fire_each_armed_trigger_once(
    store: DriftStore, redis_url: str
) -> None:
    contenders = 6
    async with asyncio.timeout(TEST_TIMEOUT_S):
        async with asyncio.TaskGroup() as group:
            for i in range(contenders):
                group.create_task(contend(redis_url, store.prefix, f"task-{i}"))
            await run_rounds(store, min_labels=2 * contenders)
    seen = await check_each_round_fired_once(store)
    # The race was run: the label threshold needs labels from several contenders.
    assert all(len(seen[r]) >= 2 for r in range(0, ROUNDS, 2)), seen


async def test_two_processes_fire_each_armed_trigger_once(
    store: DriftStore, redis_url: str
) -> None:
    tasks_per_process = 3
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration._armed_contender",
            redis_url,
            store.prefix,
            str(tasks_per_process),
            cwd=REPO,
        )
        for _ in range(2)
    ]
    try:
        async with asyncio.timeout(60):  # the children import numpy, the spec, the service
            while int(await store.client.get(ready_key(store.prefix)) or 0) < 2 * tasks_per_process:
                assert all(c.returncode is None for c in children), "a contender process died"
                await asyncio.sleep(0.05)
        async with asyncio.timeout(TEST_TIMEOUT_S - 30):
            await run_rounds(store, min_labels=4 * tasks_per_process)
        async with asyncio.timeout(30):
            codes = [await child.wait() for child in children]
        assert codes == [0, 0]
    finally:
        await store.client.set(done_key(store.prefix), 1)
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    seen = await check_each_round_fired_once(store)
    both = [r for r in range(ROUNDS) if len({name.split("-")[0] for name in seen[r]}) == 2]
    # The race was run across processes: both advanced the same trigger in most rounds.
    assert len(both) >= ROUNDS // 2, seen
