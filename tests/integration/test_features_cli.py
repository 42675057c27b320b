"""`mlbus features get|dataset` against a real Redis and a real offline folder."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import typer
from typer.testing import CliRunner

from mlbus.cli import _features
from mlbus.example import fraud_spec_path
from mlbus.featurestore import FeatureKeys, OfflineRow, OfflineStore, encode_value
from mlbus.spec import load_spec

pytestmark = pytest.mark.integration
T0 = 1_735_689_600_000  # 2025-01-01T00:00Z


def cli() -> typer.Typer:
    app = typer.Typer()
    _features.register(app)

    @app.callback()
    def root() -> None: ...

    return app


def test_get_prints_an_entitys_online_values_as_json(
    redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"test-cli-{unique}"
    key = FeatureKeys(prefix).online("card_activity", 1, "card_000001")
    client = redis.Redis.from_url(redis_url)
    client.hset(key, mapping={"count_10m": encode_value(3), "__ts": str(T0), "__eid": "e"})
    monkeypatch.setenv("MLBUS_REDIS_URL", redis_url)
    monkeypatch.setenv("MLBUS_REDIS_KEY_PREFIX", prefix)
    monkeypatch.setenv("MLBUS_SPEC", str(fraud_spec_path()))
    try:
        result = CliRunner().invoke(cli(), ["features", "get", "card_000001", "--json"])
    finally:
        client.delete(key)
        client.close()
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["views"]["card_activity"]["values"] == {"count_10m": 3}
    assert doc["views"]["card_activity"]["age_s"] > 0


def test_dataset_joins_labels_point_in_time_and_prints_the_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(fraud_spec_path())
    features = spec.view_features("card_activity")
    offline = OfflineStore(tmp_path / "offline")
    values = {f.name: None for f in features}
    rows = [
        OfflineRow(
            "card_000001", f"e{i}", T0 + i * 1000, T0 + i * 1000, T0 + i, {**values, "count_10m": i}
        )
        for i in range(1, 4)
    ]
    offline.write_rows("card_activity", 1, features, rows)
    labels = tmp_path / "labels.parquet"
    pq.write_table(
        pa.table({"entity_id": ["card_000001"], "event_id": ["e2"], "y": [True]}), labels
    )
    out = tmp_path / "train.parquet"
    monkeypatch.setenv("MLBUS_SPEC", str(fraud_spec_path()))
    args = ["features", "dataset", "--out", str(out), "--labels", str(labels)]
    result = CliRunner().invoke(cli(), [*args, "--offline", str(tmp_path / "offline")])
    assert result.exit_code == 0, result.output
    assert offline.fingerprint(offline.files("card_activity", 1)) in result.output
    table = pq.read_table(out).to_pylist()
    assert [(r["y"], r["count_10m"]) for r in table] == [(True, 2)]
