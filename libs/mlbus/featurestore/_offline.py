"""The offline store: computed feature rows appended to Parquet, partitioned by date.

    store = OfflineStore("/data/offline")            # or "s3://bucket/prefix"
    store.write_rows("card_activity", 1, features, rows)
    files = store.files("card_activity", 1, start=..., end=...)
    table = store.read(files)

Layout: `<root>/<view>/v<version>/date=YYYY-MM-DD/part-<ms>-<id>.parquet`, the
date of each row's event time (UTC). A row holds the feature values *of its
event* (ADR 0020): the event's own raw fields and each aggregate at the event's
time over the entity's events counted before it — what serving computes when
it scores that event. Columns: `entity_id`, `event_id`, `event_time` (the time
the values are evaluated at), `feature_time` (the entity's watermark after the
event), `processed_at`, `view_version`, `prior_events` (events the state had
counted before this one: a served vector read with fewer was read before
ingestion caught up), `window_steps` (JSON: each aggregate's step function
after the event, so a read at any later time is exact), then one column per
feature. Rows may repeat after a crash (same `event_id`, same values); readers
de-duplicate by `event_id` (`read(dedupe=True)`).

An `s3://bucket/prefix` root goes through `pyarrow.fs.S3FileSystem`: AWS, or
any S3-compatible server named by `s3_endpoint_url` (or `?endpoint_url=` in
the URL, e.g. `s3://offline/prod?endpoint_url=http://minio:9000`). Credentials
and region come from the AWS SDK's usual chain (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, profiles, roles). An object appears
whole when its upload completes, so readers never see half a file there either.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlbus.errors import ConfigError
from mlbus.events import Scalar
from mlbus.featurestore._windows import Steps
from mlbus.spec import FeatureDef

META_COLUMNS = (
    "entity_id",
    "event_id",
    "event_time",
    "feature_time",
    "processed_at",
    "view_version",
    "prior_events",
    "window_steps",
)
_TS = pa.timestamp("ms", tz="UTC")
_ARROW_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "enum": pa.string(),
    "timestamp": pa.string(),  # as the producer sent it (ISO 8601)
}


@dataclass(frozen=True, slots=True)
class OfflineRow:
    """One computed row: the feature values of one event (ADR 0020)."""

    entity_id: str
    event_id: str
    event_time_ms: int
    feature_time_ms: int
    processed_at_ms: int
    values: dict[str, Scalar]
    prior_events: int | None = 0
    """None: a row spooled before ADR 0020 (values after its event); training refuses it."""
    steps: dict[str, Steps] | None = None

    def to_json(self) -> bytes:
        return json.dumps(
            [
                self.entity_id,
                self.event_id,
                self.event_time_ms,
                self.feature_time_ms,
                self.processed_at_ms,
                self.values,
                self.prior_events,
                self.steps,
            ],
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> OfflineRow:
        doc = json.loads(data)
        if len(doc) == 6:  # spooled before ADR 0020: kept, and marked as such
            doc += [None, None]
        entity_id, event_id, event_ms, feature_ms, processed_ms, values, prior, steps = doc
        return cls(entity_id, event_id, event_ms, feature_ms, processed_ms, values, prior, steps)


def feature_schema(features: Sequence[FeatureDef]) -> pa.Schema:
    """The Parquet schema of a view's rows."""
    fields = [
        pa.field("entity_id", pa.string(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_time", _TS, nullable=False),
        pa.field("feature_time", _TS, nullable=False),
        pa.field("processed_at", _TS, nullable=False),
        pa.field("view_version", pa.int32(), nullable=False),
        pa.field("prior_events", pa.int64()),
        pa.field("window_steps", pa.string()),
    ]
    for feature in features:
        if feature.name in META_COLUMNS:
            raise ConfigError(
                f"feature {feature.ref!r} collides with the offline column of that name"
            )
        dtype = _ARROW_TYPES[feature.dtype]
        if feature.function in ("sum", "mean"):
            dtype = pa.float64()
        elif feature.function in ("count", "distinct_count"):
            dtype = pa.int64()
        fields.append(pa.field(feature.name, dtype))
    return pa.schema(fields)


def rows_to_table(rows: Sequence[OfflineRow], version: int, schema: pa.Schema) -> pa.Table:
    columns: dict[str, Any] = {
        "entity_id": [r.entity_id for r in rows],
        "event_id": [r.event_id for r in rows],
        "event_time": [r.event_time_ms for r in rows],
        "feature_time": [r.feature_time_ms for r in rows],
        "processed_at": [r.processed_at_ms for r in rows],
        "view_version": [version] * len(rows),
        "prior_events": [r.prior_events for r in rows],
        "window_steps": [
            None if r.steps is None else json.dumps(r.steps, separators=(",", ":")) for r in rows
        ],
    }
    for name in schema.names[len(META_COLUMNS) :]:
        columns[name] = [r.values.get(name) for r in rows]
    arrays = []
    for schema_field in schema:
        values = columns[schema_field.name]
        if schema_field.type == pa.float64():
            values = [None if v is None else float(v) for v in values]
        arrays.append(pa.array(values, type=schema_field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _utc_date(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).date()


class OfflineStore:
    """Parquet files under a local folder or an object-store URL (`s3://…`, via pyarrow.fs)."""

    def __init__(
        self, url: str | Path, *, s3_endpoint_url: str | None = None, timeout_s: float = 30.0
    ) -> None:
        text = str(url)
        if text.startswith("s3://"):
            self.fs, self.root = _s3_filesystem(text, s3_endpoint_url, timeout_s)
            self.local = False
        elif "://" in text and not text.startswith("file://"):
            self.fs, self.root = pafs.FileSystem.from_uri(text)
            self.local = False
        else:
            path = Path(text.removeprefix("file://")).expanduser().resolve()
            self.fs, self.root = pafs.LocalFileSystem(), str(path)
            self.local = True
        self.url = text

    def view_dir(self, view: str, version: int) -> str:
        return f"{self.root}/{view}/v{version}"

    def write_rows(
        self, view: str, version: int, features: Sequence[FeatureDef], rows: Sequence[OfflineRow]
    ) -> list[str]:
        """Append `rows` as one new file per date partition; return the written paths."""
        schema = feature_schema(features)
        by_date: dict[date, list[OfflineRow]] = {}
        for row in rows:
            by_date.setdefault(_utc_date(row.event_time_ms), []).append(row)
        written: list[str] = []
        for day, day_rows in sorted(by_date.items()):
            folder = f"{self.view_dir(view, version)}/date={day.isoformat()}"
            name = f"part-{day_rows[0].processed_at_ms}-{uuid.uuid4().hex[:12]}.parquet"
            if not isinstance(self.fs, pafs.S3FileSystem):  # no folders (nor markers) in S3
                self.fs.create_dir(folder, recursive=True)
            table = rows_to_table(day_rows, version, schema)
            written.append(self.write_table(table, folder, name))
        return written

    def write_table(self, table: pa.Table, folder: str, name: str) -> str:
        """Write `table` as Parquet file `folder/name` (the folder exists); its path.

        Locally it is written under a hidden name and renamed: readers never see
        half a file (an object store shows an object only once it is whole).
        """
        path = f"{folder}/{name}"
        if self.local:
            tmp = f"{folder}/.{name}.tmp"
            pq.write_table(table, tmp, filesystem=self.fs)
            self.fs.move(tmp, path)
        else:
            pq.write_table(table, path, filesystem=self.fs)
        return path

    def files(
        self,
        view: str,
        version: int,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[str]:
        """Parquet files of the view whose date partition overlaps [start, end), sorted."""
        selector = pafs.FileSelector(
            self.view_dir(view, version), allow_not_found=True, recursive=True
        )
        first = start.astimezone(UTC).date() if start else None
        last = (end.astimezone(UTC) - timedelta(microseconds=1)).date() if end else None
        out: list[str] = []
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
                continue
            if info.base_name.startswith("."):
                continue
            day = _partition_date(info.path)
            if day is None or (first and day < first) or (last and day > last):
                continue
            out.append(info.path)
        return sorted(out)

    def read(self, files: Sequence[str], *, dedupe: bool = True) -> pa.Table:
        """The rows of `files` (one schema), de-duplicated by event id unless asked not to."""
        if not files:
            raise ValueError("no offline files to read")
        tables = [pq.read_table(path, filesystem=self.fs) for path in files]
        table = pa.concat_tables(tables, promote_options="default")
        if not dedupe:
            return table
        import duckdb

        with duckdb.connect() as con:
            con.register("rows", table)
            return con.sql(
                "SELECT * FROM rows QUALIFY row_number() OVER "
                "(PARTITION BY event_id ORDER BY processed_at) = 1 "
                "ORDER BY feature_time, processed_at"
            ).to_arrow_table()

    def fingerprint(self, files: Iterable[str]) -> str:
        """sha256 over the files' contents (order-independent): what a dataset was built from."""
        digests = []
        for path in files:
            digest = hashlib.sha256()
            with self.fs.open_input_stream(path) as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
            digests.append(digest.hexdigest())
        return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def _s3_filesystem(
    url: str, endpoint_url: str | None, timeout_s: float
) -> tuple[pafs.FileSystem, str]:
    """An S3FileSystem and the `bucket/prefix` root for `s3://bucket/prefix[?endpoint_url=…]`."""
    parsed = urlparse(url)
    query = parse_qs(parsed.query, keep_blank_values=True)
    prefix = unquote(parsed.path).strip("/")
    if set(query) - {"endpoint_url", "region"} or not parsed.netloc or ".." in prefix.split("/"):
        raise ConfigError(
            f"offline store {url!r}: expected s3://bucket/prefix, optionally with "
            "?endpoint_url=http(s)://host:port and &region=…"
        )
    endpoint = query.get("endpoint_url", [endpoint_url or ""])[-1] or None
    region = query.get("region", [""])[-1] or None
    options: dict[str, Any] = {"connect_timeout": timeout_s, "request_timeout": timeout_s}
    if endpoint is not None:
        target = urlparse(endpoint)
        if target.scheme not in ("http", "https") or not target.netloc:
            raise ConfigError(f"S3 endpoint {endpoint!r} is not an http(s)://host:port URL")
        options |= {"endpoint_override": target.netloc, "scheme": target.scheme}
    elif region is None:  # AWS itself: as FileSystem.from_uri does, ask the bucket
        region = pafs.resolve_s3_region(parsed.netloc)
    if region is not None:
        options["region"] = region
    root = f"{parsed.netloc}/{prefix}" if prefix else parsed.netloc
    return pafs.S3FileSystem(**options), root


def _partition_date(path: str) -> date | None:
    for part in path.split("/"):
        if part.startswith("date="):
            try:
                return date.fromisoformat(part[5:])
            except ValueError:
                return None
    return None
