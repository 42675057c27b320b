"""`mlbus example generate`: the JSON lines producers would send for a spec, drift on demand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlbus.cli._common import console, fail

if TYPE_CHECKING:
    from mlbus.example import GeneratedData
    from mlbus.spec import ProjectSpec


END_MARGIN = timedelta(hours=1)
"""The default timeline ends this long before now: a burst of payments may run past its end."""


class DriftKindChoice(StrEnum):
    covariate = "covariate"
    concept = "concept"
    both = "both"
    none = "none"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    example = typer.Typer(help="Example data for a spec.", no_args_is_help=True)
    app.add_typer(example, name="example")

    @example.command("generate")
    def generate(
        out: Annotated[Path, typer.Option("--out", help="Folder to write <source>.jsonl into.")],
        events: Annotated[
            int, typer.Option("--events", min=1, help="Events of the main data source.")
        ],
        spec: Annotated[
            Path | None,
            typer.Option("--spec", help="mlbus.yaml; default: the built-in fraud example."),
        ] = None,
        drift_at: Annotated[
            int | None, typer.Option("--drift-at", min=0, help="Event index where drift starts.")
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Same seed and --start, same bytes.")] = 0,
        drift_kind: Annotated[
            DriftKindChoice, typer.Option("--drift-kind", help="What changes at --drift-at.")
        ] = DriftKindChoice.both,
        start: Annotated[
            str | None,
            typer.Option(
                "--start",
                help="Time of the timeline's start (ISO-8601, with offset); default: --days "
                "and an hour before now, so the timeline ends now and ingestion accepts it.",
            ),
        ] = None,
        days: Annotated[int, typer.Option("--days", min=1, help="Length of the timeline.")] = 7,
    ) -> None:
        """Write one JSON-lines file per source: events exactly as a producer would send them."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from mlbus.example import GenerationError, fraud_spec_path
        from mlbus.example import generate as generate_events
        from mlbus.spec import SpecError, load_spec

        try:
            project = load_spec(spec if spec is not None else fraud_spec_path())
        except SpecError as exc:
            fail(str(exc), code=2)
        now = datetime.now(UTC).replace(microsecond=0)
        # Bursts of payments run minutes past the timeline's end: end it a margin before now.
        begin = now - timedelta(days=days) - END_MARGIN
        if start is not None:
            try:
                begin = datetime.fromisoformat(start)
            except ValueError:
                fail(
                    "--start: expected an ISO-8601 time such as 2025-01-01T00:00:00Z, "
                    f"got {start!r}"
                )
            if begin.tzinfo is None:
                fail(f"--start: expected a time with a UTC offset ('Z' or '+01:00'), got {start!r}")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("generating", total=None)
            try:
                data = generate_events(
                    project,
                    events,
                    drift_at=drift_at,
                    seed=seed,
                    drift_kind=drift_kind.value,
                    start=begin,
                    days=days,
                )
            except GenerationError as exc:
                fail(str(exc))
            progress.remove_task(task)
            tasks = {
                name: progress.add_task(f"{name}.jsonl", total=count)
                for name, count in data.counts().items()
            }
            try:
                paths = data.write_jsonl(out, lambda name, n: progress.advance(tasks[name], n))
            except OSError as exc:
                fail(f"cannot write to {out}: {exc.strerror or exc}")
        files = ", ".join(f"{p.name} ({data.counts()[name]:,})" for name, p in paths.items())
        console.print(f"wrote {files} to {out}  [dim](scenario {data.scenario}, seed {seed})[/]")
        for name, count in future_events(project, data, now).items():
            source = project.sources[name]
            console.print(
                f"[yellow]{count:,} {name} dated after now[/] ({source.topic}): they have not "
                "happened yet; ingestion rejects an event more than "
                f"{source.contract.allowed_skew_s:g} s ahead of its clock, so send them when due",
                highlight=False,
            )
        label = "fraud rate" if data.scenario == "fraud" else f"{project.model.label.field} rate"
        if data.drift_at is None:
            if data.label_rate_before is not None:
                console.print(f"{label} {data.label_rate_before:.2%}, no drift")
        else:
            before = _pct(data.label_rate_before)
            after = _pct(data.label_rate_after)
            console.print(
                f"{data.drift_kind} drift from event {data.drift_at:,}: "
                f"{label} {before} before, {after} after"
            )


def future_events(project: ProjectSpec, data: GeneratedData, now: datetime) -> dict[str, int]:
    """Per source, how many generated events are dated after `now` (labels not yet known)."""
    counts: dict[str, int] = {}
    for name, events in data.sources.items():
        times = events.columns.get(project.sources[name].event_time, [])
        ahead = sum(1 for t in times if isinstance(t, str) and _after(t, now))
        if ahead:
            counts[name] = ahead
    return counts


def _after(text: str, now: datetime) -> bool:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return False
    return moment.tzinfo is not None and moment > now


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.2%}"
