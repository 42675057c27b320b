"""ReferenceProfile: quantile bins and frequencies the drift detector compares against."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlbus.profiles import (
    OTHER,
    CategoricalProfile,
    NumericProfile,
    ReferenceProfile,
    profile_column,
)


def test_numeric_column_gets_quantile_bins_that_hold_every_value() -> None:
    values = np.arange(1000, dtype=np.float64)
    profile = profile_column(values, bins=10)
    assert isinstance(profile, NumericProfile)
    assert len(profile.edges) == 9
    assert len(profile.counts) == 10
    assert sum(profile.counts) == 1000
    assert all(90 <= c <= 110 for c in profile.counts)  # quantile bins are about equal
    assert profile.min == 0
    assert profile.max == 999


def test_categorical_column_counts_frequencies_and_missing_apart() -> None:
    profile = profile_column(np.asarray(["DE", "FR", "DE", None, "DE"], dtype=object))
    assert isinstance(profile, CategoricalProfile)
    assert profile.frequencies == {"DE": 3, "FR": 1}
    assert profile.missing == 1
    assert profile.counts_for(["DE", "US", None]) == {"DE": 1, "FR": 0, OTHER: 1}


def test_booleans_are_categorical_and_nan_is_missing() -> None:
    assert isinstance(profile_column(np.asarray([True, False, True])), CategoricalProfile)
    numeric = profile_column(np.asarray([1.0, math.nan, 3.0]))
    assert isinstance(numeric, NumericProfile)
    assert numeric.missing == 1
    assert sum(numeric.counts) == 2


def test_from_samples_profiles_features_and_predictions_and_round_trips_json() -> None:
    rng = np.random.default_rng(7)
    profile = ReferenceProfile.from_samples(
        {"amount": rng.normal(size=200), "country": np.asarray(["a", "b"] * 100, dtype=object)},
        predictions=rng.uniform(size=200),
    )
    assert profile.n_samples == 200
    assert profile.features["amount"].kind == "numeric"
    assert profile.features["country"].kind == "categorical"
    assert profile.prediction is not None
    assert profile.prediction.kind == "numeric"
    assert ReferenceProfile.model_validate_json(profile.model_dump_json()) == profile


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        ReferenceProfile.from_samples({"a": [1.0, 2.0]}, predictions=[0.1])


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300))
def test_binning_live_values_like_the_reference_reproduces_its_counts(values: list[float]) -> None:
    profile = profile_column(np.asarray(values), bins=10)
    assert isinstance(profile, NumericProfile)
    assert list(profile.edges) == sorted(set(profile.edges))
    assert profile.bin_counts(values).tolist() == list(profile.counts)
    assert profile.fractions().sum() == pytest.approx(1.0)
