"""`mlbus runs list|show`: training runs with a hyperparameter search, and their trials.

Runs are read from the search storage the trainer records them in (ADR 0023):
`--storage URL` (or MLBUS_TRAINER_SEARCH_STORAGE, e.g. the registry's
PostgreSQL), else `search.sqlite` in the data folder. `show` lists a run's
trials best first in the direction of its metric; failed trials follow, with
their error. The registered version names its run (`run_id`, `search_study`)
and winning trial (`search_best_trial`) in its params: `mlbus models show`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mlbus.cli._common import DataDirOption, connect, console, fail

if TYPE_CHECKING:
    from mlbus.training import RunRecord

StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="MLBUS_TRAINER_SEARCH_STORAGE",
        help="Search storage URL (default: search.sqlite in the data folder).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def register(app: typer.Typer) -> None:
    runs = typer.Typer(
        help="Training runs with a hyperparameter search: their trials, best first.",
        no_args_is_help=True,
    )
    app.add_typer(runs, name="runs")

    @runs.command("list")
    def list_command(
        model: Annotated[
            str | None, typer.Option("--model", "-m", help="Only this model's runs.")
        ] = None,
        limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="At most (0: all).")] = 20,
        storage: StorageOption = None,
        data_dir: DataDirOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Runs newest first: status, best trial and value, trials done and failed."""
        from mlbus.training import close_storage, list_runs

        found = _open(storage, data_dir)
        try:
            records = [] if found is None else list_runs(found, model)
        finally:
            close_storage(found)
        if limit:
            records = records[:limit]
        if as_json:
            typer.echo(json.dumps([_summary(r) for r in records], indent=2, default=str))
            return
        if not records:
            console.print("no runs with a search recorded yet")
            return
        from rich.table import Table

        table = Table("run", "model", "status", "metric", "best", "trials", "failed", "version")
        for r in records:
            best = "-" if r.best_value is None else f"#{r.best_trial} {r.best_value:.4f}"
            failed = sum(1 for t in r.trials if t.state == "failed")
            table.add_row(
                r.run_id or r.study,
                r.model,
                r.status or "-",
                r.metric,
                best,
                str(len(r.trials)),
                str(failed),
                "-" if r.version is None else f"v{r.version}",
            )
        console.print(table)

    @runs.command("show")
    def show_command(
        run: Annotated[str, typer.Argument(help="Run id, study name, or a unique prefix.")],
        storage: StorageOption = None,
        data_dir: DataDirOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """One run: its facts (dataset fingerprint, seed, budget) and every trial, best first."""
        from mlbus.training import get_run

        found = _open(storage, data_dir)
        if found is None:
            fail(f"no run {run!r}: no search storage yet")
        from mlbus.training import close_storage

        try:
            record = get_run(found, run)
        except KeyError as exc:
            fail(str(exc.args[0]))
        finally:
            close_storage(found)
        if as_json:
            typer.echo(json.dumps(record.to_json(), indent=2, default=str))
            return
        _print_run(record)


def _open(storage: str | None, data_dir: Any) -> Any:
    """The storage, or None when the default SQLite file does not exist (nothing recorded)."""
    from mlbus.errors import ConfigError
    from mlbus.training import open_storage

    url = storage
    if url is None:
        path = connect(data_dir).settings.data.search_db
        if not path.exists():
            return None
        url = f"sqlite:///{path}"
    try:
        return open_storage(url)
    except (ConfigError, Exception) as exc:
        fail(f"cannot open the search storage: {exc}")


def _summary(record: RunRecord) -> dict[str, Any]:
    out = record.to_json()
    out.pop("trials")
    out["trials"] = len(record.trials)
    out["failed_trials"] = sum(1 for t in record.trials if t.state == "failed")
    return out


def _print_run(record: RunRecord) -> None:
    from rich.table import Table

    attrs = record.attrs
    console.print(f"[bold]{record.study}[/] ({record.status or 'unknown'})")
    facts = [
        ("model", record.model),
        ("run id", record.run_id),
        ("version", "-" if record.version is None else f"v{record.version}"),
        ("dataset", record.dataset_fingerprint[:16] or "-"),
        ("seed", str(record.seed)),
        ("budget", f"{attrs.get('budget_trials')} trials, {attrs.get('budget_timeout_s')}s"),
        ("rows", f"{attrs.get('search_train_rows')} fit, {attrs.get('validation_rows')} validate"),
        ("metric", f"{record.metric} ({record.direction})"),
    ]
    if record.best_trial is not None and record.best_value is not None:
        facts.append(("best", f"trial #{record.best_trial}: {record.best_value:.4f}"))
    if attrs.get(_CANCELLED):
        facts.append(("cancelled", str(attrs[_CANCELLED])))
    for name, value in facts:
        console.print(f"  {name:9} {value}")
    names = sorted({k for t in record.trials for k in t.params})
    table = Table("#", "state", record.metric or "value", "s", *names, "error")
    for t in record.sorted_trials():
        table.add_row(
            str(t.number),
            t.state,
            "-" if t.value is None else f"{t.value:.4f}",
            "-" if t.duration_s is None else f"{t.duration_s:.1f}",
            *(_cell(t.params.get(n)) for n in names),
            (t.error or "")[:80],
        )
    console.print(table)


_CANCELLED = "cancelled"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
