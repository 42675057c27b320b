"""How one model version takes the spec's features: `FeatureLayout`, computed once per version.

- *matrix, encoded*: a model from the trainer has one 2-D FP32/FP64 input and
  an `InputEncoding` from its metadata (`mlbus.encoding`,
  `mlbus.feature_names.x`): columns in the model's ref order (a subset or
  reordering of the spec's features), categorical values as the trainer's
  ordinal codes (unknown, non-string or null → NaN; bool → "false"/"true"),
  numbers as is (null → NaN). A model ref the spec lacks, or a ref whose
  kind (categorical / numeric) differs from the spec's, is FAILED_PRECONDITION.
- *matrix*: one 2-D FP32/FP64 input without metadata, one column per feature
  in spec order. Every feature must then be numeric (int, float; bool as 0/1);
  a string or enum feature is FAILED_PRECONDITION naming it.
- *columns*: every model input is named after a feature (`view.feature` or
  its name), shape [N] or [N, 1]; string features go in BYTES inputs.

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from mlbus.errors import InvalidInput, PermanentError
from mlbus.signatures import OIP_TO_NUMPY

from ._model import InputEncoding, LoadedModel, encode_category
from ._policy import EntityFeatures

if TYPE_CHECKING:
    from mlbus.spec import FeatureDef


class FeaturesUnavailable(PermanentError):
    """Predict cannot run here (no spec, no Redis) or the model cannot take the spec's features."""


# ── rows → model inputs ──────────────────────────────────────────────────────


_FLOATS = ("FP32", "FP64")
_TEXT = ("string", "enum")


@dataclass(frozen=True)
class FeatureLayout:
    """How one model version takes the spec's features (see the module docstring)."""

    kind: Literal["matrix", "columns"]
    # matrix: (input name, numpy dtype); columns: (input name, feature index, dtype, rank)
    matrix: tuple[str, np.dtype[np.generic]] | None
    columns: tuple[tuple[str, int, np.dtype[np.generic], int], ...]
    feature_names: tuple[str, ...] | None
    positions: tuple[int, ...] | None = None
    """matrix: the spec index of each column (None: all features in spec order)."""
    codes: tuple[tuple[int, Mapping[str, float]], ...] = ()
    """matrix: (column, category → code) of each categorical column."""

    @classmethod
    def of(cls, model: LoadedModel, features: Sequence[FeatureDef]) -> FeatureLayout:
        """The layout, or `FeaturesUnavailable` saying why the model cannot take these features."""
        inputs = model.signature.inputs
        what = f"{model.name} v{model.version}"
        if model.encoding is not None:
            return cls._encoded(model.encoding, model, features)
        index = {f.ref: i for i, f in enumerate(features)}
        for i, f in enumerate(features):
            index.setdefault(f.name, i)
        if all(t.name in index for t in inputs):
            columns = []
            for t in inputs:
                feature = features[index[t.name]]
                if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] not in (-1, 1)):
                    raise FeaturesUnavailable(
                        f"{what}: input {t.name!r} has shape {list(t.shape)}; a feature input "
                        "must be [N] or [N, 1]"
                    )
                if (t.datatype == "BYTES") != (feature.dtype in _TEXT):
                    raise FeaturesUnavailable(
                        f"{what}: input {t.name!r} is {t.datatype} but feature {feature.ref!r} "
                        f"is {feature.dtype}"
                    )
                columns.append((t.name, index[t.name], OIP_TO_NUMPY[t.datatype], len(t.shape)))
            return cls("columns", None, tuple(columns), None)
        if len(inputs) == 1 and inputs[0].datatype in _FLOATS and len(inputs[0].shape) == 2:
            (t,) = inputs
            if t.shape[1] not in (-1, len(features)):
                raise FeaturesUnavailable(
                    f"{what}: input {t.name!r} has {t.shape[1]} columns, the spec's model has "
                    f"{len(features)} features ({', '.join(f.ref for f in features)})"
                )
            text = [f.ref for f in features if f.dtype in _TEXT]
            if text:
                raise FeaturesUnavailable(
                    f"{what} takes one numeric input {t.name!r} ({t.datatype}) without "
                    f"mlbus.encoding metadata, but feature(s) {', '.join(text)} are categorical "
                    "strings; publish a model trained by mlbus (it records the encoding), one "
                    "with one input per feature (named after it), or leave them out of "
                    "model.features"
                )
            refs = tuple(f.ref for f in features)
            return cls("matrix", (t.name, OIP_TO_NUMPY[t.datatype]), (), refs)
        raise FeaturesUnavailable(
            f"{what}: cannot map the spec's features to its inputs "
            f"{[t.name for t in inputs]}: expected one 2-D FP32/FP64 input of "
            f"{len(features)} columns, or one input per feature named after it"
        )

    @classmethod
    def _encoded(
        cls, encoding: InputEncoding, model: LoadedModel, features: Sequence[FeatureDef]
    ) -> FeatureLayout:
        what = f"{model.name} v{model.version}"
        index = {f.ref: i for i, f in enumerate(features)}
        unknown = [ref for ref in encoding.refs if ref not in index]
        if unknown:
            raise FeaturesUnavailable(
                f"{what} was trained on feature(s) {', '.join(unknown)} that the spec's model "
                f"does not list ({', '.join(index)}); serve it with the spec it was trained on"
            )
        problems = []
        for ref in encoding.refs:
            feature = features[index[ref]]
            coded = ref in encoding.codes
            if coded != (feature.kind == "categorical"):
                how = "categorical codes" if coded else "numbers"
                problems.append(f"{ref} (the model takes {how}, the spec says {feature.dtype})")
        if problems:
            raise FeaturesUnavailable(
                f"{what} encodes features differently from the spec: {'; '.join(problems)}"
            )
        dtype = OIP_TO_NUMPY[model.inputs[encoding.input].datatype]
        positions = tuple(index[ref] for ref in encoding.refs)
        codes = tuple(
            (j, encoding.codes[ref]) for j, ref in enumerate(encoding.refs) if ref in encoding.codes
        )
        return cls(
            "matrix",
            (encoding.input, dtype),
            (),
            encoding.refs,
            None if positions == tuple(range(len(features))) else positions,
            codes,
        )

    def build(
        self, rows: Sequence[EntityFeatures], features: Sequence[FeatureDef]
    ) -> dict[str, np.ndarray]:
        if self.matrix is not None:
            name, dtype = self.matrix
            table = (
                [r.values for r in rows]
                if self.positions is None and not self.codes
                else self.encode(rows)
            )
            try:
                array = np.array(table, dtype=np.float64)
            except (TypeError, ValueError):
                raise InvalidInput(_non_numeric(rows, features, self._coded())) from None
            names = self.feature_names or tuple(f.ref for f in features)
            return {name: _narrow(array, dtype, names)}
        out: dict[str, np.ndarray] = {}
        for name, i, dtype, rank in self.columns:
            column = [r.values[i] for r in rows]
            try:
                if dtype == np.object_:
                    array = np.array([str(v) for v in column], dtype=np.object_)
                else:
                    wide = np.array(column, dtype=np.float64)
                    array = _narrow(wide, dtype, (features[i].ref,))
            except (TypeError, ValueError):
                raise InvalidInput(
                    f"feature {features[i].ref!r}: expected numbers, got {column[:3]!r}"
                ) from None
            out[name] = array if rank == 1 else array.reshape(-1, 1)
        return out

    def _coded(self) -> set[str]:
        names = self.feature_names or ()
        return {names[j] for j, _ in self.codes}

    def encode(self, rows: Sequence[EntityFeatures]) -> list[list[object]]:
        """The matrix rows before the float conversion: model column order, categories coded."""
        positions = self.positions or range(len(rows[0].values) if rows else 0)
        codes = self.codes
        table: list[list[object]] = []
        for r in rows:
            values = r.values
            row: list[object] = [values[i] for i in positions]
            for j, categories in codes:
                row[j] = encode_category(categories, row[j])
            table.append(row)
        return table


def _narrow(array: np.ndarray, dtype: np.dtype[np.generic], names: Sequence[str]) -> np.ndarray:
    """Float64 feature values as the model's `dtype`; `InvalidInput` naming the feature of a
    value that dtype cannot hold (1e308 as FP32 was inf, and a RuntimeWarning: found by
    the soak's fuzzing). NaN stays NaN in a float input: it means missing."""
    if dtype == np.float64:
        return array
    if dtype.kind == "f":
        limit = float(np.finfo(dtype).max)  # type: ignore[type-var, arg-type]
        bad = np.isfinite(array) & (np.abs(array) > limit)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)  # type: ignore[type-var, arg-type]
        bad = ~np.isfinite(array) | (array < info.min) | (array > info.max)
    else:  # bool: any number is true or false
        return array.astype(dtype)
    if bad.any():
        where = np.argwhere(bad)[0]
        name = names[int(where[-1]) if array.ndim > 1 else 0]
        value = float(array[tuple(where)])
        raise InvalidInput(f"feature {name!r}: {value!r} does not fit the model's {dtype} input")
    return array.astype(dtype, copy=False)


def _non_numeric(
    rows: Sequence[EntityFeatures], features: Sequence[FeatureDef], coded: set[str]
) -> str:
    for row in rows:
        for feature, value in zip(features, row.values, strict=True):
            if isinstance(value, str) and feature.ref not in coded:
                return (
                    f"feature {feature.ref!r} of {row.entity_id!r} is {value!r}; "
                    "the model takes numbers"
                )
    return "a feature value is not a number"
