"""Point-in-time correct training sets: each label sees only feature values known at its time.

    labels = pa.table({"entity_id": [...], "event_id": [...], "label": [...]})
    ts = build_training_set(offline, "card_activity", 1, labels, start=..., end=...)
    ts.table, ts.fingerprint, ts.files

A label names its entity and either the event it labels (`event_id`) or a time
(`label_time`); both mean the same moment as serving does (ADR 0020):

- **by event**: the row *of that event* — its own fields and each aggregate at its
  time over the events before it, exactly what serving computed when it scored
  that event. Its time is the label's `as_of`.
- **by time** (a label without an event row, or a view of another source read at
  the labelled event's time): DuckDB's `ASOF LEFT JOIN` on `feature_time < as_of`
  per entity — the latest row whose state was complete before that time — with
  each aggregate re-aged to `as_of` through the row's `window_steps`, as an
  online read at that time would. A label before any row gets nulls.

Rows replayed after a crash (same event id) and rows sharing a `feature_time`
resolve to the last one processed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from mlbus.errors import InvalidInput
from mlbus.featurestore._offline import META_COLUMNS, OfflineStore
from mlbus.featurestore._windows import value_at

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
    """Labels with the feature values of their moment (pure; DuckDB, see the module doc).

    Output: the label columns, `as_of`, `feature_time` (null when no row was
    known yet), then `feature_columns`, in the labels' order.
    """
    import duckdb

    labels = _normalise_labels(labels)
    has_event = "event_id" in labels.column_names
    has_time = "label_time" in labels.column_names
    if "window_steps" not in features.column_names:
        features = features.append_column("window_steps", pa.nulls(features.num_rows, pa.string()))
    label_cols = ", ".join(f"q.{_quote(c)}" for c in labels.column_names)
    cols = "".join(f", r.{_quote(c)}" for c in feature_columns)
    out_cols = "".join(f", m.{_quote(c)}" for c in feature_columns)
    event_pick = (
        "q._label_order, r.event_time AS as_of, r.feature_time, r.window_steps, "
        f"false AS _by_time{cols}"
    )
    time_pick = (
        "q._label_order, q.label_time AS as_of, r.feature_time, r.window_steps, "
        f"true AS _by_time{cols}"
    )
    nothing = f"SELECT {event_pick} FROM q, rows r WHERE false"
    by_event = (
        f"SELECT {event_pick} FROM q JOIN by_id r ON r.event_id = q.event_id"
        if has_event
        else nothing
    )
    # labels without an event row, at their own time: the latest state complete before it
    by_time = (
        f"SELECT {time_pick} "
        "FROM (SELECT * FROM q WHERE label_time IS NOT NULL AND _label_order NOT IN "
        "(SELECT _label_order FROM by_event)) q "
        "ASOF LEFT JOIN by_time r ON q.entity_id = r.entity_id AND q.label_time > r.feature_time"
        if has_time
        else nothing
    )
    sql = f"""
        WITH by_time AS (
            SELECT * FROM rows
            QUALIFY row_number() OVER (
                PARTITION BY entity_id, feature_time ORDER BY processed_at DESC, event_id DESC
            ) = 1
        ),
        by_id AS (
            SELECT * FROM rows
            QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY processed_at DESC) = 1
        ),
        q AS (SELECT l.*, row_number() OVER () AS _label_order FROM labels l),
        by_event AS ({by_event}),
        matched AS (SELECT * FROM by_event UNION ALL BY NAME ({by_time}))
        SELECT {label_cols}, m.as_of, m.feature_time, m.window_steps, m._by_time{out_cols}
        FROM q LEFT JOIN matched m ON m._label_order = q._label_order
        ORDER BY q._label_order
    """
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("rows", features)
        con.register("labels", labels)
        table = con.sql(sql).to_arrow_table()
    table = _reage(table, feature_columns)
    return table.drop_columns(["window_steps", "_by_time"])


def _reage(table: pa.Table, feature_columns: Sequence[str]) -> pa.Table:
    """Aggregates of rows joined by time, evaluated at the label's `as_of` through the
    row's step functions (an online read at that time would give the same)."""
    by_time = table.column("_by_time").to_pylist()
    steps_of = table.column("window_steps").to_pylist()
    if not any(t and s for t, s in zip(by_time, steps_of, strict=True)):
        return table
    as_of = table.column("as_of").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    moments = as_of.to_pylist()
    parsed = [json.loads(s) if t and s else None for t, s in zip(by_time, steps_of, strict=True)]
    for name in feature_columns:
        if not any(p is not None and name in p for p in parsed):
            continue
        index = table.column_names.index(name)
        column = table.column(name)
        values = column.to_pylist()
        for i, steps in enumerate(parsed):
            if steps is not None and name in steps:
                values[i] = value_at(steps[name], moments[i])
        table = table.set_column(index, name, pa.array(values, type=column.type))
    return table


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
    prior = rows.column("prior_events") if "prior_events" in rows.column_names else None
    if prior is None or prior.null_count:
        old = rows.num_rows if prior is None else prior.null_count
        raise InvalidInput(
            f"{old} offline row(s) of view {view!r} v{version} were written before ADR 0020 "
            "and hold each aggregate after its event counted, not what serving sees; rebuild "
            "the view (replay its source into a new data folder, or bump the view's version)"
        )
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
