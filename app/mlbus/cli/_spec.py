"""`mlbus spec check PATH` and `mlbus spec schema`: validate a spec, or export its JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mlbus.cli._common import console, fail


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    spec_app = typer.Typer(help="The project spec (mlbus.yaml).", no_args_is_help=True)
    app.add_typer(spec_app, name="spec")

    @spec_app.command("check")
    def check(
        path: Annotated[Path, typer.Argument(help="The mlbus.yaml to validate.")],
    ) -> None:
        """Validate a spec and summarise its sources, features and model."""
        from rich.table import Table

        from mlbus.spec import SpecError, format_duration, load_spec

        try:
            spec = load_spec(path)
        except SpecError as exc:
            fail(str(exc), code=2)

        sources = Table("source", "kind", "topic", "entity", "event id", "fields", "contract")
        for name, source in spec.sources.items():
            kind: str = source.kind
            if source.labels is not None:
                kind = f"labels → {source.labels.source}.{source.labels.event_id_field}"
            sources.add_row(
                name,
                kind,
                source.topic,
                source.entity,
                source.event_id or "(derived)",
                str(len(source.contract.fields)),
                f"v{source.contract.version}",
            )
        views = Table("view", "source", "entity", "version", "ttl", "features")
        for name, view in spec.features.items():
            views.add_row(
                name,
                view.source,
                view.entity,
                f"v{view.version}",
                format_duration(view.ttl_s),
                ", ".join(view.feature_names()),
            )
        model = spec.model
        console.print(sources)
        console.print(views)
        console.print(
            f"model [bold]{model.name}[/]: {model.task} with {model.estimator}, "
            f"{len(spec.model_features())} features from {', '.join(spec.model_views())}, "
            f"label {model.label.source}.{model.label.field}, metric {model.metric}"
        )
        serving = spec.serving
        console.print(
            f"drift: trigger {spec.drift.trigger}, window {spec.drift.window_size}, "
            f"persistence {spec.drift.persistence}; serving: canary {serving.canary_weight:.0%}, "
            f"shadow {'on' if serving.shadow else 'off'}, timeout {serving.timeout_ms} ms"
        )
        console.print(f"[green]ok[/] {escape(str(path))}")

    @spec_app.command("schema")
    def schema(
        out: Annotated[
            Path | None, typer.Argument(help="File to write; default: standard output.")
        ] = None,
    ) -> None:
        """The JSON Schema of mlbus.yaml, for editor completion and validation."""
        from mlbus.spec import ProjectSpec

        text = json.dumps(ProjectSpec.model_json_schema(), indent=2, sort_keys=True) + "\n"
        if out is None:
            typer.echo(text, nl=False)
        else:
            out.write_text(text)
            console.print(f"wrote {out}")
