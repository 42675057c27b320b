"""The drift service's published status, read from Redis (`mlbus drift status`, the console).

The drift service writes it at each of its commits (its other keys in
services/drift/_store.py and docs/adr/0017): per monitor (model, version, topic
partition) each test's latest score against its threshold and the samples in
the open window, the recent detections with what was decided about them, and
the armed retrainings. These keys are named here, once, for the writer and
every reader; the service is not imported (the shared library never imports a
service).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlbus.config import RedisSettings

DEFAULT_GROUP = "mlbus-drift"


def status_key(prefix: str, group: str) -> str:
    """Hash of `group`: `<model>:<version>:<topic>:<partition>` → that monitor's status JSON."""
    return f"{prefix}:drift:{group}:status"


def detections_key(prefix: str, group: str) -> str:
    """List of `group`, newest first: the recent detections and what was decided."""
    return f"{prefix}:drift:{group}:detections"


def armed_key(prefix: str, model: str) -> str:
    """The armed retraining of `model` (JSON), shared by every group's replicas of it."""
    return f"{prefix}:drift:armed:{model}"


async def read_drift_state(
    redis: RedisSettings, group: str, *, detections: int = 10
) -> dict[str, Any]:
    """The drift service's published status: monitors (by model version) and detections."""
    from mlbus.redis_client import redis_client

    client = redis_client(redis)
    prefix = redis.key_prefix
    try:
        raw_status = await client.hgetall(status_key(prefix, group))
        raw_detections = await client.lrange(
            detections_key(prefix, group), 0, max(0, detections - 1)
        )
        monitors = sorted(
            (json.loads(v) for v in raw_status.values()),
            key=lambda s: (s["model"], s["version"], s["source"]),
        )
        recent = [json.loads(v) for v in raw_detections]
        # Armed retrainings are per model (shared by every group's replicas of that model),
        # armed by a detection of one of this group's monitors: read for the models named
        # here, never by a SCAN, which walks every key of a busy Redis (the console reads
        # this every few seconds; the soak measured a fifth of a core in it, #25).
        named = sorted({m["model"] for m in monitors} | {d["model"] for d in recent})
        raw_armed = [
            v for v in [await client.get(armed_key(prefix, m)) for m in named] if v is not None
        ]
    finally:
        await client.aclose()
    models: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for monitor in monitors:
        models.setdefault((monitor["model"], monitor["version"]), []).append(monitor)
    return {
        "group": group,
        "models": [
            {"model": model, "version": version, "summary": summarise(found), "monitors": found}
            for (model, version), found in models.items()
        ],
        "detections": recent,
        "armed": sorted((json.loads(v) for v in raw_armed), key=lambda a: str(a.get("model"))),
    }


def summarise(monitors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (feature, test) over a version's monitors (one per topic partition).

    The worst partition is shown (lowest p-value, else highest score), samples are
    summed over the open windows, and `state` is `drift` when any partition's
    latest window drifted on that test, `few samples` when none has enough yet.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for monitor in monitors:
        for test in monitor["status"].get("tests", []):
            key = (test["feature"], test["test"])
            row = rows.get(key)
            if row is None:
                row = rows[key] = {
                    "feature": test["feature"],
                    "test": test["test"],
                    "kind": test["kind"],
                    "score": test["score"],
                    "p_value": test["p_value"],
                    "threshold": test["threshold"],
                    "samples": 0,
                    "drifting_partitions": 0,
                    "enough_samples": False,
                    "worst_source": monitor["source"],
                }
            row["samples"] += int(test["samples"])
            row["enough_samples"] = row["enough_samples"] or bool(test["enough_samples"])
            row["drifting_partitions"] += 1 if test.get("streak", 0) > 0 else 0
            if _worse(test, row):
                row["score"], row["p_value"] = test["score"], test["p_value"]
                row["worst_source"] = monitor["source"]
    for row in rows.values():
        if row["drifting_partitions"]:
            row["state"] = "drift"
        elif not row["enough_samples"]:
            row["state"] = "few samples"
        else:
            row["state"] = "ok"
    return sorted(rows.values(), key=lambda r: (r["kind"], r["feature"], r["test"]))


def _worse(test: dict[str, Any], row: dict[str, Any]) -> bool:
    if test["p_value"] is not None and row["p_value"] is not None:
        return float(test["p_value"]) < float(row["p_value"])
    return float(test["score"]) > float(row["score"])
