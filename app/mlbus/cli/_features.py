"""`mlbus features get|dataset|consistency|rebuild`: online values of an entity,
point-in-time training sets, how often serving fed the model its offline values
(`_consistency`), and a replay of the online state (`_rebuild`).

`get` reads Redis through `mlbus.featurestore.OnlineStore` (what inference
uses); `dataset` reads the offline Parquet rows and, given labels, joins them
point-in-time with DuckDB. Both find the running `mlbus up` of the data folder
(`connect`) and use its Redis, key prefix and spec unless told otherwise
(`--spec`, `MLBUS_SPEC`, `REDIS_URL`).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mlbus.cli._common import DataDirOption, VerboseOption, connect, console, fail
from mlbus.cli._consistency import register_consistency
from mlbus.cli._rebuild import register_rebuild

if TYPE_CHECKING:
    from mlbus.config import MlbusSettings
    from mlbus.spec import ProjectSpec


def _spec(settings: MlbusSettings, path: Path | None) -> ProjectSpec:
    from mlbus.errors import ConfigError
    from mlbus.spec import load_spec

    chosen = path or settings.spec
    if chosen is None:
        fail(
            "no spec: pass --spec, set MLBUS_SPEC=path/to/mlbus.yaml, "
            "or start `mlbus up --spec …` in this data folder",
            code=2,
        )
    try:
        return load_spec(chosen)
    except ConfigError as exc:
        fail(str(exc), code=2)


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"expected an ISO date or time (2025-01-31, 2025-01-31T12:00Z), got {text!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def register(app: typer.Typer) -> None:
    features = typer.Typer(help="Online feature values and training sets.", no_args_is_help=True)
    app.add_typer(features, name="features")
    register_consistency(features, _spec)
    register_rebuild(features)

    @features.command("get")
    def get(
        entity: Annotated[str, typer.Argument(help="Entity id, e.g. card_000042.")],
        view: Annotated[
            str | None, typer.Option("--view", help="One view (default: every view).")
        ] = None,
        spec_path: Annotated[
            Path | None, typer.Option("--spec", help="mlbus.yaml (default: the running stack's).")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        data_dir: DataDirOption = None,
        verbose: VerboseOption = False,
    ) -> None:
        """Show an entity's online feature values and their age."""
        from mlbus.errors import MlbusError
        from mlbus.featurestore import OnlineStore

        settings = connect(data_dir, spec_path, verbose=verbose).settings
        spec = _spec(settings, None)
        if view is not None and view not in spec.features:
            fail(f"unknown view {view!r} (known: {', '.join(sorted(spec.features))})")
        views = [view] if view else list(spec.features)

        async def read() -> list[Any]:
            async with OnlineStore.from_settings(settings.redis) as store:
                return [await store.get(v, spec.features[v].version, entity) for v in views]

        try:
            rows = asyncio.run(read())
        except MlbusError as exc:
            fail(str(exc))
        if as_json:
            doc = {
                r.view: {"version": r.version, "age_s": r.age_s, "values": r.values} for r in rows
            }
            typer.echo(json.dumps({"entity": entity, "views": doc}, indent=2))
            return
        from rich.table import Table

        for row in rows:
            if not row.found:
                console.print(
                    f"[yellow]{row.view}[/] v{row.version}: no online values for {entity}"
                )
                continue
            table = Table(title=f"{row.view} v{row.version} · {entity} · age {row.age_s:,.1f}s")
            table.add_column("feature")
            table.add_column("value", justify="right")
            for name, value in row.values.items():
                table.add_row(name, "null" if value is None else str(value))
            console.print(table)

    @features.command("dataset")
    def dataset(
        out: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
        start: Annotated[
            str | None, typer.Option("--from", help="Start (ISO, inclusive, UTC by default).")
        ] = None,
        end: Annotated[str | None, typer.Option("--to", help="End (ISO, exclusive).")] = None,
        view: Annotated[
            str | None, typer.Option("--view", help="View (default: the model's).")
        ] = None,
        labels: Annotated[
            Path | None,
            typer.Option(
                "--labels",
                help="Parquet or JSON-lines labels (entity_id, event_id or label_time, label…): "
                "join point-in-time; without it, export the feature rows of the range.",
            ),
        ] = None,
        spec_path: Annotated[
            Path | None, typer.Option("--spec", help="mlbus.yaml (default: the running stack's).")
        ] = None,
        offline_url: Annotated[
            str | None,
            typer.Option(
                "--offline",
                envvar="MLBUS_FEATURES_OFFLINE_URL",
                help="Offline store folder or s3:// URL (default: offline/ in the data folder).",
            ),
        ] = None,
        data_dir: DataDirOption = None,
        verbose: VerboseOption = False,
    ) -> None:
        """Write a (point-in-time) dataset from the offline store and print its fingerprint."""
        import pyarrow.parquet as pq

        from mlbus.errors import MlbusError
        from mlbus.featurestore import OfflineStore, build_training_set

        settings = connect(data_dir, spec_path, verbose=verbose).settings
        spec = _spec(settings, None)
        name = view or spec.model_views()[0]
        if name not in spec.features:
            fail(f"unknown view {name!r}")
        version = spec.features[name].version
        since, until = _when(start), _when(end)
        offline = OfflineStore(offline_url or settings.data.offline_store)
        try:
            if labels is not None:
                result = build_training_set(
                    offline, name, version, _read_labels(labels), start=since, end=until
                )
                table, fingerprint, files = result.table, result.fingerprint, result.files
            else:
                files = tuple(offline.files(name, version, start=since, end=until))
                if not files:
                    fail(f"no offline rows for {name} v{version} in that range")
                table = _in_range(offline.read(list(files)), since, until)
                fingerprint = offline.fingerprint(files)
        except MlbusError as exc:
            fail(str(exc))
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
        console.print(
            f"wrote {table.num_rows:,} rows from {len(files)} file(s) to {out}\n"
            f"fingerprint sha256:{fingerprint}",
            highlight=False,
        )


def _read_labels(path: Path) -> Any:
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        return pq.read_table(path)
    return pajson.read_json(path)


def _in_range(table: Any, since: datetime | None, until: datetime | None) -> Any:
    import pyarrow.compute as pc

    mask = None
    if since is not None:
        mask = pc.greater_equal(table["event_time"], since)
    if until is not None:
        upper = pc.less(table["event_time"], until)
        mask = upper if mask is None else pc.and_(mask, upper)
    return table if mask is None else table.filter(mask)
