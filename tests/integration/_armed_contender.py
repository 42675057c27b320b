"""Drift replicas racing to fire one armed retraining, on a real Redis (see test_drift_armed_race).

Each contender is a `DriftProcessor` with its own `DriftStore` (its own connection
pool), doing what a replica does at each commit: add the labels it joined since
its last commit and `Retraining.advance_armed()`. Its publisher appends the request's
`cause_event_id` to a Redis list, so wins are counted across processes.

Run as: python -m tests.integration._armed_contender REDIS_URL PREFIX TASKS
(from the repository root); the process contends until `<PREFIX>:race:done` exists.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio

from mlbus.drift import Retraining
from mlbus.drift._store import DriftStore
from tests.unit.test_drift_service import spec

MODEL = "m"  # the unit spec's model
# Every round fires: no cooldown between rounds, and more than a test's rounds per hour.
RACE_SPEC = {"cooldown_s": 0, "max_retrains_per_hour": 1000}


def published_key(prefix: str) -> str:
    return f"{prefix}:race:published"


def ready_key(prefix: str) -> str:
    return f"{prefix}:race:ready"


def done_key(prefix: str) -> str:
    return f"{prefix}:race:done"


def seen_key(prefix: str, detection_id: str) -> str:
    """The contenders that advanced this detection's trigger while it was armed."""
    return f"{prefix}:race:seen:{detection_id}"


@dataclass
class RecordingPublisher:
    """Appends each request's cause to a Redis list (a network round trip, like Kafka's)."""

    client: redis.asyncio.Redis
    prefix: str

    async def publish(self, event: Any, key: Any = None) -> None:
        await self.client.rpush(published_key(self.prefix), event.cause_event_id)


async def contend(redis_url: str, prefix: str, name: str) -> None:
    """One replica: until `done`, feed one label per commit into whatever trigger is armed."""
    client = redis.asyncio.Redis.from_url(redis_url)
    store = DriftStore(client, prefix=prefix, group=f"race-{name}")
    retraining = Retraining(
        spec(**RACE_SPEC),
        store,
        publisher=RecordingPublisher(client, prefix),  # type: ignore[arg-type]
    )
    assert retraining.arming, "the spec must arm retrainings (labels joined, trigger: retrain)"
    try:
        await client.incr(ready_key(prefix))
        while True:
            armed = await store.armed(MODEL)
            if armed is None:
                if await client.exists(done_key(prefix)):
                    return
                await asyncio.sleep(0.001)
                continue
            await client.sadd(seen_key(prefix, armed.detection_id), name)
            # A label of a prediction made now (after the detection), as `_label` joins it.
            retraining.joined_labels.append((time.time(), datetime.now(UTC)))
            await retraining.advance_armed()
    finally:
        await client.aclose()


async def _main(redis_url: str, prefix: str, tasks: int) -> None:
    async with asyncio.TaskGroup() as group:
        for i in range(tasks):
            group.create_task(contend(redis_url, prefix, f"{os.getpid()}-{i}"))


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
