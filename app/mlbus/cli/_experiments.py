"""`mlbus experiments status`: outcomes per alias and the experiments' verdicts.

Reads the status the outcomes service writes to Redis at each look, through
`mlbus.outcomesstatus` (the reader the console shares).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from typing import Annotated, Any

import typer

from mlbus.cli._common import connect, console, fail
from mlbus.outcomesstatus import DEFAULT_GROUP, read_outcomes_status


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    number = float(value)
    return f"{number:.{digits}f}" if math.isfinite(number) else str(number)


def _interval(estimate: dict[str, Any]) -> str:
    if estimate.get("value") is None:
        return "—"
    shown = _number(estimate["value"])
    if estimate.get("ci_low") is None:
        return shown
    return f"{shown} [{_number(estimate['ci_low'])}, {_number(estimate['ci_high'])}]"


def _render(status: dict[str, Any]) -> None:
    from rich.table import Table

    metric_names: list[str] = []
    for row in status["windows"]:
        for name in row["metrics"]:
            if name not in metric_names:
                metric_names.append(name)
    table = Table(
        title=f"outcomes of {status['model']} ({status['task']}), 95% intervals; "
        f"looked at {str(status['evaluated_at'])[:19]}",
        title_justify="left",
    )
    for column in ("version", "alias", "window", "labelled"):
        table.add_column(column, justify="right" if column == "labelled" else "left")
    for name in metric_names:
        table.add_column(name.replace("_", " "), justify="right")
    for row in status["windows"]:
        table.add_row(
            f"v{row['version']}",
            row["alias"],
            f"{int(row['window_s'])}s",
            f"{row['labelled']:,}",
            *(_interval(row["metrics"].get(name, {})) for name in metric_names),
        )
    if status["windows"]:
        console.print(table)
    else:
        console.print("no labelled outcomes yet")
    experiments = status["experiments"]
    if not experiments:
        console.print(
            "no experiments yet: one opens when a canary or shadow version scores events "
            "beside the champion"
        )
        return
    table = Table(title="experiments (champion vs challenger)", title_justify="left")
    for column in ("experiment", "verdict", "difference", "always-valid p", "n", "action"):
        table.add_column(column)
    for found in experiments:
        last = found.get("last") or {}
        verdict = found.get("verdict") or found.get("status")
        colour = {"better": "green", "worse": "red"}.get(str(verdict), "yellow")
        if found.get("status") == "ended":
            verdict = f"ended: {found.get('ended_reason')}"
        difference = (
            f"{last.get('metric')} {_number(last.get('difference'), 4)} "
            f"[{_number(last.get('ci_low'), 4)}, {_number(last.get('ci_high'), 4)}]"
            if last.get("ready")
            else "waiting for samples"
        )
        counts = (
            f"{last.get('champion', {}).get('n', 0):,} / {last.get('challenger', {}).get('n', 0):,}"
        )
        table.add_row(
            found["experiment_id"],
            f"[{colour}]{verdict}[/]",
            difference,
            _number(found.get("p_value"), 4),
            counts,
            str(found.get("action_outcome") or "—"),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    experiments = typer.Typer(
        help="Online experiments: outcomes per alias and verdicts (the outcomes service).",
        no_args_is_help=True,
    )
    app.add_typer(experiments, name="experiments")

    @experiments.command("status")
    def status(
        group: Annotated[
            str,
            typer.Option(
                "--group", help="The outcomes service's consumer group (MLBUS_OUTCOMES_GROUP_ID)."
            ),
        ] = "",
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Per version and alias: AUC, accuracy, log-loss, positive rate (or MAE, RMSE) with
        intervals over each window; per experiment: verdict, evidence, action taken."""
        from mlbus.errors import ConfigError

        settings = connect().settings
        chosen = group or os.environ.get("MLBUS_OUTCOMES_GROUP_ID") or DEFAULT_GROUP
        try:
            found = asyncio.run(read_outcomes_status(settings.redis, chosen))
        except ConfigError as exc:
            fail(str(exc), code=2)
        except (OSError, ConnectionError, TimeoutError) as exc:
            fail(f"Redis at {settings.redis.url} is not reachable: {exc}")
        except Exception as exc:  # redis-py's own errors (not imported at module load)
            if type(exc).__module__.startswith("redis"):
                fail(f"Redis at {settings.redis.url} is not reachable: {exc}")
            raise
        if found is None:
            if as_json:
                console.print_json(json.dumps({"group": chosen, "status": None}))
                return
            console.print(
                f"no outcomes yet (group {chosen}): the outcomes service writes its status at "
                "each look, once it runs with a spec"
            )
            return
        if as_json:
            console.print_json(json.dumps({"group": chosen, **found}))
            return
        _render(found)
