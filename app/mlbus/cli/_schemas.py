"""`mlbus schemas export DIR`: the JSON Schema of every event, for other languages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mlbus.cli._common import console


def register(app: typer.Typer) -> None:
    schemas = typer.Typer(help="Event contracts as JSON Schema.", no_args_is_help=True)
    app.add_typer(schemas, name="schemas")

    @schemas.command("export")
    def export(
        out_dir: Annotated[Path, typer.Argument(help="Folder to write <event type>.json into.")],
    ) -> None:
        """Write one JSON Schema file per event type into OUT_DIR."""
        from mlbus.events import json_schemas

        out_dir.mkdir(parents=True, exist_ok=True)
        for event_type, schema in sorted(json_schemas().items()):
            path = out_dir / f"{event_type}.json"
            path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
            console.print(f"wrote {path}")
