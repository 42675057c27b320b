"""The metadata the trainer writes into an ONNX model: its keys, its writing and its reading.

ONNX models carry string key/value pairs (`metadata_props`). A model trained by
mlbus carries these; the trainer writes them through `training_metadata`, and
inference, drift and the trainer's own evaluation read them through the
functions below, so there is one spelling of each key and one parser:

- `mlbus.encoding`: JSON `{"refs": [ref, ...], "categories": {ref: [category, ...]}}`.
  Column i of the input is feature `refs[i]`; a categorical feature is fed as
  the index of its value in `categories[ref]` (NaN when not listed), booleans
  as "false"/"true"; numbers as they are.
- `mlbus.feature_names.<input>`: the same refs, comma-separated, for tools that
  read no JSON (and models built by hand that have no encoding).
- `mlbus.classes`: a classifier's classes, comma-separated, the positive last.
- lineage: `mlbus.model`, `mlbus.task`, `mlbus.estimator`,
  `mlbus.dataset_fingerprint`, `mlbus.threshold`, `mlbus.code_version`.

A model from elsewhere may have none of them; readers say what they assume then.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ENCODING = "mlbus.encoding"
FEATURE_NAMES = "mlbus.feature_names."
"""Prefix: the key of input `x` is `mlbus.feature_names.x`."""
CLASSES = "mlbus.classes"
DEFAULT_POSITIVE = "true"
"""The positive class of a model without `mlbus.classes` (boolean labels)."""


@dataclass(frozen=True)
class Encoding:
    """The `mlbus.encoding` document: which feature each input column is, and category codes."""

    refs: tuple[str, ...]
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_json(self) -> str:
        categories = {ref: list(values) for ref, values in self.categories.items()}
        return json.dumps({"refs": list(self.refs), "categories": categories})

    @classmethod
    def from_json(cls, text: str) -> Encoding:
        """Parsed and checked; `ValueError` saying what is wrong."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise _malformed(f"it is not JSON: {exc}") from None
        refs = doc.get("refs") if isinstance(doc, dict) else None
        categories = doc.get("categories") if isinstance(doc, dict) else None
        if not (
            isinstance(refs, list)
            and all(isinstance(r, str) for r in refs)
            and isinstance(categories, dict)
        ):
            raise _malformed('it must be {"refs": [str, ...], "categories": {ref: [str, ...]}}')
        tables: dict[str, tuple[str, ...]] = {}
        for ref, values in categories.items():
            if ref not in refs:
                raise _malformed(f"it has categories for {ref!r}, which is not in refs")
            if not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
                raise _malformed(f"the categories of {ref!r} must be a list of strings")
            if len(set(values)) != len(values):
                raise _malformed(f"the categories of {ref!r} repeat a value")
            tables[ref] = tuple(values)
        return cls(tuple(refs), tables)


def _malformed(detail: str) -> ValueError:
    return ValueError(f"malformed {ENCODING} metadata: {detail}")


def training_metadata(
    encoding: Encoding,
    *,
    input_name: str,
    model: str,
    task: str,
    estimator: str,
    dataset_fingerprint: str,
    threshold: float,
    classes: Sequence[str] = (),
    code_version: str | None = None,
) -> dict[str, str]:
    """What the trainer writes into the models it converts."""
    metadata = {
        FEATURE_NAMES + input_name: ",".join(encoding.refs),
        ENCODING: encoding.to_json(),
        "mlbus.model": model,
        "mlbus.task": task,
        "mlbus.estimator": estimator,
        "mlbus.dataset_fingerprint": dataset_fingerprint,
        "mlbus.threshold": str(threshold),
    }
    if classes:
        metadata[CLASSES] = ",".join(classes)
    if code_version:
        metadata["mlbus.code_version"] = code_version
    return metadata


def read_onnx_metadata(artifact: bytes) -> dict[str, str]:
    """The metadata of an ONNX file (without ONNX Runtime); `ValueError` if it is not one."""
    import onnx

    try:
        model = onnx.load_model_from_string(artifact)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ValueError(f"not an ONNX model: {exc}") from None
    return {prop.key: prop.value for prop in model.metadata_props}


def encoding_of(metadata: Mapping[str, str]) -> Encoding | None:
    """The model's encoding; None without one; `ValueError` when it is malformed."""
    text = metadata.get(ENCODING)
    return None if text is None else Encoding.from_json(text)


def feature_names_of(metadata: Mapping[str, str], input_name: str) -> tuple[str, ...] | None:
    """The refs named for input `input_name`, if the model names them."""
    names = metadata.get(FEATURE_NAMES + input_name)
    return None if names is None else tuple(n.strip() for n in names.split(","))


def positive_class_of(metadata: Mapping[str, str]) -> str:
    """The class a score is the probability of (the trainer writes `negative,positive`)."""
    classes = metadata.get(CLASSES)
    return classes.split(",")[-1].strip() if classes else DEFAULT_POSITIVE
