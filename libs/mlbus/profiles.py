"""Reference profiles: the distributions a model was trained on, shipped with the model.

The trainer computes one from its training rows (or a user from a sample, for a
model trained elsewhere), the registry stores it with the model version, and
the drift detector compares live windows against it. It is plain JSON:

    profile = ReferenceProfile.from_samples({"amount": amounts, "country": countries},
                                            predictions=scores)
    text = profile.model_dump_json()
    ReferenceProfile.model_validate_json(text).features["amount"].bin_counts(live)

- A numeric feature keeps quantile cut points `edges` (ascending, unique) and
  `counts` of len(edges) + 1 bins: (-inf, e0], (e0, e1], …, (e_last, +inf).
  `bin_counts` bins live values the same way, so both sides always share bins.
- A categorical feature (strings, booleans) keeps category frequencies.
- Missing values (None, NaN) are counted apart, never binned.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeAlias

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_BINS = 10
MAX_CATEGORIES = 1000
"""Categories beyond the most frequent `MAX_CATEGORIES` are pooled under `OTHER`."""
OTHER = "__other__"


class _Profile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NumericProfile(_Profile):
    """Quantile bins of a numeric column."""

    kind: Literal["numeric"] = "numeric"
    edges: tuple[float, ...] = Field(description="Ascending unique cut points (bin upper bounds).")
    counts: tuple[int, ...] = Field(description="len(edges) + 1 counts; the last bin is open.")
    missing: int = Field(default=0, ge=0)
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None

    @property
    def n(self) -> int:
        return sum(self.counts)

    def bin_counts(self, values: Iterable[Any]) -> np.ndarray:
        """Counts of `values` in this profile's bins (missing values left out)."""
        data = _as_float(values)
        data = data[~np.isnan(data)]
        index = np.searchsorted(np.asarray(self.edges, dtype=np.float64), data, side="left")
        return np.bincount(index, minlength=len(self.edges) + 1).astype(np.int64)

    def fractions(self) -> np.ndarray:
        total = self.n
        counts = np.asarray(self.counts, dtype=np.float64)
        return counts / total if total else counts


class CategoricalProfile(_Profile):
    """Frequencies of a categorical column (values as strings)."""

    kind: Literal["categorical"] = "categorical"
    frequencies: dict[str, int]
    missing: int = Field(default=0, ge=0)

    @property
    def n(self) -> int:
        return sum(self.frequencies.values())

    def counts_for(self, values: Iterable[Any]) -> dict[str, int]:
        """Live counts keyed like `frequencies`; unseen categories are pooled under OTHER."""
        counts = dict.fromkeys(self.frequencies, 0)
        for value in values:
            if _is_missing(value):
                continue
            key = _category(value)
            if key not in counts:
                key = OTHER
            counts[key] = counts.get(key, 0) + 1
        return counts


ColumnProfile: TypeAlias = Annotated[
    NumericProfile | CategoricalProfile, Field(discriminator="kind")
]


class ReferenceProfile(_Profile):
    """Per-feature and prediction distributions of the data a model was built on.

    `n_samples` counts the feature rows; the prediction profile may come from
    other rows (the trainer scores the holdout) and carries its own counts.
    """

    n_samples: int = Field(ge=0)
    features: dict[str, ColumnProfile]
    prediction: ColumnProfile | None = None
    bins: int = Field(default=DEFAULT_BINS, ge=1)

    @classmethod
    def from_samples(
        cls,
        columns: Mapping[str, Sequence[Any] | np.ndarray],
        predictions: Sequence[Any] | np.ndarray | None = None,
        *,
        bins: int = DEFAULT_BINS,
    ) -> ReferenceProfile:
        """Profile each column (numeric: quantile bins; strings/booleans: frequencies)."""
        lengths = {len(values) for values in columns.values()}
        if predictions is not None:
            lengths.add(len(predictions))
        if len(lengths) > 1:
            raise ValueError(f"columns and predictions differ in length: {sorted(lengths)}")
        return cls(
            n_samples=lengths.pop() if lengths else 0,
            features={name: profile_column(values, bins) for name, values in columns.items()},
            prediction=None if predictions is None else profile_column(predictions, bins),
            bins=bins,
        )


def profile_column(values: Sequence[Any] | np.ndarray, bins: int = DEFAULT_BINS) -> ColumnProfile:
    """A numeric profile for int/float data, a categorical one for anything else."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"expected a one-dimensional column, got shape {array.shape}")
    if _numeric(array):
        return _numeric_profile(array, bins)
    return _categorical_profile(array)


def _numeric(array: np.ndarray) -> bool:
    if array.dtype.kind in "iuf":
        return True
    if array.dtype.kind != "O":
        return False
    present = [v for v in array.tolist() if not _is_missing(v)]
    return bool(present) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in present
    )


def _numeric_profile(array: np.ndarray, bins: int) -> NumericProfile:
    data = _as_float(array)
    missing = int(np.isnan(data).sum())
    present = data[~np.isnan(data)]
    if present.size == 0:
        return NumericProfile(edges=(), counts=(0,), missing=missing)
    quantiles = np.quantile(present, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    edges = tuple(float(e) for e in np.unique(quantiles))
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), present, side="left")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return NumericProfile(
        edges=edges,
        counts=tuple(int(c) for c in counts),
        missing=missing,
        mean=float(present.mean()),
        std=float(present.std()),
        min=float(present.min()),
        max=float(present.max()),
    )


def _categorical_profile(array: np.ndarray) -> CategoricalProfile:
    values = array.tolist()
    missing = sum(1 for v in values if _is_missing(v))
    counter = Counter(_category(v) for v in values if not _is_missing(v))
    frequencies = dict(counter.most_common(MAX_CATEGORIES))
    pooled = sum(counter.values()) - sum(frequencies.values())
    if pooled:
        frequencies[OTHER] = frequencies.get(OTHER, 0) + pooled
    return CategoricalProfile(frequencies=frequencies, missing=missing)


def _as_float(values: Iterable[Any]) -> np.ndarray:
    array = values if isinstance(values, np.ndarray) else np.asarray(list(values), dtype=object)
    if array.dtype.kind in "iuf":
        return array.astype(np.float64)
    return np.asarray([math.nan if _is_missing(v) else float(v) for v in array.tolist()])


def is_missing(value: object) -> bool:
    """None or NaN: counted apart from the bins (the drift detector keys live values alike)."""
    return _is_missing(value)


def category_key(value: object) -> str:
    """The key a categorical value is counted under (booleans as "true"/"false")."""
    return _category(value)


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _category(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
