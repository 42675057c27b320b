"""`mlbus train --no-register` runs the pipeline on a local offline store and prints the result."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
import typer
from typer.testing import CliRunner

from mlbus.cli import _train
from mlbus.featurestore import FeatureKeys, OfflineRow, OfflineStore
from mlbus.spec import load_spec
from mlbus.training import LabelRow, write_labels
from tests.integration.test_trainer import write_spec

pytestmark = pytest.mark.integration


def test_train_once_prints_metrics_and_parity(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, "cli", estimator="logistic_regression", params={})
    spec = load_spec(spec_path)
    offline = OfflineStore(tmp_path / "offline")
    base = datetime(2025, 6, 1, tzinfo=UTC)
    rng = np.random.default_rng(0)
    rows, labels = [], []
    features = spec.view_features("card_activity")
    for i in range(400):
        ms = int((base + timedelta(minutes=i)).timestamp() * 1000)
        amount = float(rng.gamma(2.0, 30.0))
        values = {
            f.name: amount if f.kind == "numeric" else (f.values or ("x",))[0] for f in features
        }
        rows.append(OfflineRow(f"card_{i % 30:06d}", f"tx{i}", ms, ms, ms, values))
        labels.append(LabelRow(f"card_{i % 30:06d}", f"tx{i}", ms, f"cb{i}", amount > 70))
    offline.write_rows("card_activity", 1, features, rows)
    write_labels(offline, "chargebacks", labels)
    app = typer.Typer()
    _train.register(app)
    app.command("noop")(lambda: None)  # keep `train` a subcommand
    result = CliRunner().invoke(
        app,
        ["train", "--spec", str(spec_path), "--offline", str(offline.root), "--no-register"],
        env={"MLBUS_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code == 0, result.output
    assert "auc" in result.output
    assert "ONNX parity max error" in result.output
    assert "not registered" in result.output


def test_train_flushes_the_rows_waiting_in_the_spool_first(
    tmp_path: Path, redis_url: str, unique: str
) -> None:
    """Events that arrived seconds ago sit in the Redis spool, not yet in Parquet."""
    spec_path = write_spec(tmp_path, "spool", estimator="logistic_regression", params={})
    spec = load_spec(spec_path)
    offline = OfflineStore(tmp_path / "offline")
    base = datetime(2025, 6, 1, tzinfo=UTC)
    rng = np.random.default_rng(1)
    rows, labels = [], []
    features = spec.view_features("card_activity")
    for i in range(400):
        ms = int((base + timedelta(minutes=i)).timestamp() * 1000)
        amount = float(rng.gamma(2.0, 30.0))
        values = {
            f.name: amount if f.kind == "numeric" else (f.values or ("x",))[0] for f in features
        }
        rows.append(OfflineRow(f"card_{i % 30:06d}", f"tx{i}", ms, ms, ms, values))
        labels.append(LabelRow(f"card_{i % 30:06d}", f"tx{i}", ms, f"cb{i}", amount > 70))
    write_labels(offline, "chargebacks", labels)
    prefix = f"test-spool-{unique}"
    spool = FeatureKeys(prefix).spool("card_activity", 1)
    client = redis.Redis.from_url(redis_url)
    client.rpush(spool, *(row.to_json() for row in rows))
    app = typer.Typer()
    _train.register(app)
    app.command("noop")(lambda: None)
    try:
        result = CliRunner().invoke(
            app,
            ["train", "--spec", str(spec_path), "--offline", str(offline.root), "--no-register"],
            env={
                "MLBUS_DATA_DIR": str(tmp_path),
                "MLBUS_REDIS_URL": redis_url,
                "MLBUS_REDIS_KEY_PREFIX": prefix,
            },
        )
        left = client.llen(spool)
    finally:
        client.delete(spool)
        client.close()
    assert result.exit_code == 0, result.output
    assert "flushed 400 offline rows of card_activity" in result.output
    assert left == 0
    assert "400 rows" in result.output  # all of them trained on


def test_train_reports_why_it_failed(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, "cli")
    app = typer.Typer()
    _train.register(app)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(
        app,
        ["train", "--spec", str(spec_path), "--offline", str(tmp_path / "empty"), "--no-register"],
        env={"MLBUS_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code == 1
    assert "training failed at dataset: no labels" in result.output
