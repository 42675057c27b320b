"""`mlbus ingest validate` and `mlbus ingest dlq list|replay`.

`validate` runs the ingestion service's own checks (`mlbus.contracts`) on a
JSON-lines file, offline: what to run before turning a producer on.
`dlq` reads `mlbus.ingest.rejected.v1` from the running broker, and
re-submits selected rejected records (their original bytes and key) to their
source topic once the contract or the producer is fixed.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from mlbus.cli._common import connect, console, err_console, fail

if TYPE_CHECKING:
    from mlbus.config import KafkaSettings
    from mlbus.contracts import ContractValidator
    from mlbus.events import IngestRejected
    from mlbus.spec import ProjectSpec

REPLAY_HEADER = "mlbus_replayed_from"


@dataclass(frozen=True)
class DeadLetter:
    """One record of the ingestion DLQ and where it sits in `mlbus.ingest.rejected.v1`."""

    partition: int
    offset: int
    event: IngestRejected

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.event.raw_b64)

    @property
    def key(self) -> bytes | None:
        return None if self.event.key_b64 is None else base64.b64decode(self.event.key_b64)

    def as_json(self) -> dict[str, object]:
        return {
            "position": self.position,
            "partition": self.partition,
            "offset": self.offset,
            **self.event.model_dump(mode="json"),
        }


def parse_position(text: str) -> tuple[int, int]:
    """`"2:41"` → (2, 41): a record of the DLQ topic, as `dlq list` prints it."""
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise typer.BadParameter(f"expected PARTITION:OFFSET as `dlq list` prints it, got {text!r}")
    return int(partition), int(offset)


def select(
    letters: list[DeadLetter],
    *,
    source: str | None = None,
    reason: str | None = None,
    positions: set[tuple[int, int]] | None = None,
) -> list[DeadLetter]:
    return [
        d
        for d in letters
        if (source is None or d.event.source == source)
        and (reason is None or any(r.code == reason for r in d.event.reasons))
        and (not positions or (d.partition, d.offset) in positions)
    ]


async def read_dead_letters(kafka: KafkaSettings, timeout_s: float = 30.0) -> list[DeadLetter]:
    """Every record of the ingestion DLQ up to its current end, oldest first per partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from pydantic import ValidationError

    from mlbus.events import INGEST_REJECTED, IngestRejected

    reader = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
    await reader.start()
    letters: list[DeadLetter] = []
    try:
        partitions = reader.partitions_for_topic(INGEST_REJECTED)
        if partitions is None:
            await reader.force_metadata_update()
            partitions = reader.partitions_for_topic(INGEST_REJECTED) or set()
        tps = [TopicPartition(INGEST_REJECTED, p) for p in sorted(partitions)]
        if not tps:
            return []
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        async with asyncio.timeout(timeout_s):
            while remaining:
                batch = await reader.getmany(*remaining, timeout_ms=200)
                for tp, records in batch.items():
                    # Some brokers (Tansu) answer ListOffsets with the last batch's first
                    # offset + 1; the high watermark of a fetch is the real end.
                    ends[tp] = max(ends[tp], reader.highwater(tp) or 0)
                    for record in records:
                        if record.offset >= ends[tp]:
                            break
                        try:
                            event = IngestRejected.model_validate_json(record.value or b"")
                        except ValidationError:
                            continue  # not an ingestion rejection; nothing to replay
                        letters.append(DeadLetter(tp.partition, record.offset, event))
                for tp in list(remaining):
                    if await reader.position(tp) >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await reader.stop()
    return letters


async def replay(kafka: KafkaSettings, letters: list[DeadLetter]) -> int:
    """Send each record's original bytes and key back to its source topic; returns how many."""
    from mlbus.bus import Publisher
    from mlbus.events import INGEST_REJECTED

    async with Publisher(kafka, source="cli") as publisher:
        futures = [
            await publisher.send_raw(
                d.event.source_topic,
                d.raw,
                d.key,
                headers=[(REPLAY_HEADER, f"{INGEST_REJECTED}/{d.position}".encode())],
            )
            for d in letters
        ]
        await asyncio.gather(*futures)
    return len(futures)


def _validator_for(spec: ProjectSpec, file: Path, source: str | None) -> ContractValidator:
    from mlbus.contracts import SourceContracts

    contracts = SourceContracts(spec)
    names = list(contracts.by_source)
    if source is None:
        if file.stem in contracts.by_source:
            source = file.stem  # `mlbus example generate` writes <source>.jsonl
        elif len(names) == 1:
            source = names[0]
        else:
            fail(f"which source is {file.name}? pass --source, one of: {', '.join(names)}", code=2)
    if source not in contracts.by_source:
        fail(f"--source: expected one of {', '.join(names)}, got {source!r}", code=2)
    return contracts.for_source(source)


def _kafka() -> KafkaSettings:
    from mlbus.errors import ConfigError

    settings = connect().settings
    try:
        settings.kafka.require_bootstrap()
    except ConfigError as exc:
        fail(str(exc), code=2)
    return settings.kafka


def _load(kafka: KafkaSettings) -> list[DeadLetter]:
    try:
        return asyncio.run(read_dead_letters(kafka))
    except (TimeoutError, OSError) as exc:
        fail(f"cannot read the ingestion DLQ from {kafka.bootstrap_servers}: {exc}")
    except Exception as exc:  # aiokafka's connection errors share no useful base class
        fail(f"cannot read the ingestion DLQ from {kafka.bootstrap_servers}: {exc}")


def _preview(raw: bytes, width: int = 60) -> str:
    text = raw.decode("utf-8", "replace").replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    ingest = typer.Typer(help="Data contracts and the ingestion DLQ.", no_args_is_help=True)
    dlq = typer.Typer(help="Rejected events: inspect and replay.", no_args_is_help=True)
    app.add_typer(ingest, name="ingest")
    ingest.add_typer(dlq, name="dlq")

    @ingest.command("validate")
    def validate(
        file: Annotated[Path, typer.Argument(help="JSON lines: one event per line.")],
        spec: Annotated[Path, typer.Option("--spec", help="The mlbus.yaml with the contract.")],
        source: Annotated[
            str | None,
            typer.Option("--source", help="Source whose contract applies; default: file name."),
        ] = None,
        now: Annotated[
            str | None,
            typer.Option("--now", help="Clock for skew/lateness rules (ISO-8601); default: now."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    ) -> None:
        """Validate a file with the ingestion service's checks; exit 1 if any line is rejected."""
        from rich.table import Table

        from mlbus.contracts import TOO_LATE, validate_lines
        from mlbus.spec import SpecError, load_spec

        try:
            project = load_spec(spec)
        except SpecError as exc:
            fail(str(exc), code=2)
        validator = _validator_for(project, file, source)
        now_s: float | None = None
        if now is not None:
            try:
                moment = datetime.fromisoformat(now)
            except ValueError:
                fail(f"--now: expected an ISO-8601 time such as 2025-01-01T00:00:00Z, got {now!r}")
            if moment.tzinfo is None:
                fail(f"--now: expected a time with a UTC offset ('Z' or '+01:00'), got {now!r}")
            now_s = moment.timestamp()
        try:
            with file.open("rb") as lines:
                report = validate_lines(validator, lines, now_s=now_s)
        except OSError as exc:
            fail(f"cannot read {file}: {exc.strerror or exc}")
        if as_json:
            typer.echo(json.dumps(report.as_json()))
            raise typer.Exit(0 if report.ok else 1)
        console.print(
            f"{escape(str(file))}: source [bold]{report.source}[/] "
            f"(contract v{report.contract_version}) — {report.lines:,} events: "
            f"[green]{report.accepted:,} accepted[/], "
            f"[red]{report.rejected:,} rejected[/], {report.duplicates:,} duplicates",
            highlight=False,
        )
        if report.by_reason:
            table = Table("reason", "events", "fields", "example")
            for code, count in report.by_reason.most_common():
                fields = Counter(
                    {name: n for (c, name), n in report.by_field.items() if c == code and name}
                )
                example = report.examples[code][0]
                table.add_row(
                    code,
                    f"{count:,}",
                    ", ".join(f"{name} ({n:,})" for name, n in fields.most_common(4)),
                    escape(f"line {example.line}: {example.message}"),
                )
            console.print(table)
            if report.by_reason.get(TOO_LATE) and now is None:
                err_console.print(
                    "hint: events older than the contract's max_lateness_s are rejected; "
                    "pass --now to validate a historical file against its own time"
                )
        raise typer.Exit(0 if report.ok else 1)

    @dlq.command("list")
    def list_(
        source: Annotated[str | None, typer.Option("--source", help="Only this source.")] = None,
        reason: Annotated[str | None, typer.Option("--reason", help="Only this code.")] = None,
        limit: Annotated[int, typer.Option("--limit", min=1, help="The newest N.")] = 20,
        as_json: Annotated[bool, typer.Option("--json", help="JSON lines on stdout.")] = False,
    ) -> None:
        """Show rejected events: where they sit, their source, every reason, a payload prefix."""
        from rich.table import Table

        letters = select(_load(_kafka()), source=source, reason=reason)
        letters.sort(key=lambda d: (d.event.occurred_at, d.partition, d.offset))
        shown_letters = letters[-limit:]
        if as_json:
            for letter in shown_letters:
                typer.echo(json.dumps(letter.as_json()))
            return
        table = Table(
            "position",
            "rejected at",
            "source",
            "from",
            "reasons",
            "payload",
            title=f"{len(shown_letters)} of {len(letters)} rejected events",
        )
        for d in shown_letters:
            event = d.event
            table.add_row(
                d.position,
                event.occurred_at.strftime("%Y-%m-%d %H:%M:%S"),
                event.source or "?",
                f"{event.source_topic}[{event.source_partition}]@{event.source_offset}",
                escape(", ".join(dict.fromkeys(r.code for r in event.reasons))),
                escape(_preview(d.raw)),
            )
        console.print(table)

    @dlq.command("replay")
    def replay_(
        source: Annotated[str | None, typer.Option("--source", help="Only this source.")] = None,
        reason: Annotated[str | None, typer.Option("--reason", help="Only this code.")] = None,
        offset: Annotated[
            list[str] | None,
            typer.Option("--offset", help="PARTITION:OFFSET from `dlq list`; repeatable."),
        ] = None,
        everything: Annotated[
            bool, typer.Option("--all", help="Replay every rejected event.")
        ] = False,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Say what would be replayed; send nothing.")
        ] = False,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask to confirm.")] = False,
    ) -> None:
        """Re-publish rejected events' original bytes to their source topic."""
        if source is None and reason is None and not offset and not everything:
            fail("choose what to replay: --source, --reason, --offset, or --all", code=2)
        positions = {parse_position(text) for text in offset or ()}
        kafka = _kafka()
        chosen = select(_load(kafka), source=source, reason=reason, positions=positions)
        if not chosen:
            console.print("nothing to replay: no rejected event matches")
            return
        by_topic = Counter(d.event.source_topic for d in chosen)
        by_reason = Counter(r.code for d in chosen for r in dict.fromkeys(d.event.reasons))
        console.print(
            f"{'would replay' if dry_run else 'replay'} {len(chosen):,} events to "
            + ", ".join(f"{topic} ({n:,})" for topic, n in by_topic.most_common())
            + "; reasons: "
            + ", ".join(f"{code} ({n:,})" for code, n in by_reason.most_common()),
            highlight=False,
        )
        if dry_run:
            return
        if not yes and not typer.confirm(f"Replay {len(chosen):,} events?"):
            raise typer.Exit(1)
        try:
            sent = asyncio.run(replay(kafka, chosen))
        except Exception as exc:  # broker down mid-way: say so, nothing is half-hidden
            fail(f"replay failed: {exc}")
        console.print(f"replayed {sent:,} events")
