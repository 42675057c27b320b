"""What every command shares: one console, settings loading, clean failures."""

from __future__ import annotations

from typing import NoReturn, TypeVar

import typer
from pydantic_settings import BaseSettings
from rich.console import Console
from rich.markup import escape

from mlbus.config import load_settings
from mlbus.errors import ConfigError

console = Console()
err_console = Console(stderr=True)

S = TypeVar("S", bound=BaseSettings)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear error line (no traceback) and exit."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, emoji=False)
    raise typer.Exit(code)


def settings_or_exit(cls: type[S]) -> S:
    try:
        return load_settings(cls)
    except ConfigError as exc:
        fail(str(exc), code=2)
