"""`mlbus train`: the trainer's pipeline, once, in this process, with a progress display.

Reads the offline store and the label log (`mlbus.training`), trains, converts
to ONNX, checks parity, scores the current champion on the same window and
registers the result (unless `--no-register`); the registry's gates decide
promotion. Feature rows still waiting in the Redis spool are flushed to the
offline store first (`flush_spool`), so events that just arrived are trained
on. Register this module in `mlbus.cli.__init__` (`_train`).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlbus.cli._common import DataDirOption, VerboseOption, connect, console, fail
from mlbus.cli._features import _spec, _when

if TYPE_CHECKING:
    from mlbus.config import MlbusSettings
    from mlbus.spec import ProjectSpec

STAGES = {
    "dataset": "building the point-in-time dataset",
    "search": "searching hyperparameters (mlbus runs show <run> for the trials)",
    "mlflow": "logging the search to MLflow",
    "split": "splitting by time",
    "fit": "fitting",
    "convert": "converting to ONNX",
    "parity": "checking ONNX parity",
    "evaluate": "evaluating",
    "profile": "profiling for drift",
    "champion": "scoring the champion on the same window",
}


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        spec_path: Annotated[
            Path | None, typer.Option("--spec", help="mlbus.yaml (default: the running stack's).")
        ] = None,
        start: Annotated[
            str | None, typer.Option("--from", help="Labels from (ISO, inclusive, UTC default).")
        ] = None,
        end: Annotated[
            str | None, typer.Option("--to", help="Labels until (ISO, exclusive).")
        ] = None,
        offline_url: Annotated[
            str | None,
            typer.Option(
                "--offline",
                envvar="MLBUS_TRAINER_OFFLINE_URL",
                help="Offline store folder or s3:// URL (default: offline/ in the data folder).",
            ),
        ] = None,
        registry: Annotated[
            str | None,
            typer.Option(
                "--registry", help="Registry host:port (default: the running `mlbus up`)."
            ),
        ] = None,
        no_register: Annotated[
            bool, typer.Option("--no-register", help="Train and evaluate only.")
        ] = False,
        data_dir: DataDirOption = None,
        verbose: VerboseOption = False,
    ) -> None:
        """Train the spec's model once and register it; print version, metrics, promotion."""
        import mlbus
        from mlbus.errors import MlbusError
        from mlbus.registry_client import DEFAULT_ADDRESS, Registration, RegistryClient
        from mlbus.training import (
            Champion,
            TrainingError,
            TrainingJob,
            TrainingOutcome,
            fetch_champion,
            register_outcome,
            run_job,
        )

        connection = connect(data_dir, spec_path, verbose=verbose)
        settings = connection.settings
        spec = _spec(settings, None)
        url = offline_url or str(settings.data.offline_store)
        token = os.environ.get("MLBUS_REGISTRY_TOKEN") or None
        registry_at = connection.grpc_address("registry", registry, DEFAULT_ADDRESS)
        address = None if no_register else registry_at
        run_id = uuid.uuid4().hex

        async def champion() -> Champion | None:
            assert address is not None
            async with RegistryClient(address, token=token) as client:
                return await fetch_champion(client, spec.model.name)

        async def register_it(outcome: TrainingOutcome) -> Registration:
            assert address is not None
            async with RegistryClient(address, token=token) as client:
                return await register_outcome(
                    client,
                    spec,
                    outcome,
                    run_id=run_id,
                    code_version=mlbus.__version__,
                    reason="mlbus train",
                )

        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        flush_offline_spool(settings, spec, url)
        try:
            current = None if address is None else asyncio.run(champion())
            with Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ) as progress:
                task = progress.add_task(f"training {spec.model.name}", total=None)

                def say(stage: str) -> None:
                    progress.update(
                        task, description=f"{spec.model.name}: {STAGES.get(stage, stage)}"
                    )

                job = TrainingJob(
                    spec,
                    url,
                    _when(start),
                    _when(end),
                    champion=current,
                    code_version=mlbus.__version__,
                    run_id=run_id,
                    search_storage_url=(
                        os.environ.get("MLBUS_TRAINER_SEARCH_STORAGE")
                        or f"sqlite:///{settings.data.search_db}"
                    )
                    if spec.model.search is not None
                    else None,
                    mlflow_tracking_uri=os.environ.get("MLBUS_TRAINER_MLFLOW_TRACKING_URI"),
                )
                outcome = run_job(job, progress=say)
                registration = None
                if address is not None:
                    progress.update(task, description=f"{spec.model.name}: registering")
                    registration = asyncio.run(register_it(outcome))
        except TrainingError as exc:
            fail(f"training failed at {exc.stage}: {exc.reason}")
        except MlbusError as exc:
            fail(str(exc))
        _print(spec.model.name, outcome, registration)


def flush_offline_spool(settings: MlbusSettings, spec: ProjectSpec, offline_url: str) -> None:
    """Move the model's feature rows still waiting in Redis to the offline store, and say so.

    The feature service flushes its spool every `offline_flush_interval_s` (30 s
    by default): without this, events that arrived a few seconds ago would not
    be in the dataset, or there would be no dataset at all.
    """
    from mlbus.errors import MlbusError
    from mlbus.featurestore import OfflineStore, OnlineStore, flush_spool, spool_length

    if not settings.redis.url:
        console.print(
            "[dim]no Redis configured: rows the feature service has not flushed yet "
            "are not in the dataset[/]",
            highlight=False,
        )
        return
    views = spec.model_views()

    async def flush() -> dict[str, tuple[int | None, int]]:
        done: dict[str, tuple[int | None, int]] = {}
        offline = OfflineStore(offline_url)
        async with OnlineStore.from_settings(settings.redis) as online:
            for name in views:
                version = spec.features[name].version
                features = spec.view_features(name)
                written = await flush_spool(online, offline, name, version, features)
                done[name] = (written, await spool_length(online, name, version))
        return done

    try:
        flushed = asyncio.run(flush())
    except (MlbusError, OSError) as exc:
        console.print(
            f"[yellow]could not flush the offline spool ({exc}):[/] rows that arrived in the "
            "last 30 s may be missing; the feature service writes them within 30 s",
            highlight=False,
        )
        return
    for name, (written, waiting) in flushed.items():
        if written:
            console.print(f"flushed {written:,} offline rows of {name}", highlight=False)
        if written is None or waiting:
            console.print(
                f"[yellow]{waiting:,} rows of {name} still wait in the spool[/] (being flushed "
                "by the feature service); they land within 30 s",
                highlight=False,
            )


def _print(model: str, outcome: object, registration: object) -> None:
    from rich.table import Table

    from mlbus.registry_client import Registration
    from mlbus.training import TrainingOutcome

    assert isinstance(outcome, TrainingOutcome)
    trained = outcome.trained
    table = Table(title=f"{model} · {trained.rows:,} rows · fit {trained.fit_s:.1f}s")
    table.add_column("metric")
    table.add_column("evaluation window", justify="right")
    table.add_column("holdout", justify="right")
    table.add_column("champion (window)", justify="right")
    for name, value in trained.metrics.items():
        held = trained.holdout_metrics.get(name)
        champ = outcome.champion_metrics.get(name)
        table.add_row(
            name,
            f"{value:.4f}",
            "" if held is None else f"{held:.4f}",
            "" if champ is None else f"{champ:.4f}",
        )
    console.print(table)
    if outcome.search is not None:
        found = outcome.search
        failed = sum(1 for t in found.trials if t.state == "failed")
        console.print(
            f"search {found.study}: best of {len(found.trials)} trials ({failed} failed) is "
            f"#{found.best_trial}, validation {found.metric} {found.best_value:.4f}; "
            f"refit on train + validation (`mlbus runs show {found.study}`)"
        )
    profile = trained.profile
    alarming = profile.calibration is not None and profile.calibration.alarms
    console.print(
        f"drift reference: {'[bold red]' if alarming else ''}{profile.summary()}"
        f"{'[/]' if alarming else ''}",
        highlight=False,
    )
    console.print(
        f"dataset sha256:{outcome.fingerprint}\n"
        f"evaluation window {trained.split.evaluation_window()}\n"
        f"ONNX parity max error {trained.parity_max_error:.2e}, size {len(trained.onnx):,} bytes",
        highlight=False,
    )
    if isinstance(registration, Registration):
        aliases = ", ".join(c.alias for c in registration.alias_changes) or "champion"
        verdict = (
            f"[green]promoted to {aliases}[/]"
            if registration.promoted
            else "[yellow]not promoted[/]"
        )
        console.print(
            f"registered {model} v{registration.version.version}: {verdict} — "
            f"{registration.version.gate.reason}"
        )
    else:
        console.print("not registered (--no-register)")
