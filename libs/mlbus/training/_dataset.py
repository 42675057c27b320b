"""The training set: labels from the label log joined point-in-time with the model's views,
encoded as one float32 matrix in `spec.model_features()` order.

    dataset = load_dataset(spec, OfflineStore(url), start=..., end=...)
    dataset.x, dataset.y, dataset.times_ms, dataset.fingerprint

Categorical values become ordinal codes (`FeatureEncoding`); the encoding goes
into the ONNX metadata so serving feeds the same codes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlbus.errors import InvalidInput
from mlbus.featurestore import OfflineStore, build_training_set
from mlbus.model_metadata import Encoding
from mlbus.spec import ProjectSpec
from mlbus.training._errors import TrainingError
from mlbus.training._labels import label_files, latest_per_event, read_labels


@dataclass(frozen=True)
class FeatureEncoding:
    """How each feature becomes a float: numbers as is, categories as their index.

    `categories[ref]` lists a categorical feature's values; code i means
    `categories[ref][i]`; a value not listed (or missing) is NaN. Booleans are 0/1.
    """

    refs: tuple[str, ...]
    categories: dict[str, list[str]]

    def metadata(self) -> Encoding:
        """As the model's `mlbus.encoding` metadata has it."""
        return Encoding(self.refs, {ref: tuple(v) for ref, v in self.categories.items()})

    @classmethod
    def of(cls, encoding: Encoding) -> FeatureEncoding:
        return cls(encoding.refs, {ref: list(v) for ref, v in encoding.categories.items()})

    def encode(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """A float32 matrix, one column per ref, from raw column values keyed by ref."""
        n = len(next(iter(columns.values()))) if columns else 0
        out = np.full((n, len(self.refs)), np.nan, dtype=np.float32)
        for j, ref in enumerate(self.refs):
            values = columns[ref]
            if ref in self.categories:
                index = {c: i for i, c in enumerate(self.categories[ref])}
                codes = [index.get(_category(v), np.nan) for v in values]
                out[:, j] = np.asarray(codes, dtype=np.float64)
            else:
                out[:, j] = np.asarray(
                    [np.nan if v is None else float(v) for v in values], dtype=np.float64
                )
        return out


def _category(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


@dataclass(frozen=True)
class Dataset:
    """Training rows in time order: features, label, when each label's event happened."""

    x: np.ndarray  # float32, (n, k)
    y: np.ndarray
    times_ms: np.ndarray  # int64, ascending
    raw: dict[str, list[Any]]  # by ref, for the reference profile
    encoding: FeatureEncoding
    fingerprint: str
    files: tuple[str, ...] = ()
    dropped_without_features: int = 0
    entities: tuple[str, ...] | None = None  # each row's entity key, when the frame has it
    event_ids: tuple[str, ...] | None = None  # each row's labelled event, when the frame has it

    def __len__(self) -> int:
        return len(self.y)


def dataset_from_table(
    spec: ProjectSpec,
    table: pa.Table,
    fingerprint: str,
    *,
    files: Sequence[str] = (),
) -> Dataset:
    """A `Dataset` from a point-in-time frame with `as_of`, `label` and one column per ref.

    Rows without feature values (labels older than any feature row) are dropped
    and counted; rows are sorted by `as_of` (stable), so time order is kept.
    """
    features = spec.model_features()
    refs = tuple(f.ref for f in features)
    missing = [c for c in ("as_of", "label", *refs) if c not in table.column_names]
    if missing:
        raise TrainingError("dataset", f"training frame lacks columns {missing}")
    dropped = 0
    if "feature_time" in table.column_names:
        known = pc.is_valid(table.column("feature_time"))
        dropped = table.num_rows - pc.sum(known).as_py() if table.num_rows else 0
        table = table.filter(known)
    table = table.filter(pc.is_valid(table.column("label"))).filter(
        pc.is_valid(table.column("as_of"))
    )
    order = pc.sort_indices(table, sort_keys=[("as_of", "ascending")])
    table = table.take(order)
    raw = {ref: table.column(ref).to_pylist() for ref in refs}
    entities = (
        tuple(str(e) for e in table.column("entity_id").to_pylist())
        if "entity_id" in table.column_names
        else None
    )
    event_ids = (
        tuple(str(e) for e in table.column("event_id").to_pylist())
        if "event_id" in table.column_names
        else None
    )
    categories: dict[str, list[str]] = {}
    for feature in features:
        if feature.kind == "numeric":
            continue
        if feature.dtype == "bool":
            categories[feature.ref] = ["false", "true"]
        elif feature.values:
            categories[feature.ref] = list(feature.values)
        else:
            seen = {_category(v) for v in raw[feature.ref] if v is not None}
            categories[feature.ref] = sorted(str(v) for v in seen)
    encoding = FeatureEncoding(refs, categories)
    times = table.column("as_of").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    labels = table.column("label").to_pylist()
    if spec.model.task == "classification":
        y = np.asarray([_category(v) for v in labels], dtype=object)
    else:
        y = np.asarray(labels, dtype=np.float64)
    return Dataset(
        x=encoding.encode(raw),
        y=y,
        times_ms=np.asarray(times.to_pylist(), dtype=np.int64),
        raw=raw,
        encoding=encoding,
        fingerprint=fingerprint,
        files=tuple(files),
        dropped_without_features=int(dropped),
        entities=entities,
        event_ids=event_ids,
    )


def load_dataset(
    spec: ProjectSpec,
    offline: OfflineStore,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Dataset:
    """The point-in-time training set of the spec's model from the offline store.

    Labels come from the label log of `spec.model.label.source` (label time in
    [start, end); an event labelled more than once keeps its latest label there);
    each view of the model is joined point-in-time through
    `build_training_set`. The fingerprint covers every feature and label file read.
    """
    label_source = spec.model.label.source
    files = label_files(offline, label_source)
    labels = read_labels(offline, files)
    if start is not None:
        labels = labels.filter(pc.greater_equal(labels.column("label_time"), _ts(start)))
    if end is not None:
        labels = labels.filter(pc.less(labels.column("label_time"), _ts(end)))
    # after the range: a correction made after `end` was not known at `end`
    labels = latest_per_event(labels)
    if labels.num_rows == 0:
        raise TrainingError(
            "dataset",
            f"no labels from source {label_source!r} in the requested range "
            f"({len(files)} label file(s) under {offline.url}); send label events "
            "or widen --from/--to",
        )
    query = labels.select(["entity_id", "event_id", "label"])
    joined: pa.Table | None = None
    fingerprints = [offline.fingerprint(files)]
    read: list[str] = list(files)
    for view in _views_labelled_source_first(spec):
        version = spec.features[view].version
        try:
            result = build_training_set(offline, view, version, query)
        except InvalidInput as exc:
            raise TrainingError("dataset", str(exc)) from None
        fingerprints.append(result.fingerprint)
        read.extend(result.files)
        wanted = [f for f in spec.model_features() if f.view == view]
        if joined is None:
            # entity_id: the drift reference measures how alike one entity's values are
            # event_id: which event each row is (what a training set is checked by)
            joined = result.table.select(
                ["entity_id", "event_id", "as_of", "feature_time", "label"]
            )
            # Every other view is read as of the labelled event's time, found here:
            # a view of another source has no row with that event's id.
            query = pa.table(
                {
                    "entity_id": result.table.column("entity_id"),
                    "label_time": result.table.column("as_of"),
                    "label": result.table.column("label"),
                }
            )
        else:  # a label lacks features if any view lacks them
            both = pc.and_(
                pc.is_valid(joined.column("feature_time")),
                pc.is_valid(result.table.column("feature_time")),
            )
            ft = pc.if_else(both, joined.column("feature_time"), pa.scalar(None, _TS))
            joined = joined.set_column(
                joined.column_names.index("feature_time"), "feature_time", ft
            )
        for feature in wanted:
            joined = joined.append_column(feature.ref, result.table.column(feature.name))
    assert joined is not None  # a model has at least one view
    fingerprint = hashlib.sha256("\n".join(fingerprints).encode()).hexdigest()
    return dataset_from_table(spec, joined, fingerprint, files=read)


def _views_labelled_source_first(spec: ProjectSpec) -> list[str]:
    """The model's views, those computed from the labelled source first (they place each label)."""
    labelled = spec.training_source()
    views = spec.model_views()
    return sorted(views, key=lambda view: spec.features[view].source != labelled)


_TS = pa.timestamp("ms", tz="UTC")


def _ts(moment: datetime) -> pa.Scalar:
    return pa.scalar(moment.astimezone(UTC), type=_TS)
