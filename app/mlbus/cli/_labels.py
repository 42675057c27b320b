"""`mlbus labels queue | submit`: the labeling loop from the command line.

`queue` reads the queue the outcomes service keeps in Redis (`mlbus.labeling`);
`submit` turns a person's answer into a label event on the spec's labels source
topic, checked against that source's contract first, so ingestion validates it
like any producer's label and the trainer and drift use it with no special path.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from mlbus.cli._common import connect, console, fail


def _fields(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            fail(f"--field: expected name=value, got {pair!r}", code=2)
        try:
            out[name] = json.loads(text)
        except ValueError:
            out[name] = text
    return out


def register(app: typer.Typer) -> None:
    labels = typer.Typer(
        help="The labeling loop: what asks for a label, and answering it.", no_args_is_help=True
    )
    app.add_typer(labels, name="labels")

    @labels.command("queue")
    def queue(
        limit: Annotated[int, typer.Option("--limit", min=0, help="Requests to show.")] = 20,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Waiting requests, highest priority first; requested, answered, expired, answer rate."""
        from mlbus.errors import ConfigError
        from mlbus.spec import load_spec

        settings = connect().settings
        if settings.spec is None:
            fail("no spec: pass --spec to `mlbus up`, or set MLBUS_SPEC", code=2)
        from mlbus.labeling import read_queue

        try:
            model = load_spec(settings.spec).model.name
            found = asyncio.run(read_queue(settings.redis, model, limit))
        except ConfigError as exc:
            fail(str(exc), code=2)
        except (OSError, ConnectionError, TimeoutError) as exc:
            fail(f"Redis at {settings.redis.url} is not reachable: {exc}")
        if as_json:
            console.print_json(json.dumps(found))
            return
        counts = found["counts"]
        rate = counts["answer_rate"]
        console.print(
            f"{found['model']}: {counts['open']:,} open, {counts['requested']:,} requested, "
            f"{counts['answered']:,} answered, {counts['expired']:,} expired, "
            f"{counts['dropped']:,} dropped (queue full); answer rate "
            + ("—" if rate is None else f"{rate:.0%}"),
            highlight=False,
        )
        from rich.table import Table

        table = Table(title="open requests (highest priority first)", title_justify="left")
        for column in ("scored event", "entity", "reason", "priority", "scores", "predicted"):
            table.add_column(column)
        for item in found["open"]:
            table.add_row(
                item["scored_event_id"],
                str(item.get("entity_id")),
                item["reason"],
                f"{item['priority']:.2f}",
                ", ".join(f"{k} {v:.3f}" for k, v in item["scores"].items()),
                str(item["predicted_at"])[:19],
            )
        console.print(table)

    @labels.command("submit")
    def submit(
        scored_event_id: Annotated[str, typer.Argument(help="The event the label is for.")],
        value: Annotated[str, typer.Argument(help="The label (true/false, a class, a number).")],
        entity: Annotated[
            str | None,
            typer.Option("--entity", help="The entity id (default: the queued request's)."),
        ] = None,
        field: Annotated[
            list[str] | None,
            typer.Option("--field", help="Another field of the label event, name=value."),
        ] = None,
    ) -> None:
        """Send a label to the spec's labels source topic, checked against its contract."""
        from mlbus.errors import ConfigError, InvalidInput, NotFound
        from mlbus.labeling import submit_label
        from mlbus.spec import load_spec

        settings = connect().settings
        if settings.spec is None:
            fail("no spec: pass --spec to `mlbus up`, or set MLBUS_SPEC", code=2)
        try:
            spec = load_spec(settings.spec)
            settings.kafka.require_bootstrap()
            topic, raw = asyncio.run(
                submit_label(
                    settings.kafka,
                    settings.redis if settings.redis.url else None,
                    spec,
                    scored_event_id=scored_event_id,
                    value=value,
                    entity_id=entity,
                    extra=_fields(field or []),
                )
            )
        except (ConfigError, InvalidInput) as exc:
            fail(str(exc), code=2)
        except NotFound as exc:
            fail(f"{exc} with --entity", code=2)
        except (OSError, ConnectionError, TimeoutError) as exc:
            fail(f"could not send the label: {exc}")
        console.print(f"label sent to {topic}: {raw.decode()}", highlight=False)
