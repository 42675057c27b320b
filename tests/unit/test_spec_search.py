"""`model.search` in the spec: what it accepts, its defaults, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlbus.spec import ProjectSpec, SpecError, load_spec, parse_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fraud" / "mlbus.yaml"
ANCHOR = "  min_rows: 2000\n"

SEARCH = """  search:
    trials: 20
    timeout_s: 10m
    seed: 7
    space:
      learning_rate: {type: float, low: 0.01, high: 0.3, log: true}
      max_leaf_nodes: {type: int, low: 8, high: 128, log: true}
      class_weight: {type: categorical, choices: [balanced, null]}
"""


def with_search(block: str) -> str:
    text = EXAMPLE.read_text()
    assert ANCHOR in text
    return text.replace(ANCHOR, ANCHOR + block, 1)


def error_for(block: str) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(with_search(block), filename="mlbus.yaml")
    return str(caught.value)


def test_without_search_the_model_fits_its_params_as_before() -> None:
    spec = load_spec(EXAMPLE)
    assert spec.model.search is None
    assert spec.model.search_metric == spec.model.metric == "auc"


def test_search_parses_budget_space_seed_and_defaults_the_metric() -> None:
    spec: ProjectSpec = parse_spec(with_search(SEARCH), filename="mlbus.yaml")
    search = spec.model.search
    assert search is not None
    assert (search.trials, search.timeout_s, search.seed) == (20, 600, 7)
    assert search.sampler == "tpe"
    assert search.metric is None
    assert spec.model.search_metric == "auc"  # model.metric
    rate = search.space["learning_rate"]
    assert (rate.type, rate.low, rate.high, rate.log) == ("float", 0.01, 0.3, True)
    assert search.space["class_weight"].choices == ("balanced", None)
    assert spec.fingerprint() != load_spec(EXAMPLE).fingerprint()


def test_search_metric_overrides_the_model_metric() -> None:
    spec = parse_spec(with_search(SEARCH + "    metric: log_loss\n"), filename="mlbus.yaml")
    assert spec.model.search_metric == "log_loss"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("trials: 20", "trials: 0"), "model.search.trials: expected a value >= 1, got 0"),
        (("timeout_s: 10m", "timeout_s: 10x"), "model.search.timeout_s: expected a duration"),
        (
            ("high: 0.3, log: true", "high: 0.001, log: true"),
            "model.search.space.learning_rate.high: expected a value > low (0.01), got 0.001",
        ),
        (
            ("low: 8, high: 128, log: true", "low: 0, high: 128, log: true"),
            "model.search.space.max_leaf_nodes.low: expected a value > 0 with log: true, got 0",
        ),
        (
            ("low: 8, high: 128", "low: 8.5, high: 128"),
            "model.search.space.max_leaf_nodes.low: expected a whole number, got 8.5",
        ),
        (
            ("choices: [balanced, null]", "choices: []"),
            "model.search.space.class_weight.choices: expected at least one choice",
        ),
        (
            ("{type: float, low: 0.01, high: 0.3, log: true}", "{type: float, high: 0.3}"),
            "model.search.space.learning_rate.low: required field is missing",
        ),
        (
            ("{type: float,", "{type: double,"),
            "model.search.space.learning_rate.type: expected 'int', 'float' or 'categorical'",
        ),
        (
            ("seed: 7", "seed: 7\n    metric: rmse"),
            "model.search.metric: expected a classification metric",
        ),
        (("seed: 7", "seeds: 7"), "model.search.seeds: unknown field 'seeds'"),
    ],
)
def test_errors_name_the_field(edit: tuple[str, str], expected: str) -> None:
    old, new = edit
    assert old in SEARCH
    assert expected in error_for(SEARCH.replace(old, new, 1))


def test_an_empty_space_is_refused() -> None:
    block = "  search:\n    trials: 5\n    space: {}\n"
    assert "model.search.space: " in error_for(block)
