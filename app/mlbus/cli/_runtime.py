"""`mlbus up` and `mlbus status`: run the embedded runtime, and ask it how it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlbus.cli._common import console, err_console, fail, settings_or_exit

if TYPE_CHECKING:
    from mlbus.config import MlbusSettings
    from mlbus.runstate import RunState, StatusReport

EXIT_NOT_RUNNING = 3

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data folder of the run (default: MLBUS_DATA_DIR, else .mlbus/).",
        file_okay=False,
    ),
]


def register(app: typer.Typer) -> None:
    """Add `up` and `status` to the root app."""

    @app.command()
    def up(
        spec: Annotated[
            Path | None,
            typer.Option(
                "--spec",
                help="mlbus.yaml; its source topics are created too.",
                exists=True,
                dir_okay=False,
            ),
        ] = None,
        data_dir: DataDirOption = None,
        embedded_redis: Annotated[
            bool,
            typer.Option(
                "--embedded-redis",
                envvar="MLBUS_REDIS_EMBEDDED",
                help="Start an embedded Redis even if REDIS_URL is set (without REDIS_URL "
                "it always is: a Redis on 127.0.0.1:6379 is only used when named).",
            ),
        ] = False,
    ) -> None:
        """Start the broker, Redis and every installed service; supervise them until Ctrl-C."""
        from mlbus.errors import MlbusError
        from mlbus.runtime import Supervisor

        settings = _settings(data_dir, spec)
        _log_to_console()
        console.print(f"starting mlbus in [bold]{settings.data.root}[/] …", highlight=False)
        supervisor = Supervisor(settings, embedded_redis=embedded_redis)
        try:
            code = supervisor.run(on_started=_print_started)
        except MlbusError as exc:
            fail(str(exc))
        console.print("stopped" if code == 0 else "[red]stopped after a failure[/]")
        raise typer.Exit(code)

    @app.command()
    def status(
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
        data_dir: DataDirOption = None,
        timeout_s: Annotated[
            float, typer.Option("--timeout", min=0.1, help="Seconds allowed per health check.")
        ] = 3.0,
    ) -> None:
        """Health and address of each component of the running `mlbus up`.

        Exit code 0 when all are healthy, 1 when one is not, 3 when no `mlbus up`
        runs in the data folder.
        """
        import asyncio
        import logging

        from mlbus.runstate import check_run, pid_alive, read_state

        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # failures go in the report
        settings = _settings(data_dir, None)
        root = settings.data.root
        state = read_state(settings.data)
        if state is None or not pid_alive(state.supervisor_pid):
            if as_json:
                nothing = {"data_dir": str(root), "healthy": False, "supervisor": None}
                typer.echo(json.dumps({**nothing, "components": {}}))
            stale = f" (stale state of pid {state.supervisor_pid})" if state is not None else ""
            err_console.print(
                f"no mlbus up is running in {root}{stale}; start one with: "
                f"mlbus up --data-dir {root}",
                highlight=False,
            )
            raise typer.Exit(EXIT_NOT_RUNNING)
        report = asyncio.run(check_run(state, settings, timeout_s))
        if as_json:
            body = report.model_dump(mode="json")
            typer.echo(json.dumps({**body, "healthy": report.healthy}))
        else:
            _print_report(report)
        raise typer.Exit(0 if report.healthy else 1)


def _settings(data_dir: Path | None, spec: Path | None) -> MlbusSettings:
    from mlbus.config import MlbusSettings

    settings = settings_or_exit(MlbusSettings)
    update: dict[str, object] = {}
    if data_dir is not None:
        update["data_dir"] = data_dir
    if spec is not None:
        update["spec"] = spec.resolve()
    return settings.model_copy(update=update) if update else settings


def _log_to_console() -> None:
    import logging

    from rich.logging import RichHandler

    handler = RichHandler(console=err_console, show_path=False, markup=False)
    logger = logging.getLogger("mlbus")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # our errors carry the cause


def _print_started(state: RunState) -> None:
    from rich.table import Table

    table = Table(title=f"mlbus up — {state.data_dir}", title_justify="left")
    table.add_column("component", no_wrap=True)
    table.add_column("address", overflow="fold")
    table.add_column("pid")
    table.add_column("log", overflow="fold")
    if state.broker is not None:
        kind = "embedded" if state.broker.embedded else "external"
        table.add_row(
            f"broker ({kind})",
            state.broker.bootstrap_servers,
            _text(state.broker.pid),
            _text(state.broker.log),
        )
    if state.redis is not None:
        kind = "embedded" if state.redis.embedded else "external"
        table.add_row(
            f"redis ({kind})", state.redis.url, _text(state.redis.pid), _text(state.redis.log)
        )
    for name, service in state.services.items():
        address = state.grpc_address(name) or state.http_url(name) or "-"
        if service.metrics_port is not None:
            address += f"  (metrics :{service.metrics_port})"
        table.add_row(name, address, _text(service.pid), _text(service.log))
    console.print(table)
    if state.not_installed:
        console.print(
            f"not installed (not started): {', '.join(state.not_installed)}", highlight=False
        )
    if state.needs_spec:
        console.print(
            f"not started, they need a project spec (mlbus up --spec mlbus.yaml): "
            f"{', '.join(state.needs_spec)}",
            highlight=False,
        )
    console.print("[bold]Ctrl-C to stop[/]")


def _print_report(report: StatusReport) -> None:
    from rich.table import Table

    supervisor = report.supervisor
    header = f"mlbus up in {report.data_dir}"
    if supervisor is not None:
        header += f" — pid {supervisor.pid}, {supervisor.status}, since {supervisor.started_at:%c}"
    table = Table(title=header, title_justify="left")
    table.add_column("component", no_wrap=True)
    table.add_column("health", no_wrap=True)
    table.add_column("address", overflow="fold")
    for column in ("pid", "restarts", "detail"):
        table.add_column(column)
    for name, health in report.components.items():
        mark = "[green]healthy[/]" if health.healthy else "[red]unhealthy[/]"
        table.add_row(
            name,
            mark,
            _text(health.address),
            _text(health.pid),
            _text(health.restarts),
            health.detail,
        )
    console.print(table)
    if report.not_installed:
        console.print(f"not installed: {', '.join(report.not_installed)}", highlight=False)
    if report.needs_spec:
        console.print(f"not started (no --spec): {', '.join(report.needs_spec)}", highlight=False)


def _text(value: object) -> str:
    return "-" if value is None else str(value)
