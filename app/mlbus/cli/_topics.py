"""`mlbus topics ensure`: create every mlbus topic (and the spec's source topics).

What a deployment runs once before the services (the Kubernetes Job in
`deploy/k8s/base/topics.yaml`); services also create the topics they use on
start, but with a real cluster an operator wants partitions and replication
decided up front. Idempotent: topics that exist are left as they are (Kafka
cannot shrink partitions, and growing them moves keys between partitions).

Data-plane topics (per-record events, and the source topics producers write
to) get `--partitions` (default `MLBUS_KAFKA_TOPIC_PARTITIONS`): the ceiling
on replicas per consumer group. Control-plane topics carry a few events a day
keyed by model; `--control-partitions` (default: the same) is enough at 3.
Replication is `MLBUS_KAFKA_REPLICATION_FACTOR`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlbus.cli._common import connect, console, fail

if TYPE_CHECKING:
    from mlbus.config import KafkaSettings
    from mlbus.spec import ProjectSpec


def wanted_topics(
    spec: ProjectSpec | None, partitions: int, control_partitions: int
) -> dict[str, int]:
    """Topic → partitions: every mlbus event topic, plus the spec's source topics."""
    from mlbus.events import EVENT_TYPES

    wanted = {
        cls.topic: partitions if cls.plane == "data" else control_partitions
        for cls in EVENT_TYPES.values()
    }
    if spec is not None:
        wanted |= {source.topic: partitions for source in spec.sources.values()}
    return dict(sorted(wanted.items()))


async def ensure_all(kafka: KafkaSettings, wanted: dict[str, int]) -> list[str]:
    """Create what is missing, one admin round per partition count; the names created."""
    from mlbus.bus import ensure_topics

    created: list[str] = []
    for count in sorted(set(wanted.values())):
        names = [name for name, n in wanted.items() if n == count]
        created += await ensure_topics(kafka, names, partitions=count)
    return sorted(created)


def register(app: typer.Typer) -> None:
    """Add `mlbus topics …` to the root app."""
    topics = typer.Typer(help="Kafka topics mlbus uses.", no_args_is_help=True)
    app.add_typer(topics, name="topics")

    @topics.command("ensure")
    def ensure(
        spec: Annotated[
            Path | None,
            typer.Option(
                "--spec",
                envvar="MLBUS_SPEC",
                help="mlbus.yaml; its source topics are created too (default: MLBUS_SPEC).",
                dir_okay=False,
            ),
        ] = None,
        partitions: Annotated[
            int | None,
            typer.Option(
                "--partitions",
                min=1,
                max=1000,
                help="Partitions of data-plane and source topics "
                "(default: MLBUS_KAFKA_TOPIC_PARTITIONS).",
            ),
        ] = None,
        control_partitions: Annotated[
            int | None,
            typer.Option(
                "--control-partitions",
                min=1,
                max=1000,
                help="Partitions of control-plane topics (default: as --partitions).",
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    ) -> None:
        """Create every mlbus topic that does not exist yet; existing ones are left alone."""
        from mlbus.errors import ConfigError
        from mlbus.spec import SpecError, load_spec

        settings = connect().settings
        kafka = settings.kafka
        try:
            kafka.require_bootstrap()
            project = load_spec(spec) if spec is not None else None
        except SpecError as exc:
            fail(str(exc), code=2)
        except ConfigError as exc:
            fail(str(exc), code=2)
        data = partitions or kafka.topic_partitions
        wanted = wanted_topics(project, data, control_partitions or data)
        try:
            created = asyncio.run(ensure_all(kafka, wanted))
        except Exception as exc:  # aiokafka's connection errors share no useful base class
            fail(f"cannot create topics on {kafka.bootstrap_servers}: {exc}")
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "created": created,
                        "existing": sorted(set(wanted) - set(created)),
                        "partitions": wanted,
                        "replication_factor": kafka.replication_factor,
                    }
                )
            )
            return
        for name, count in wanted.items():
            state = "[green]created[/]" if name in created else "exists"
            console.print(f"{name:40} {count:4d} partitions  {state}", highlight=False)
        console.print(
            f"{len(created)} created, {len(wanted) - len(created)} already there "
            f"(replication {kafka.replication_factor})",
            highlight=False,
        )
