"""What every command shares: one console, settings loading, clean failures, and
`connect`, the one way a command finds the components it talks to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from pydantic_settings import BaseSettings
from rich.console import Console
from rich.markup import escape

from mlbus.config import load_settings
from mlbus.errors import ConfigError

if TYPE_CHECKING:
    from mlbus.config import MlbusSettings
    from mlbus.runstate import RunState

console = Console()
err_console = Console(stderr=True)

S = TypeVar("S", bound=BaseSettings)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data folder of the `mlbus up` to talk to (default: MLBUS_DATA_DIR, else .mlbus/).",
        file_okay=False,
    ),
]
VerboseOption = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Say which addresses, spec and key prefix are used."),
]


@dataclass
class GlobalOptions:
    """`mlbus --data-dir … -v <command>`: defaults for every command's own options."""

    data_dir: Path | None = None
    verbose: bool = False


global_options = GlobalOptions()


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear error line (no traceback) and exit."""
    err_console.print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, emoji=False, soft_wrap=True
    )
    raise typer.Exit(code)


def settings_or_exit(cls: type[S]) -> S:
    try:
        return load_settings(cls)
    except ConfigError as exc:
        fail(str(exc), code=2)


@dataclass(frozen=True)
class Connection:
    """The settings a command talks with, filled from the `mlbus up` of its data folder."""

    settings: MlbusSettings
    state: RunState | None

    def grpc_address(self, service: str, explicit: str | None, default: str) -> str:
        """`explicit`, else where the running `mlbus up` serves `service`, else `default`."""
        if explicit:
            return explicit
        found = self.state.grpc_address(service) if self.state is not None else None
        return found or default


def connect(
    data_dir: Path | None = None, spec: Path | None = None, *, verbose: bool = False
) -> Connection:
    """Settings for a command: environment, then flags, then the running `mlbus up`.

    Every command that talks to a component calls this, so each finds the same
    broker, Redis, key prefix, registry and spec: the ones the `mlbus up` of the
    data folder uses, unless the environment or a flag names others. The spec
    defaults to the one that `mlbus up` was started with. `verbose` prints what
    was chosen, and from where, on stderr.
    """
    from mlbus.config import MlbusSettings
    from mlbus.runstate import discover, live_state

    settings = settings_or_exit(MlbusSettings)
    update: dict[str, object] = {}
    chosen_dir = data_dir or global_options.data_dir
    if chosen_dir is not None:
        update["data_dir"] = chosen_dir
    if spec is not None:
        update["spec"] = spec.resolve()
    if update:
        settings = settings.model_copy(update=update)
    try:
        state = live_state(settings.data)
        settings = discover(settings)
    except ConfigError as exc:
        fail(str(exc), code=2)
    if settings.spec is None and state is not None and state.spec is not None:
        settings = settings.model_copy(update={"spec": state.spec})
    connection = Connection(settings, state)
    if verbose or global_options.verbose:
        _describe(connection, explicit_spec=spec is not None)
    return connection


def _describe(connection: Connection, *, explicit_spec: bool) -> None:
    settings, state = connection.settings, connection.state
    root = settings.data.root
    up = f"mlbus up (pid {state.supervisor_pid})" if state is not None else None

    def origin(same_as_up: bool) -> str:
        return f"from the {up}" if same_as_up and up is not None else "from the environment"

    lines = [f"data folder {root}" + (f", {up} running" if up else ", no mlbus up running")]
    broker = settings.kafka.bootstrap_servers
    up_broker = state.broker.bootstrap_servers if state and state.broker else None
    lines.append(f"broker {broker} ({origin(broker == up_broker)})" if broker else "broker: none")
    redis = settings.redis.url
    up_redis = state.redis.url if state and state.redis else None
    prefix = settings.redis.key_prefix
    lines.append(
        f"redis {redis}, keys under {prefix}: ({origin(redis == up_redis)})"
        if redis
        else "redis: none"
    )
    if settings.spec is not None:
        up_spec = state.spec if state is not None else None
        where = "from --spec" if explicit_spec else origin(settings.spec == up_spec)
        lines.append(f"spec {settings.spec} ({where})")
    else:
        lines.append("spec: none")
    if state is not None:
        for name in state.services:
            address = state.grpc_address(name)
            if address is not None:
                lines.append(f"{name} at {address} ({origin(True)})")
    for line in lines:
        err_console.print(f"[dim]· {escape(line)}[/]", highlight=False, soft_wrap=True)
