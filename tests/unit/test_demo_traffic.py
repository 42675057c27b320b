"""The demo waits for what training will find: distinct payments and labels, not rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from mlbus.demo._traffic import stored_rows
from mlbus.example import fraud_spec_path
from mlbus.featurestore import OfflineRow, OfflineStore
from mlbus.spec import load_spec
from mlbus.training import LabelRow, write_labels


def test_redelivered_rows_do_not_count_twice(tmp_path: Path) -> None:
    spec = load_spec(fraud_spec_path())
    view = next(v for v in spec.model_views() if spec.features[v].source == spec.training_source())
    features = spec.view_features(view)
    offline = OfflineStore(tmp_path / "offline")
    base = datetime(2025, 6, 1, tzinfo=UTC)
    rows, labels = [], []
    for i in range(10):
        ms = int((base + timedelta(minutes=i)).timestamp() * 1000)
        values = {f.name: 1.0 if f.kind == "numeric" else (f.values or ("x",))[0] for f in features}
        rows.append(OfflineRow(f"card_{i}", f"tx{i}", ms, ms, ms, values))
        labels.append(LabelRow(f"card_{i}", f"tx{i}", ms, f"cb{i}", i % 2 == 0))
    # At-least-once: the last three payments and two labels are written again.
    offline.write_rows(view, spec.features[view].version, features, rows)
    offline.write_rows(view, spec.features[view].version, features, rows[-3:])
    write_labels(offline, spec.model.label.source, labels[:8])
    write_labels(offline, spec.model.label.source, labels[6:8])
    assert stored_rows(spec, str(offline.root)) == (10, 8)
