"""`mlbus models …` against a registry served in a background thread."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from mlbus.cli import _models
from mlbus.events import Event
from mlbus.registry import RegistryServer, RegistrySettings
from tests.unit.test_registry_onnx import tiny_model

pytestmark = pytest.mark.integration


class _Discard:
    async def publish(self, event: Event, key: str | bytes | None = None) -> Any:
        return None


@pytest.fixture(scope="module")
def registry_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = RegistrySettings(data_dir=tmp_path_factory.mktemp("cli-registry"), grpc_port=0)
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    port: list[int] = []

    async def serve() -> None:
        async with RegistryServer(settings, sink=_Discard(), host="127.0.0.1") as server:
            assert server.port is not None
            port.append(server.port)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the registry did not start"
    yield f"127.0.0.1:{port[0]}"
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    loop.close()


@pytest.fixture
def cli(registry_address: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("MLBUS_REGISTRY_ADDRESS", registry_address)
    monkeypatch.delenv("MLBUS_REGISTRY_TOKEN", raising=False)
    app = typer.Typer()
    _models.register(app)
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True) -> Any:
        result = runner.invoke(app, ["models", *args])
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


def classifier_onnx(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(200, 2)).astype(np.float32)
    labels = (features[:, 0] + features[:, 1] > 0).astype(np.int64)
    model = LogisticRegression().fit(features, labels)
    onnx_model = to_onnx(model, features[:1], options={id(model): {"zipmap": False}})
    path = tmp_path / "clf.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    sample = tmp_path / "sample.csv"
    sample.write_text("a,b\n" + "\n".join(f"{x:.4f},{y:.4f}" for x, y in features[:100]))
    return path, sample


def test_register_a_model_trained_elsewhere_with_a_sample_profile(
    cli: Any, tmp_path: Path, unique: str
) -> None:
    model_path, sample = classifier_onnx(tmp_path)
    name = f"ext-{unique}"
    out = cli(
        "register",
        name,
        str(model_path),
        "--metrics",
        '{"auc": 0.93}',
        "--sample",
        str(sample),
        "--alias",
        "champion",
        "--reason",
        "imported from the notebook",
        "--json",
    )
    registered = json.loads(out.output)
    assert registered["promoted"] is True
    assert registered["version"]["has_reference_profile"] is True

    shown = json.loads(cli("show", name, "champion", "--json").output)
    profile = shown["reference_profile"]
    assert profile["n_samples"] == 100
    assert set(profile["features"]) == {"a", "b"}
    assert profile["prediction"]["kind"] == "numeric"  # P(class 1) of the classifier
    assert shown["metrics"] == {"auc": 0.93}
    assert shown["signature"]["inputs"][0]["datatype"] == "FP32"
    # a sample without event times: no phases, and nothing replayed to calibrate it
    table = cli("show", name, "champion").output
    words = " ".join(table.replace("│", " ").split())  # the table wraps the line
    assert "100 samples, 2 features, predictions; seasonality none; not calibrated" in words


def test_promote_rollback_and_lineage(cli: Any, tmp_path: Path, unique: str) -> None:
    name = f"flow-{unique}"
    model = tmp_path / "m.onnx"
    for scale in (1.0, 2.0):
        model.write_bytes(tiny_model(scale))
        cli("register", name, str(model))
    cli("promote", name, "1", "--reason", "baseline")
    promoted = json.loads(cli("promote", name, "2", "--reason", "better", "--json").output)
    assert (promoted["version"], promoted["previous_version"]) == (2, 1)
    rolled = json.loads(cli("rollback", name, "--reason", "bad canary", "--json").output)
    assert rolled["version"] == 1

    versions = json.loads(cli("list", name, "--json").output)
    assert [(v["version"], v["aliases"]) for v in versions] == [(2, []), (1, ["champion"])]
    lineage = json.loads(cli("lineage", name, "1", "--json").output)
    assert [c["reason"] for c in lineage["alias_history"]] == ["bad canary", "better", "baseline"]
    table = cli("list").output
    assert name in table
    assert "champion→v1" in table


def test_clear_errors(
    cli: Any, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = cli("register", f"bad-{unique}", str(bad), ok=False)
    assert result.exit_code == 1
    assert "not an ONNX model" in result.output
    result = cli("promote", f"missing-{unique}", "1", "--reason", "x", ok=False)
    assert "no model named" in result.output
    result = cli("register", f"bad-{unique}", str(bad), "--alias", "champion", ok=False)
    assert "--alias needs --reason" in result.output

    monkeypatch.setenv("MLBUS_REGISTRY_ADDRESS", "127.0.0.1:1")
    result = cli("list", ok=False)
    assert result.exit_code == 1
    assert "not reachable" in result.output
    assert "mlbus up" in result.output
