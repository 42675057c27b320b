"""Reading back what the stack kept: topics from their beginning, the offline store, the
label log, the registry's alias history. Turned into the facts `_checks` judges."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass

from mlbus.config import KafkaSettings
from mlbus.events import INGEST_REJECTED, MODEL_PUBLISHED, IngestRejected, ModelPublished
from mlbus.featurestore import OfflineStore
from mlbus.registry_client import RegistryClient
from mlbus.spec import FeatureDef

from ._checks import AliasMove, Letter, StoredRow


@dataclass(frozen=True)
class TopicRecord:
    partition: int
    offset: int
    value: bytes


async def read_topic(
    kafka: KafkaSettings, topic: str, timeout_s: float = 120.0
) -> list[TopicRecord]:
    """Every record of `topic` up to its current end, in offset order per partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    reader = AIOKafkaConsumer(
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 << 20,
    )
    await reader.start()
    out: list[TopicRecord] = []
    try:
        partitions = reader.partitions_for_topic(topic)
        if partitions is None:
            await reader.force_metadata_update()
            partitions = reader.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        async with asyncio.timeout(timeout_s):
            while remaining:
                batch = await reader.getmany(*remaining, timeout_ms=500, max_records=10_000)
                for tp, records in batch.items():
                    # Tansu may answer ListOffsets short of the end; a fetch's high
                    # watermark is the real end (as `mlbus ingest dlq` reads it).
                    ends[tp] = max(ends[tp], reader.highwater(tp) or 0)
                    out.extend(
                        TopicRecord(tp.partition, r.offset, r.value or b"")
                        for r in records
                        if r.offset < ends[tp]
                    )
                for tp in list(remaining):
                    if await reader.position(tp) >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await reader.stop()
    return out


async def read_letters(kafka: KafkaSettings) -> list[Letter]:
    """The ingestion dead-letter topic, as `Letter`s."""
    letters = []
    for record in await read_topic(kafka, INGEST_REJECTED):
        event = IngestRejected.model_validate_json(record.value)
        letters.append(
            Letter(
                position=(event.source_topic, event.source_partition, event.source_offset),
                raw=base64.b64decode(event.raw_b64),
                reasons=tuple(r.code for r in event.reasons),
            )
        )
    return letters


async def read_publications(kafka: KafkaSettings, model: str) -> list[AliasMove]:
    """`model.published` events of `model`, in bus order (one partition per model key)."""
    records = await read_topic(kafka, MODEL_PUBLISHED)
    moves: list[tuple[int, int, AliasMove]] = []
    for record in records:
        event = ModelPublished.model_validate_json(record.value)
        if event.model == model:
            moves.append(
                (
                    record.partition,
                    record.offset,
                    AliasMove(event.event_id, event.alias, event.version),
                )
            )
    if len({partition for partition, _, _ in moves}) > 1:
        raise ValueError(f"model.published events of {model} on more than one partition")
    return [move for _, _, move in sorted(moves, key=lambda m: (m[0], m[1]))]


async def read_alias_history(registry: RegistryClient, model: str) -> list[AliasMove]:
    """The registry's alias moves of `model`, oldest first."""
    changes = await registry.alias_history(model)
    return [AliasMove(c.event_id, c.alias, c.version) for c in reversed(changes)]


async def scored_event_ids(kafka: KafkaSettings, topic: str) -> set[str]:
    """`scored_event_id`s of every prediction logged (parsed lightly: one field of each)."""
    ids: set[str] = set()
    for record in await read_topic(kafka, topic):
        found = json.loads(record.value).get("scored_event_id")
        if isinstance(found, str):
            ids.add(found)
    return ids


def offline_columns(features: Sequence[FeatureDef]) -> list[str]:
    """The columns of a view's rows that say what the row is: all but `processed_at`."""
    from mlbus.featurestore import feature_schema

    return [name for name in feature_schema(features).names if name != "processed_at"]


def offline_rows(
    offline: OfflineStore, view: str, version: int, columns: Sequence[str]
) -> list[StoredRow]:
    """Every raw row of a view (no de-duplication), its content the values of `columns`."""
    import pyarrow.parquet as pq

    rows: list[StoredRow] = []
    for path in offline.files(view, version):
        table = pq.read_table(path, columns=list(columns), filesystem=offline.fs)
        values = [table.column(name).to_pylist() for name in columns]
        event_ids = table.column("event_id").to_pylist()
        rows.extend(
            StoredRow(str(event_id), tuple(column[i] for column in values))
            for i, event_id in enumerate(event_ids)
        )
    return rows


def first_values(
    rows: Sequence[StoredRow], columns: Sequence[str], names: Sequence[str]
) -> dict[str, dict[str, object]]:
    """The first row of each event as `{name: value}` for `names` (a subset of `columns`)."""
    index = {name: columns.index(name) for name in names}
    out: dict[str, dict[str, object]] = {}
    for row in rows:
        if row.event_id not in out:
            out[row.event_id] = {name: row.content[i] for name, i in index.items()}
    return out


def label_rows(offline: OfflineStore, source: str) -> list[StoredRow]:
    """Every raw row of a label source's log, keyed by the label event's own id."""
    import pyarrow.parquet as pq

    from mlbus.training import label_files

    rows: list[StoredRow] = []
    for path in label_files(offline, source):
        table = pq.read_table(path, filesystem=offline.fs)
        data = table.to_pylist()
        rows.extend(
            StoredRow(
                str(r["label_event_id"]),
                (r["event_id"], r["entity_id"], r["label_time"], r["label"]),
            )
            for r in data
        )
    return rows


def stored_ids(rows: Sequence[StoredRow]) -> set[str]:
    return {row.event_id for row in rows}
