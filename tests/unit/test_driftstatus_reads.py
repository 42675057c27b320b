"""`read_drift_state` reads the drift service's keys by name, never by walking Redis.

The console reads the drift state every few seconds. A SCAN for armed retrainings
walked every key of the shared Redis (online features, de-duplication keys: hundreds
of thousands under load), and the soak measured a fifth of a core in it (#25).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import mlbus.redis_client
from mlbus.config import RedisSettings
from mlbus.driftstatus import armed_key, detections_key, read_drift_state, status_key


class _Redis:
    """The reads `read_drift_state` may make; anything else (a SCAN) fails the test."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.got: list[str] = []

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return self.data.get(key, {})

    async def lrange(self, key: str, start: int, end: int) -> list[bytes]:
        return self.data.get(key, [])[start : end + 1]

    async def get(self, key: str) -> bytes | None:
        self.got.append(key)
        return self.data.get(key)

    async def aclose(self) -> None:
        return None


def _monitor(model: str, version: int) -> bytes:
    return json.dumps({"model": model, "version": version, "source": "p:0", "status": {}}).encode()


def test_armed_retrainings_are_read_for_the_models_named_without_a_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix, group = "t", "g"
    redis = _Redis(
        {
            status_key(prefix, group): {b"a": _monitor("fraud", 2)},
            detections_key(prefix, group): [json.dumps({"model": "churn"}).encode()],
            armed_key(prefix, "fraud"): json.dumps({"model": "fraud", "labels": 3}).encode(),
            armed_key(prefix, "other"): json.dumps({"model": "other"}).encode(),
        }
    )
    monkeypatch.setattr(mlbus.redis_client, "redis_client", lambda settings: redis)
    state = asyncio.run(
        read_drift_state(RedisSettings(url="redis://unused:1", key_prefix=prefix), group)
    )
    assert sorted(redis.got) == [armed_key(prefix, "churn"), armed_key(prefix, "fraud")]
    assert state["armed"] == [{"model": "fraud", "labels": 3}]
    assert [m["model"] for m in state["models"]] == ["fraud"]
    assert state["detections"] == [{"model": "churn"}]
