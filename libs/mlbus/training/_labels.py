"""The label log: label events recorded as Parquet beside the offline feature rows.

Layout: `<offline root>/_labels/<label source>/date=YYYY-MM-DD/part-*.parquet`
with columns `entity_id`, `event_id` (the event the label names), `label_time`,
`label_event_id` (the label event's own id, for de-duplication) and `label`.
The trainer service appends to it from validated label events; training reads it.
An event labelled more than once (a person correcting a producer's label, a
chargeback after a review) trains on its latest label (`latest_per_event`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlbus.featurestore import OfflineStore

LABELS_DIR = "_labels"
_TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True, slots=True)
class LabelRow:
    """One label: which event of which entity it names, when it was known, its value."""

    entity_id: str
    event_id: str
    label_time_ms: int
    label_event_id: str
    label: bool | int | float | str


def label_schema(label_type: pa.DataType) -> pa.Schema:
    return pa.schema(
        [
            pa.field("entity_id", pa.string(), nullable=False),
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("label_time", _TS, nullable=False),
            pa.field("label_event_id", pa.string(), nullable=False),
            pa.field("label", label_type),
        ]
    )


def _label_type(values: Sequence[object]) -> pa.DataType:
    if all(isinstance(v, bool) for v in values):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pa.int64()
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return pa.float64()
    return pa.string()


def labels_dir(offline: OfflineStore, source: str) -> str:
    return f"{offline.root}/{LABELS_DIR}/{source}"


def write_labels(offline: OfflineStore, source: str, rows: Sequence[LabelRow]) -> list[str]:
    """Append `rows` as one new file per date of their label time; return the paths."""
    if not rows:
        return []
    schema = label_schema(_label_type([r.label for r in rows]))
    by_date: dict[date, list[LabelRow]] = {}
    for row in rows:
        day = datetime.fromtimestamp(row.label_time_ms / 1000, UTC).date()
        by_date.setdefault(day, []).append(row)
    written: list[str] = []
    for day, day_rows in sorted(by_date.items()):
        folder = f"{labels_dir(offline, source)}/date={day.isoformat()}"
        name = f"part-{uuid.uuid4().hex[:16]}.parquet"
        table = pa.table(
            {
                "entity_id": [r.entity_id for r in day_rows],
                "event_id": [r.event_id for r in day_rows],
                "label_time": [r.label_time_ms for r in day_rows],
                "label_event_id": [r.label_event_id for r in day_rows],
                "label": [r.label for r in day_rows],
            },
            schema=schema,
        )
        if offline.local:
            offline.fs.create_dir(folder, recursive=True)
        written.append(offline.write_table(table, folder, name))
    return written


def label_files(offline: OfflineStore, source: str) -> list[str]:
    selector = pafs.FileSelector(labels_dir(offline, source), allow_not_found=True, recursive=True)
    return sorted(
        info.path
        for info in offline.fs.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.path.endswith(".parquet")
        and not info.base_name.startswith(".")
    )


def read_labels(offline: OfflineStore, files: Sequence[str]) -> pa.Table:
    """Every label in `files`, de-duplicated by the label event's id (replays)."""
    tables = [pq.read_table(f, filesystem=offline.fs) for f in files]
    if not tables:
        return label_schema(pa.bool_()).empty_table()
    table = pa.concat_tables(tables, promote_options="permissive")
    return _first_per(table, "label_event_id", by="label_time", order="label_time")


def latest_per_event(labels: pa.Table) -> pa.Table:
    """One label per labelled event: the latest by label time (ties: the greatest label
    event id, so every reader picks the same one), in label time order.

    A later label of an event is a correction; training on both would teach the
    model two answers for one input.
    """
    return _first_per(
        labels,
        "event_id",
        by="label_time DESC, label_event_id DESC",
        order="label_time, label_event_id",
    )


def _first_per(labels: pa.Table, key: str, *, by: str, order: str) -> pa.Table:
    """The first row of each `key` when sorted `by`, the rows sorted by `order` (DuckDB SQL)."""
    import duckdb

    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("labels", labels)
        return con.sql(
            f"SELECT * FROM labels QUALIFY row_number() OVER "
            f"(PARTITION BY {key} ORDER BY {by}) = 1 ORDER BY {order}"
        ).to_arrow_table()
