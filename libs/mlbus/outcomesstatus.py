"""The outcomes service's published status in Redis (`mlbus experiments status`, the console).

The outcomes service writes it at each evaluation (every few seconds, layout of
its other keys in services/outcomes/_store.py and docs/adr/0024): per (model,
version, alias) and window the outcome metrics with their 95% intervals and
counts, every experiment's record (arms, verdict, evidence, action taken) and
the labeling queue's counts. The key is named here, once, for the writer and
every reader; the service is not imported (the shared library never imports a
service).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlbus.config import RedisSettings

DEFAULT_GROUP = "mlbus-outcomes"


def status_key(prefix: str, group: str) -> str:
    """The string key holding the status (JSON) of the outcomes service's `group`."""
    return f"{prefix}:outcomes:{group}:status"


async def read_outcomes_status(redis: RedisSettings, group: str) -> dict[str, Any] | None:
    """The outcomes service's latest status, or None before its first look."""
    from mlbus.redis_client import redis_client

    client = redis_client(redis)
    try:
        raw = await client.get(status_key(redis.key_prefix, group))
    finally:
        await client.aclose()
    if raw is None:
        return None
    status: dict[str, Any] = json.loads(raw)
    return status
