"""The outcomes evaluator's decisions and actions, on in-memory state and a recording registry."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import norm

from mlbus.errors import PermanentError
from mlbus.outcomes import Evaluator, ExperimentRecord, experiment_id, label_value
from mlbus.outcomestats import ClassificationOutcomes, prediction_score
from mlbus.spec import ProjectSpec, load_spec
from tests.integration.test_outcomes import write_spec

MODEL = "m"


class MemoryStore:
    """The evaluator's view of Redis, in memory."""

    def __init__(self, partitions: list[dict[str, str]], record: ExperimentRecord) -> None:
        self.partitions = partitions
        self.records = {record.experiment_id: record}
        self.status: dict[str, Any] = {}

    async def all_partitions(self) -> list[dict[str, str]]:
        return self.partitions

    async def experiments(self) -> dict[str, ExperimentRecord]:
        return {k: ExperimentRecord.from_json(r.to_json()) for k, r in self.records.items()}

    async def save_experiment(self, record: ExperimentRecord) -> None:
        self.records[record.experiment_id] = ExperimentRecord.from_json(record.to_json())

    async def write_status(self, status: dict[str, Any]) -> None:
        self.status = json.loads(json.dumps(status))


class RecordingRegistry:
    def __init__(self, rollback_error: Exception | None = None) -> None:
        self.calls: list[tuple[str, str, int | None, str]] = []
        self.rollback_error = rollback_error

    async def set_alias(
        self, model: str, alias: str, version: int, *, reason: str, actor: str = ""
    ) -> Any:
        self.calls.append(("set_alias", alias, version, reason))
        return None

    async def rollback(
        self, model: str, alias: str = "champion", *, reason: str, actor: str = ""
    ) -> Any:
        self.calls.append(("rollback", alias, None, reason))
        if self.rollback_error is not None:
            raise self.rollback_error
        return None


def spec(tmp_path: Path, **experiments: Any) -> ProjectSpec:
    path = write_spec(tmp_path / "mlbus.yaml", MODEL)
    doc = json.loads(path.read_text())
    doc["outcomes"]["experiments"].update(experiments)
    path.write_text(json.dumps(doc))
    return load_spec(path)


def arm(auc: float, n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    actual = rng.random(n) < 0.3
    x = rng.normal(0.0, 1.0, n) + math.sqrt(2.0) * norm.ppf(auc) * actual
    outcomes = ClassificationOutcomes()
    outcomes.add_many(1.0 / (1.0 + np.exp(-x)), actual)
    return json.dumps(outcomes.to_json())


def setup(
    tmp_path: Path,
    challenger_auc: float,
    *,
    alias: str = "canary",
    n: int = 3000,
    registry: RecordingRegistry | None = None,
    **experiments: Any,
) -> tuple[Evaluator, MemoryStore, RecordingRegistry]:
    record = ExperimentRecord(experiment_id(MODEL, alias, 2, 1), MODEL, alias, 1, 2, started_at=0.0)
    partitions = [
        {
            "offset": "10",
            f"arm|{record.experiment_id}|champion": arm(0.72, n, 1),
            f"arm|{record.experiment_id}|challenger": arm(challenger_auc, n, 2),
        }
    ]
    store = MemoryStore(partitions, record)
    registry = registry or RecordingRegistry()
    evaluator = Evaluator(spec(tmp_path, **experiments), store, registry)  # type: ignore[arg-type]
    return evaluator, store, registry


async def test_a_better_canary_is_promoted_with_the_verdict_as_reason(tmp_path: Path) -> None:
    evaluator, store, registry = setup(tmp_path, 0.84)
    status = await evaluator.evaluate()
    (found,) = status["experiments"]
    assert found["verdict"] == "better"
    assert found["acted"]
    assert registry.calls[0][:3] == ("set_alias", "champion", 2)
    assert "better" in registry.calls[0][3]
    assert found["experiment_id"] in registry.calls[0][3]
    assert store.status["experiments"][0]["time_to_decision_s"] >= 0


async def test_failed_gates_refuse_the_promotion(tmp_path: Path) -> None:
    evaluator, _, registry = setup(tmp_path, 0.84)
    evaluator.spec.model.gates.minimums["auc"] = 0.99
    status = await evaluator.evaluate()
    assert status["experiments"][0]["verdict"] == "better"
    assert status["experiments"][0]["action_outcome"] == "promote: refused"
    assert registry.calls == []


async def test_a_worse_canary_without_an_earlier_version_points_at_the_champion(
    tmp_path: Path,
) -> None:
    error = PermanentError("m:canary has no earlier version to roll back to")
    evaluator, _, registry = setup(tmp_path, 0.60, registry=RecordingRegistry(error))
    status = await evaluator.evaluate()
    assert status["experiments"][0]["verdict"] == "worse"
    assert [c[:3] for c in registry.calls] == [
        ("rollback", "canary", None),
        ("set_alias", "canary", 1),
    ]


async def test_a_worse_shadow_is_only_reported(tmp_path: Path) -> None:
    evaluator, _, registry = setup(tmp_path, 0.60, alias="shadow")
    status = await evaluator.evaluate()
    assert status["experiments"][0]["verdict"] == "worse"
    assert status["experiments"][0]["action_outcome"] == "report: done"
    assert registry.calls == []


async def test_report_only_moves_nothing(tmp_path: Path) -> None:
    evaluator, _, registry = setup(tmp_path, 0.84, on_better="report")
    status = await evaluator.evaluate()
    assert status["experiments"][0]["action_outcome"] == "report: done"
    assert registry.calls == []


async def test_no_look_before_the_burn_in(tmp_path: Path) -> None:
    evaluator, _, registry = setup(tmp_path, 0.95, n=200)
    status = await evaluator.evaluate()
    (found,) = status["experiments"]
    assert found["verdict"] == "not yet"
    assert found["looks"] == 0
    assert found["last"]["ready"] is False
    assert registry.calls == []


async def test_an_experiment_ends_when_the_champion_moves(tmp_path: Path) -> None:
    evaluator, _, registry = setup(tmp_path, 0.84)
    evaluator.champions = {MODEL: (1.0, 3)}
    status = await evaluator.evaluate()
    (found,) = status["experiments"]
    assert found["status"] == "ended"
    assert "v3" in found["ended_reason"]
    assert registry.calls == []


@pytest.mark.parametrize(
    ("label", "task", "expected"),
    [
        (True, "classification", True),
        ("yes", "classification", True),
        (0, "classification", False),
        (None, "classification", None),
        (2.5, "regression", 2.5),
        (True, "regression", None),
        ("x", "regression", None),
    ],
)
def test_label_values(label: Any, task: str, expected: Any) -> None:
    assert label_value(label, task) == expected


def test_prediction_scores() -> None:
    assert prediction_score({"probabilities": [0.2, 0.8]}) == 0.8
    assert prediction_score({"prediction": [3.5]}) == 3.5
    assert prediction_score({"label": [1.0]}) is None
