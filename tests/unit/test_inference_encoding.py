"""Predict feeds a trainer-built model exactly the row the trainer would have encoded.

The model here comes from the trainer's own pipeline (`dataset_from_table` →
`train`), so the ONNX metadata (`mlbus.encoding`, `mlbus.feature_names.x`) is
the real thing, not a hand-written copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pytest
import yaml

from mlbus.errors import InvalidInput
from mlbus.example import fraud_spec_path
from mlbus.featurestore import FeatureVector
from mlbus.inference import (
    FeatureLayout,
    FeaturesUnavailable,
    LoadedModel,
    ModelRefused,
    load_model,
    resolve_features,
)
from mlbus.inference._model import read_encoding
from mlbus.inference._predict import EntityFeatures
from mlbus.spec import ProjectSpec, parse_spec
from mlbus.training import FeatureEncoding, dataset_from_table, sklearn_scores, train
from tests.unit.test_inference_model import identity_model, linear_model, sha

CHANNEL = "card_activity.channel"  # enum: pos, contactless, online
AMOUNT = "card_activity.amount"
COUNT = "card_activity.count_10m"
TRAINED = (CHANNEL, AMOUNT)


def spec_with(features: tuple[str, ...]) -> ProjectSpec:
    """The fraud example reduced to `features`, small enough to train in a moment."""
    data = yaml.safe_load(Path(fraud_spec_path()).read_text())
    data["model"].update(
        features=list(features), min_rows=10, params={"max_iter": 20, "max_leaf_nodes": 8}
    )
    data["drift"]["features"] = {}
    data["serving"]["defaults"] = {
        ref: value for ref, value in data["serving"]["defaults"].items() if ref in features
    }
    return parse_spec(yaml.safe_dump(data))


@dataclass(frozen=True)
class Trained:
    spec: ProjectSpec
    onnx: bytes
    encoding: FeatureEncoding
    estimator: Any


@pytest.fixture(scope="module")
def trained() -> Trained:
    spec = spec_with(TRAINED)
    rng = np.random.default_rng(7)
    n = 400
    channels = rng.choice(
        np.array(["pos", "contactless", "online", None], dtype=object),
        size=n,
        p=[0.4, 0.3, 0.2, 0.1],
    )
    amounts = rng.gamma(2.0, 40.0, size=n).round(2)
    risk = (channels == "online") * 1.5 + amounts / 100 + rng.normal(0, 0.5, size=n)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    table = pa.table(
        {
            "as_of": pa.array(
                [start + timedelta(minutes=i) for i in range(n)], pa.timestamp("ms", tz="UTC")
            ),
            "label": pa.array((risk > 1.5).tolist(), pa.bool_()),
            CHANNEL: pa.array(channels.tolist(), pa.string()),
            AMOUNT: pa.array(amounts.tolist(), pa.float64()),
        }
    )
    dataset = dataset_from_table(spec, table, "fingerprint")
    fitted: list[Any] = []

    def fit(model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        fitted.append(model.fit(x, y))
        return fitted[-1]

    result = train(spec, dataset, fit=fit)
    return Trained(spec, result.onnx, dataset.encoding, fitted[0])


def served(data: bytes, version: int = 1) -> LoadedModel:
    return load_model("fraud_detector", version, data, expected_sha256=sha(data))


def with_metadata(data: bytes, **changes: str | None) -> bytes:
    """The model with metadata keys (`__` for `.`) replaced, or removed when None."""
    proto = onnx.load_model_from_string(data)
    meta = {p.key: p.value for p in proto.metadata_props}
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    return bytes(proto.SerializeToString())


RAW = {  # per entity: channel, amount — known, unknown category, missing category
    "e_pos": ("pos", 12.5),
    "e_online": ("online", 250.0),
    "e_unknown": ("atm", 80.0),
    "e_missing": (None, 30.0),
    "e_bool": (True, 1.0),  # not a string: NaN, as the trainer does
}


def rows_for(features: tuple[str, ...]) -> list[EntityFeatures]:
    """Predict's resolved rows in `features` order (count_10m, when asked, is 3)."""
    out = []
    for entity, (channel, amount) in RAW.items():
        values = {CHANNEL: channel, AMOUNT: amount, COUNT: 3}
        out.append(EntityFeatures(entity, tuple(values[f] for f in features), {}, ()))
    return out


def trainer_rows(encoding: FeatureEncoding) -> np.ndarray:
    columns: dict[str, list[Any]] = {
        CHANNEL: [c for c, _ in RAW.values()],
        AMOUNT: [a for _, a in RAW.values()],
    }
    return encoding.encode(columns)


def test_the_loaded_model_keeps_the_trainers_encoding(trained: Trained) -> None:
    model = served(trained.onnx)
    assert model.encoding is not None
    assert model.encoding.input == "x"
    assert model.encoding.refs == trained.encoding.refs == TRAINED
    assert model.encoding.codes == {CHANNEL: {"pos": 0.0, "contactless": 1.0, "online": 2.0}}
    assert model.encoding.code(CHANNEL, "online") == 2.0
    assert np.isnan(model.encoding.code(CHANNEL, "atm"))


def test_predict_encodes_rows_as_the_trainer_and_scores_as_scikit_learn(
    trained: Trained,
) -> None:
    model = served(trained.onnx)
    features = trained.spec.model_features()
    layout = FeatureLayout.of(model, features)
    assert (layout.kind, layout.feature_names, layout.positions) == ("matrix", TRAINED, None)

    x = layout.build(rows_for(TRAINED), features)["x"]
    expected = trainer_rows(trained.encoding)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, expected)  # NaN where the trainer has NaN
    assert np.isnan(x[2:, 0]).all()  # unknown, missing, non-string
    assert x[:2, 0].tolist() == [0.0, 2.0]

    scores = model.run({"x": x}, ["probabilities"])["probabilities"][:, 1]
    np.testing.assert_allclose(
        scores, sklearn_scores(trained.estimator, expected, "classification"), rtol=0, atol=1e-5
    )


def test_a_spec_in_another_order_feeds_the_models_columns(trained: Trained) -> None:
    served_with = (AMOUNT, COUNT, CHANNEL)  # reordered, and one feature the model ignores
    spec = spec_with(served_with)
    features = spec.model_features()
    layout = FeatureLayout.of(served(trained.onnx), features)
    assert layout.positions == (2, 0)
    x = layout.build(rows_for(served_with), features)["x"]
    np.testing.assert_array_equal(x, trainer_rows(trained.encoding))


def test_online_values_and_defaults_go_through_the_same_encoding(trained: Trained) -> None:
    spec = trained.spec
    features = spec.model_features()
    layout = FeatureLayout.of(served(trained.onnx), features)
    vectors = [
        FeatureVector("known", {CHANNEL: "online", AMOUNT: 9.0}, {CHANNEL: 1.0, AMOUNT: 1.0}),
        FeatureVector("new", {}, {}),  # defaults: channel pos, amount 0.0
    ]
    rows = resolve_features(vectors, TRAINED, spec.serving)
    x = layout.build(rows, features)["x"]
    expected = trained.encoding.encode({CHANNEL: ["online", "pos"], AMOUNT: [9.0, 0.0]})
    np.testing.assert_array_equal(x, expected)


def test_a_spec_without_a_trained_feature_is_failed_precondition(trained: Trained) -> None:
    spec = spec_with((AMOUNT, COUNT))
    with pytest.raises(FeaturesUnavailable, match=r"trained on feature\(s\) card_activity.channel"):
        FeatureLayout.of(served(trained.onnx), spec.model_features())


def test_a_feature_whose_kind_changed_is_failed_precondition(trained: Trained) -> None:
    encoding = json.dumps({"refs": list(TRAINED), "categories": {}})  # channel as a number
    model = served(with_metadata(trained.onnx, mlbus__encoding=encoding))
    with pytest.raises(FeaturesUnavailable, match=r"card_activity.channel \(the model takes numb"):
        FeatureLayout.of(model, trained.spec.model_features())


def test_a_matrix_model_without_metadata_still_refuses_strings(trained: Trained) -> None:
    bare = with_metadata(trained.onnx, mlbus__encoding=None, mlbus__feature_names__x=None)
    with pytest.raises(FeaturesUnavailable, match=r"card_activity\.channel"):
        FeatureLayout.of(served(bare), trained.spec.model_features())


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"mlbus__encoding": "{not json"}, "is not JSON"),
        ({"mlbus__encoding": json.dumps({"refs": list(TRAINED)})}, "must be"),
        ({"mlbus__encoding": json.dumps({"refs": "a,b", "categories": {}})}, "must be"),
        (
            {"mlbus__encoding": json.dumps({"refs": list(TRAINED), "categories": {"v.z": []}})},
            "not in refs",
        ),
        (
            {
                "mlbus__encoding": json.dumps(
                    {"refs": list(TRAINED), "categories": {CHANNEL: ["a", "a"]}}
                )
            },
            "repeat",
        ),
        (
            {"mlbus__encoding": json.dumps({"refs": [CHANNEL, CHANNEL], "categories": {}})},
            "distinct",
        ),
        ({"mlbus__feature_names__x": f"{AMOUNT},{CHANNEL}"}, "differs from the refs"),
        (
            {
                "mlbus__encoding": None,
                "mlbus__feature_names__x": f"{CHANNEL},{AMOUNT},{COUNT}",
            },
            "has 2 columns, the metadata names 3",
        ),
    ],
)
def test_malformed_metadata_is_refused_at_load(
    trained: Trained, changes: dict[str, str | None], reason: str
) -> None:
    with pytest.raises(ModelRefused) as refused:
        served(with_metadata(trained.onnx, **changes))
    assert refused.value.stage == "metadata"
    assert reason in refused.value.reason
    assert refused.value.reason.startswith("fraud_detector v1: ")


def test_encoding_metadata_on_a_model_without_one_matrix_input_is_refused() -> None:
    data = with_metadata(
        identity_model(),
        mlbus__encoding=json.dumps({"refs": [AMOUNT], "categories": {}}),
    )
    with pytest.raises(ModelRefused, match="one 2-D FP32/FP64 input"):
        served(data)


def test_feature_names_alone_name_the_columns() -> None:
    data = with_metadata(linear_model(1, width=2), mlbus__feature_names__x=f" {COUNT}, {AMOUNT}")
    model = served(data)
    assert model.encoding is not None
    assert (model.encoding.refs, dict(model.encoding.codes)) == ((COUNT, AMOUNT), {})
    spec = spec_with((AMOUNT, COUNT))
    features = spec.model_features()
    layout = FeatureLayout.of(model, features)
    assert layout.positions == (1, 0)
    rows = [EntityFeatures("e", (5.0, 2), {}, ())]
    assert layout.build(rows, features)["x"].tolist() == [[2.0, 5.0]]
    assert read_encoding({}, model.signature) is None


def test_a_value_the_models_fp32_input_cannot_hold_is_invalid_input_naming_the_feature(
    trained: Trained,
) -> None:
    # Found by the soak's fuzzing: 1e308 became inf with a RuntimeWarning (INTERNAL in tests).
    features = trained.spec.model_features()
    layout = FeatureLayout.of(served(trained.onnx), features)
    rows = [EntityFeatures("card-1", ("online", 1e308), {}, ())]
    with pytest.raises(InvalidInput, match=r"feature 'card_activity.amount': 1e\+308 does not fit"):
        layout.build(rows, features)
    fine = [
        EntityFeatures("card-1", ("online", 3e38), {}, ()),
        EntityFeatures("c", ("pos", None), {}, ()),
    ]
    x = layout.build(fine, features)["x"]
    assert x[0, 1] == np.float32(3e38)
    assert np.isnan(x[1, 1])  # missing stays NaN
