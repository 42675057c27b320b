"""`mlbus drift status`: what the drift service currently sees, per served model version.

Reads the state the drift service publishes in Redis at each of its commits
(docs/adr/0017) through `mlbus.driftstatus`, where its keys are named for the
service and every reader: per monitor (model, version, topic partition) each
test's latest score against its threshold and the samples in the open window,
and the recent detections with what was decided about them.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from mlbus.cli._common import connect, console, fail
from mlbus.driftstatus import DEFAULT_GROUP, read_drift_state
from mlbus.seasons import cycle_label

__all__ = ["register"]


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
        rates = [m["status"]["live_rate"] for m in monitors if m["status"].get("live_rate")]
        low, high = (_number(min(rates), 2), _number(max(rates), 2)) if rates else ("", "")
        density = (
            f" (live rows per cycle / reference rows: {low if low == high else f'{low}–{high}'})"
            if rates
            else ""
        )
        cycle = cycle_label(
            status.get("seasonality", "none"),
            status.get("timezone", "UTC"),
            status.get("phase_minutes", 60),
        )
        table = Table(
            title=f"{entry['model']} v{entry['version']} — {len(monitors)} partition monitor(s), "
            f"{windows} window(s) closed, {in_window} sample(s) in open windows of {size}; "
            f"seasonality {cycle}{density}" + (f"; dependent: {dependent}" if dependent else ""),
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
                for group, known in sorted(performance.get("groups", {}).items()):
                    reference = known.get("reference_error")
                    against = (
                        "no holdout baseline"
                        if reference is None
                        else f"holdout {_number(reference, 3)} over "
                        f"{known.get('reference_outcomes', 0):,} rows"
                    )
                    console.print(
                        f"    {group}: {known['outcomes']} labelled, mean error "
                        f"{_number(known['mean_error'], 3)} ({against})"
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
