"""Package names loaded on first use (`mlbus._lazy`): the same objects, clear errors."""

from __future__ import annotations

import re

import pytest

import mlbus.featurestore as featurestore
from mlbus.featurestore import _pit


def test_a_lazy_name_is_its_modules_object_and_then_a_plain_attribute() -> None:
    assert featurestore.build_training_set is _pit.build_training_set
    assert vars(featurestore)["build_training_set"] is _pit.build_training_set


def test_an_unknown_name_is_an_attribute_error_naming_the_package() -> None:
    message = re.escape("'mlbus.featurestore' has no attribute 'nope'")
    with pytest.raises(AttributeError, match=message):
        _ = featurestore.nope  # type: ignore[attr-defined]
