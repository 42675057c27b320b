"""The ONNX metadata contract: what the trainer writes is what every reader reads."""

from __future__ import annotations

import json

import pytest

from mlbus.model_metadata import (
    Encoding,
    encoding_of,
    feature_names_of,
    positive_class_of,
    training_metadata,
)

ENCODING = Encoding(("v.amount", "v.channel"), {"v.channel": ("pos", "online")})


def written(**overrides: object) -> dict[str, str]:
    arguments: dict[str, object] = {
        "input_name": "x",
        "model": "fraud",
        "task": "classification",
        "estimator": "hist_gradient_boosting",
        "dataset_fingerprint": "abc",
        "threshold": 0.5,
        "classes": ("false", "true"),
    }
    arguments.update(overrides)
    return training_metadata(ENCODING, **arguments)  # type: ignore[arg-type]


def test_what_the_trainer_writes_reads_back() -> None:
    metadata = written(classes=("no", "yes"), code_version="1.2.3")
    assert encoding_of(metadata) == ENCODING
    assert feature_names_of(metadata, "x") == ENCODING.refs
    assert feature_names_of(metadata, "other") is None
    assert positive_class_of(metadata) == "yes"
    assert metadata["mlbus.code_version"] == "1.2.3"
    assert metadata["mlbus.threshold"] == "0.5"


def test_a_model_from_elsewhere_has_no_encoding_and_boolean_classes() -> None:
    assert encoding_of({}) is None
    assert positive_class_of({}) == "true"
    assert "mlbus.classes" not in written(classes=())
    assert "mlbus.code_version" not in written()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "it is not JSON"),
        (json.dumps({"refs": ["a"]}), "it must be"),
        (json.dumps({"refs": ["a"], "categories": {"b": ["x"]}}), "which is not in refs"),
        (json.dumps({"refs": ["a"], "categories": {"a": [1]}}), "must be a list of strings"),
        (json.dumps({"refs": ["a"], "categories": {"a": ["x", "x"]}}), "repeat a value"),
    ],
)
def test_a_malformed_encoding_is_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=rf"malformed mlbus\.encoding metadata: .*{says}"):
        encoding_of({"mlbus.encoding": text})
