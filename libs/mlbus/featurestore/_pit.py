"""Point-in-time correct training sets: each label sees only feature values known at its time.

    labels = pa.table({"entity_id": [...], "event_id": [...], "label": [...]})
    ts = build_training_set(offline, "card_activity", 1, labels, start=..., end=...)
    ts.table, ts.fingerprint, ts.files

A label names its entity and either the event it labels (`event_id`, resolved
to that event's time through the offline rows) or a time (`label_time`). The
join is DuckDB's `ASOF LEFT JOIN` on `feature_time <= as_of` per entity: the
latest row whose values were known at that time, never a later one; a label
before any feature row gets nulls. Offline rows are first de-duplicated (a row
replayed after a crash has the same event id) and, when several rows share a
`feature_time`, the last one processed wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from mlbus.errors import InvalidInput
from mlbus.featurestore._offline import META_COLUMNS, OfflineStore

_TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class TrainingSet:
    """A training frame and exactly what it was built from."""

    table: pa.Table
    fingerprint: str
    files: tuple[str, ...]
    feature_columns: tuple[str, ...]
    labels_without_features: int


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _normalise_labels(labels: pa.Table) -> pa.Table:
    if "entity_id" not in labels.column_names:
        raise InvalidInput("labels need an 'entity_id' column")
    if "event_id" not in labels.column_names and "label_time" not in labels.column_names:
        raise InvalidInput("labels need an 'event_id' or a 'label_time' column")
    if "label_time" in labels.column_names:
        index = labels.column_names.index("label_time")
        column = labels.column("label_time")
        if pa.types.is_timestamp(column.type) and column.type.tz is None:
            column = column.cast(pa.timestamp(column.type.unit, tz="UTC"))
        labels = labels.set_column(index, "label_time", column.cast(_TS))
    return labels


def point_in_time_join(
    features: pa.Table, labels: pa.Table, feature_columns: Sequence[str]
) -> pa.Table:
    """Labels with the feature values known at each label's time (pure; DuckDB ASOF JOIN).

    Output: the label columns, `as_of`, `feature_time` (null when no row was
    known yet), then `feature_columns`, in the labels' order.
    """
    import duckdb

    labels = _normalise_labels(labels)
    has_event = "event_id" in labels.column_names
    has_time = "label_time" in labels.column_names
    if has_event and has_time:
        as_of = "coalesce(ev.event_time, l.label_time)"
    elif has_event:
        as_of = "ev.event_time"
    else:
        as_of = "l.label_time"
    event_join = (
        "LEFT JOIN (SELECT event_id, min(event_time) AS event_time FROM rows GROUP BY event_id) ev "
        "ON ev.event_id = l.event_id"
        if has_event
        else ""
    )
    label_cols = ", ".join(f"q.{_quote(c)}" for c in labels.column_names)
    feature_cols = ", ".join(f"f.{_quote(c)}" for c in feature_columns)
    sql = f"""
        WITH f AS (
            SELECT * FROM rows
            QUALIFY row_number() OVER (
                PARTITION BY entity_id, feature_time ORDER BY processed_at DESC, event_id DESC
            ) = 1
        ),
        q AS (
            SELECT l.*, {as_of} AS as_of, row_number() OVER () AS _label_order
            FROM labels l {event_join}
        )
        SELECT {label_cols}, q.as_of, f.feature_time{", " + feature_cols if feature_cols else ""}
        FROM q ASOF LEFT JOIN f ON q.entity_id = f.entity_id AND q.as_of >= f.feature_time
        ORDER BY q._label_order
    """
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("rows", features)
        con.register("labels", labels)
        return con.sql(sql).to_arrow_table()


def build_training_set(
    offline: OfflineStore,
    view: str,
    version: int,
    labels: pa.Table,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    files: Sequence[str] | None = None,
) -> TrainingSet:
    """The point-in-time training frame for `labels` from the view's offline rows.

    Reads `files` when given, else every file of the view whose date overlaps
    [start, end); `fingerprint` hashes the contents of exactly those files.
    """
    chosen = (
        list(files) if files is not None else offline.files(view, version, start=start, end=end)
    )
    if not chosen:
        raise InvalidInput(f"no offline rows for view {view!r} v{version} in the requested range")
    rows = offline.read(chosen)
    feature_columns = tuple(c for c in rows.column_names if c not in META_COLUMNS)
    table = point_in_time_join(rows, labels, feature_columns)
    missing = table.column("feature_time").null_count
    return TrainingSet(
        table=table,
        fingerprint=offline.fingerprint(chosen),
        files=tuple(chosen),
        feature_columns=feature_columns,
        labels_without_features=missing,
    )
