"""`mlbus features consistency`: served feature values against the offline rows (ADR 0020).

The feature service compares each served vector with the offline row of the
same event and keeps counters in Redis; this command reads them through
`mlbus.featurestore.read_consistency`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlbus.cli._common import DataDirOption, VerboseOption, connect, console, fail

if TYPE_CHECKING:
    from mlbus.config import MlbusSettings
    from mlbus.featurestore import ViewConsistency
    from mlbus.spec import ProjectSpec

SpecLoader = Callable[["MlbusSettings", Path | None], "ProjectSpec"]


def register_consistency(features: typer.Typer, load: SpecLoader) -> None:
    @features.command("consistency")
    def consistency(
        spec_path: Annotated[Path | None, typer.Option("--spec", help="mlbus.yaml")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        examples: Annotated[
            int, typer.Option("--examples", min=0, help="Differences to show per view.")
        ] = 5,
        reset: Annotated[
            bool, typer.Option("--reset", help="Clear the counters (after printing them).")
        ] = False,
        data_dir: DataDirOption = None,
        verbose: VerboseOption = False,
    ) -> None:
        """How often the model was served the values it was trained on, per feature.

        For each prediction naming its event (Predict's event_ids), the feature
        service compares every served value of the model's views with the offline
        row of that event: match (exact; floats within a relative 1e-6), lag (the
        entity's earlier event was not yet ingested when it was scored; counted
        apart) or mismatch (a real skew). The match rate leaves lag out.
        """
        from mlbus.errors import MlbusError
        from mlbus.featurestore import OnlineStore, read_consistency, reset_consistency

        settings = connect(data_dir, spec_path, verbose=verbose).settings
        spec = load(settings, None)
        source = spec.training_source()
        views = [v for v in spec.model_views() if spec.features[v].source == source]

        async def read() -> list[ViewConsistency]:
            async with OnlineStore.from_settings(settings.redis) as store:
                out = []
                for view in views:
                    version = spec.features[view].version
                    names = spec.features[view].feature_names()
                    out.append(await read_consistency(store, view, version, names))
                    if reset:
                        await reset_consistency(store, view, version)
                return out

        try:
            reports = asyncio.run(read())
        except MlbusError as exc:
            fail(str(exc))
        if as_json:
            typer.echo(json.dumps({"views": [r.to_dict() for r in reports]}, indent=2))
            return
        for report in reports:
            print_consistency(report, examples)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def print_consistency(report: ViewConsistency, examples: int) -> None:
    from rich.table import Table

    since = (
        ""
        if report.since_ms is None
        else f" since {datetime.fromtimestamp(report.since_ms / 1000, UTC):%Y-%m-%d %H:%M} UTC"
    )
    if not report.compared:
        console.print(
            f"{report.view} v{report.version}: no served value compared yet{since} "
            "(predictions need event_ids, and their events must reach the feature service)"
        )
        return
    table = Table(
        title=f"{report.view} v{report.version}: {_rate(report.match_rate)} of served values "
        f"equal the offline ones{since} (lag {report.total('lag'):,} apart)",
        title_justify="left",
    )
    for column in ("feature", "match", "lag", "mismatch", "match rate"):
        table.add_column(column, justify="left" if column == "feature" else "right")
    for f in report.features:
        if f.compared:
            table.add_row(
                f.feature, f"{f.match:,}", f"{f.lag:,}", f"{f.mismatch:,}", _rate(f.match_rate)
            )
    console.print(table)
    shown = report.examples[:examples]
    if shown:
        diffs = Table(title="latest differences", title_justify="left")
        for column in ("outcome", "entity", "event", "feature", "served", "offline"):
            diffs.add_column(column)
        for d in shown:
            diffs.add_row(
                d.outcome, d.entity_id, d.event_id, d.feature, str(d.served), str(d.offline)
            )
        console.print(diffs)
