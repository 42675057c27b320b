"""The feature store library: one computation, two stores, read the same way everywhere.

- `ViewAggregator` / `EntityState`: a feature view computed incrementally per
  entity (raw last values, sliding windows in time buckets, late and replayed
  events handled) — pure, used by the feature service.
- `OnlineStore`: async Redis reads for serving (inference and the feature
  service's gRPC API use this, not a copy) and the service's staged writes.
- `OfflineStore`: the same rows in Parquet, partitioned by date, local or `s3://`.
- `build_training_set` / `point_in_time_join`: point-in-time correct training
  frames (DuckDB ASOF JOIN), fingerprinted by the content of the files read.
- `compare` / `read_consistency`: served values against the offline row of the
  same event, and the counters the feature service records (ADR 0020).

    async with OnlineStore.from_settings(settings.redis) as store:
        row = await store.get("card_activity", 1, "card_000042")
        row.values, row.age_s
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlbus._lazy import lazy_attributes
from mlbus.featurestore._consistency import (
    OUTCOMES,
    Difference,
    FeatureConsistency,
    Outcome,
    ViewConsistency,
    compare,
    read_consistency,
    reset_consistency,
    same_value,
    stage_consistency,
)
from mlbus.featurestore._online import (
    FeatureKeys,
    FeatureVector,
    OnlineFeatures,
    OnlineStore,
    decode_value,
    encode_value,
)
from mlbus.featurestore._spool import flush_spool, spool_length
from mlbus.featurestore._windows import (
    BUCKETS_PER_WINDOW,
    Applied,
    EntityState,
    FeatureValues,
    Steps,
    ViewAggregator,
    bucket_geometry,
    empty_value,
    in_window,
    value_at,
)

if TYPE_CHECKING:
    from mlbus.featurestore._offline import (
        META_COLUMNS,
        OfflineRow,
        OfflineStore,
        feature_schema,
        rows_to_table,
    )
    from mlbus.featurestore._pit import TrainingSet, build_training_set, point_in_time_join

# The offline half needs pyarrow (~32 MB resident, 0.3 s to import): it loads on
# first use, so a process that only reads online features (an inference worker
# serving Predict) never pays for it.
_OFFLINE_MODULE = {
    "META_COLUMNS": "_offline",
    "OfflineRow": "_offline",
    "OfflineStore": "_offline",
    "feature_schema": "_offline",
    "rows_to_table": "_offline",
    "TrainingSet": "_pit",
    "build_training_set": "_pit",
    "point_in_time_join": "_pit",
}


__getattr__ = lazy_attributes(__name__, _OFFLINE_MODULE)


__all__ = [
    "BUCKETS_PER_WINDOW",
    "META_COLUMNS",
    "OUTCOMES",
    "Applied",
    "Difference",
    "EntityState",
    "FeatureConsistency",
    "FeatureKeys",
    "FeatureValues",
    "FeatureVector",
    "OfflineRow",
    "OfflineStore",
    "OnlineFeatures",
    "OnlineStore",
    "Outcome",
    "Steps",
    "TrainingSet",
    "ViewAggregator",
    "ViewConsistency",
    "bucket_geometry",
    "build_training_set",
    "compare",
    "decode_value",
    "empty_value",
    "encode_value",
    "feature_schema",
    "flush_spool",
    "in_window",
    "point_in_time_join",
    "read_consistency",
    "reset_consistency",
    "rows_to_table",
    "same_value",
    "spool_length",
    "stage_consistency",
    "value_at",
]
