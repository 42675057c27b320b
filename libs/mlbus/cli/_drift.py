"""`mlbus drift status`: what the drift service currently sees, per served model version.

Reads the state the drift service keeps in Redis (written at each of its
commits; key layout in services/drift/_store.py and docs/adr/0017): per
monitor (model, version, topic partition) each test's latest score against
its threshold and the samples in the open window, and the recent detections
with what was decided about them. The service is not imported (the shared
library never imports a service); the keys are read here.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mlbus.cli._common import connect, console, fail

if TYPE_CHECKING:
    from mlbus.config import RedisSettings

DEFAULT_GROUP = "mlbus-drift"


async def read_drift_state(
    redis: RedisSettings, group: str, *, detections: int = 10
) -> dict[str, Any]:
    """The drift service's published status: monitors (by model version) and detections."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(
        redis.require_url(),
        socket_timeout=redis.socket_timeout_s,
        socket_connect_timeout=redis.socket_timeout_s,
    )
    base = f"{redis.key_prefix}:drift:{group}"
    try:
        raw_status = await client.hgetall(f"{base}:status")
        raw_detections = await client.lrange(f"{base}:detections", 0, max(0, detections - 1))
        # Armed retrainings are per model (shared by every group's replicas of that model).
        armed_keys = [k async for k in client.scan_iter(match=f"{redis.key_prefix}:drift:armed:*")]
        raw_armed = [v for v in [await client.get(k) for k in armed_keys] if v is not None]
    finally:
        await client.aclose()
    monitors = sorted(
        (json.loads(v) for v in raw_status.values()),
        key=lambda s: (s["model"], s["version"], s["source"]),
    )
    models: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for monitor in monitors:
        models.setdefault((monitor["model"], monitor["version"]), []).append(monitor)
    return {
        "group": group,
        "models": [
            {"model": model, "version": version, "summary": summarise(found), "monitors": found}
            for (model, version), found in models.items()
        ],
        "detections": [json.loads(v) for v in raw_detections],
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


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    number = float(value)
    return f"{number:.{digits}g}" if math.isfinite(number) else str(number)


def _render(state: dict[str, Any]) -> None:
    from rich.table import Table

    for entry in state["models"]:
        monitors = entry["monitors"]
        in_window = sum(int(m["status"].get("n_in_window", 0)) for m in monitors)
        windows = sum(int(m["status"].get("window_index", 0)) for m in monitors)
        size = monitors[0]["status"].get("window_size", "?")
        status = monitors[0]["status"]
        dependent = ", ".join(
            f"{key.split(':', 1)[-1]} κ={float(k):.1f}"
            for key, k in sorted(status.get("dependence", {}).items())
        )
        table = Table(
            title=f"{entry['model']} v{entry['version']} — {len(monitors)} partition monitor(s), "
            f"{windows} window(s) closed, {in_window} sample(s) in open windows of {size}; "
            f"seasonality {status.get('seasonality', 'none')}"
            + (f"; dependent: {dependent}" if dependent else ""),
            title_justify="left",
        )
        for column in ("feature", "test"):
            table.add_column(column)
        for column in ("score", "p-value", "threshold", "samples"):
            table.add_column(column, justify="right")
        table.add_column("state")
        for row in entry["summary"]:
            colour = {"drift": "bold red", "few samples": "yellow"}.get(row["state"], "green")
            table.add_row(
                row["feature"],
                row["test"],
                _number(row["score"]),
                _number(row["p_value"]),
                _number(row["threshold"]),
                str(row["samples"]),
                f"[{colour}]{row['state']}[/]",
            )
        console.print(table)
        for monitor in monitors:
            performance = monitor["status"].get("performance")
            if performance and performance.get("outcomes"):
                console.print(
                    f"  performance ({monitor['source']}): {performance['outcomes']} labelled, "
                    f"mean error {_number(performance['mean_error'], 3)}, "
                    f"{performance['detections']} change(s)"
                )
    for armed in state.get("armed", []):
        console.print(
            f"retraining of {armed['model']} armed by drift {armed['detection_id']}: "
            f"{armed['labels']:,} of {armed['min_labels']:,} labels of predictions since "
            f"{str(armed['since'])[:19]}; fires by {str(armed['deadline'])[:19]} at the latest",
            highlight=False,
        )
    detections = state["detections"]
    if not detections:
        console.print("no detections yet")
        return
    table = Table(title="last detections (newest first)", title_justify="left")
    for column in ("decided", "model", "window", "drifted", "alarm", "retraining", "reason"):
        table.add_column(column)
    for found in detections:
        table.add_row(
            str(found.get("decided_at", ""))[:19],
            f"{found['model']} v{found['version']}",
            f"{str(found['window_start'])[:19]} → {str(found['window_end'])[11:19]}"
            f" ({found['n_live']}, {found['source']})",
            ", ".join(found.get("drifted", [])) or "—",
            "yes" if found.get("alarm") else "no",
            "requested"
            if found.get("retraining_requested")
            else "armed"
            if found.get("retraining_armed")
            else "no",
            str(found.get("reason", "")),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    drift = typer.Typer(help="What the drift detector sees.", no_args_is_help=True)
    app.add_typer(drift, name="drift")

    @drift.command("status")
    def status(
        spec_path: Annotated[
            Path | None, typer.Option("--spec", help="mlbus.yaml: show only its model.")
        ] = None,
        group: Annotated[
            str,
            typer.Option(
                "--group",
                help="The drift service's consumer group (MLBUS_DRIFT_GROUP_ID).",
            ),
        ] = "",
        detections: Annotated[
            int, typer.Option("--detections", min=0, help="How many recent detections to show.")
        ] = 10,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Per served model version: each test's score vs threshold, samples, last detections."""
        from mlbus.errors import ConfigError
        from mlbus.spec import load_spec

        settings = connect().settings
        chosen_group = group or os.environ.get("MLBUS_DRIFT_GROUP_ID") or DEFAULT_GROUP
        model: str | None = None
        path = spec_path or settings.spec
        if path is not None:
            try:
                model = load_spec(path).model.name
            except ConfigError as exc:
                fail(str(exc), code=2)
        try:
            state = asyncio.run(
                read_drift_state(settings.redis, chosen_group, detections=detections)
            )
        except ConfigError as exc:
            fail(str(exc), code=2)
        except (OSError, ConnectionError, TimeoutError) as exc:
            fail(f"Redis at {settings.redis.url} is not reachable: {exc}")
        except Exception as exc:  # redis-py's own errors (not imported at module load)
            if type(exc).__module__.startswith("redis"):
                fail(f"Redis at {settings.redis.url} is not reachable: {exc}")
            raise
        if model is not None:
            state["models"] = [m for m in state["models"] if m["model"] == model]
            state["detections"] = [d for d in state["detections"] if d["model"] == model]
        if as_json:
            console.print_json(json.dumps(state))
            return
        if not state["models"] and not state["detections"]:
            where = f" for model {model}" if model else ""
            console.print(
                f"no drift state yet{where} (group {chosen_group}): the drift service writes it "
                "once it has applied predictions of a version with a reference profile"
            )
            return
        _render(state)
