"""Outcome aggregates (AUC from binned scores, intervals, add/subtract) and the mSPRT."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

from mlbus.outcomestats import (
    ClassificationOutcomes,
    RegressionOutcomes,
    confidence_radius,
    experiment_metric,
    log_mixture_ratio,
    merge,
    msprt,
    outcomes_from_json,
)


def _sample(seed: int, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    actual = rng.random(n) < 0.3
    scores = 1.0 / (1.0 + np.exp(-(rng.normal(0.0, 1.0, n) + shift * actual)))
    return scores, actual


def test_classification_metrics_match_sklearn() -> None:
    scores, actual = _sample(1, 4000, 1.2)
    outcomes = ClassificationOutcomes(threshold=0.5)
    for s, a in zip(scores, actual, strict=True):
        outcomes.add(float(s), bool(a))
    found = outcomes.estimates()
    assert found["auc"].value == pytest.approx(roc_auc_score(actual, scores), abs=1e-3)
    assert found["log_loss"].value == pytest.approx(log_loss(actual, scores), rel=1e-9)
    assert found["accuracy"].value == pytest.approx(np.mean((scores >= 0.5) == actual))
    assert found["positive_rate"].value == pytest.approx(actual.mean())
    for estimate in (found["auc"], found["accuracy"], found["log_loss"]):
        assert estimate.ci_low < estimate.value < estimate.ci_high
        assert estimate.n == 4000


def test_add_many_equals_one_at_a_time() -> None:
    scores, actual = _sample(2, 500, 1.0)
    one = ClassificationOutcomes()
    for s, a in zip(scores, actual, strict=True):
        one.add(float(s), bool(a))
    many = ClassificationOutcomes()
    many.add_many(scores, actual)
    assert one.to_json()["pos"] == many.to_json()["pos"]
    assert (one.true_pos, one.false_pos, one.true_neg) == (
        many.true_pos,
        many.false_pos,
        many.true_neg,
    )
    assert one.log_loss_sum == pytest.approx(many.log_loss_sum)


def test_auc_interval_covers_the_truth_about_95_percent() -> None:
    """The DeLong variance from histograms is right: the 95% interval covers the AUC."""
    truth_scores, truth_actual = _sample(3, 400_000, 1.0)
    truth = roc_auc_score(truth_actual, truth_scores)
    covered = 0
    trials = 200
    for seed in range(trials):
        scores, actual = _sample(1000 + seed, 2000, 1.0)
        outcomes = ClassificationOutcomes()
        outcomes.add_many(scores, actual)
        auc = outcomes.estimates()["auc"]
        covered += auc.ci_low <= truth <= auc.ci_high
    assert 0.91 <= covered / trials <= 0.99


def test_aggregates_add_subtract_and_round_trip() -> None:
    a_scores, a_actual = _sample(4, 300, 1.0)
    b_scores, b_actual = _sample(5, 200, 1.0)
    a, b = ClassificationOutcomes(), ClassificationOutcomes()
    a.add_many(a_scores, a_actual)
    b.add_many(b_scores, b_actual)
    both = merge([a, b], "classification")
    assert both.n == 500
    back = both - b
    assert isinstance(back, ClassificationOutcomes)
    got, want = back.to_json(), a.to_json()
    assert got["ll"] == pytest.approx(want["ll"])
    assert {k: v for k, v in got.items() if k not in ("ll", "ll2")} == {
        k: v for k, v in want.items() if k not in ("ll", "ll2")
    }
    assert outcomes_from_json(both.to_json()).to_json() == both.to_json()


def test_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(6)
    actual = rng.normal(10.0, 3.0, 3000)
    predicted = actual + rng.normal(0.5, 2.0, 3000)
    outcomes = RegressionOutcomes()
    for p, y in zip(predicted, actual, strict=True):
        outcomes.add(float(p), float(y))
    found = outcomes.estimates()
    assert found["mae"].value == pytest.approx(mean_absolute_error(actual, predicted))
    assert found["rmse"].value == pytest.approx(math.sqrt(mean_squared_error(actual, predicted)))
    assert found["rmse"].ci_low < found["rmse"].value < found["rmse"].ci_high
    again = outcomes_from_json(outcomes.to_json())
    assert isinstance(again, RegressionOutcomes)
    assert again.estimates()["mae"].value == pytest.approx(found["mae"].value)


def test_empty_aggregates_say_nothing() -> None:
    found = ClassificationOutcomes().estimates()
    assert math.isnan(found["auc"].value)
    assert found["auc"].n == 0
    assert math.isnan(RegressionOutcomes().estimates()["mae"].value)


def test_msprt_waits_until_ready_and_keeps_the_p_value_monotone() -> None:
    waiting = msprt((0.75, 1e-4), (0.80, 1e-4), metric="auc", tau=0.02, alpha=0.05, ready=False)
    assert waiting.verdict == "not yet"
    assert not waiting.ready
    first = msprt((0.75, 1e-4), (0.76, 1e-4), metric="auc", tau=0.02, alpha=0.05)
    later = msprt(
        (0.75, 1e-4), (0.75, 1e-4), metric="auc", tau=0.02, alpha=0.05, previous_p=first.p_value
    )
    assert later.p_value == first.p_value  # a look never raises it


@pytest.mark.parametrize(
    ("metric", "champion", "challenger", "verdict"),
    [
        ("auc", 0.75, 0.80, "better"),
        ("auc", 0.80, 0.75, "worse"),
        ("log_loss", 0.40, 0.30, "better"),  # lower is better
        ("mae", 1.0, 1.5, "worse"),
    ],
)
def test_msprt_direction(metric: str, champion: float, challenger: float, verdict: str) -> None:
    result = msprt((champion, 1e-5), (challenger, 1e-5), metric=metric, tau=0.02, alpha=0.05)
    assert result.verdict == verdict
    assert result.p_value <= 0.05
    assert result.ci_low <= result.difference <= result.ci_high
    assert (result.ci_low > 0) == (verdict == "better")


@given(
    difference=st.floats(-0.2, 0.2),
    variance=st.floats(1e-7, 1e-2),
    tau=st.floats(0.001, 0.2),
    alpha=st.floats(0.001, 0.2),
)
@settings(max_examples=200, deadline=None)
def test_interval_excludes_zero_exactly_when_the_test_rejects(
    difference: float, variance: float, tau: float, alpha: float
) -> None:
    """The confidence sequence is the inversion of the same mixture: the two agree."""
    rejects = log_mixture_ratio(difference, variance, tau * tau) >= math.log(1 / alpha)
    radius = confidence_radius(variance, tau * tau, alpha)
    if abs(abs(difference) - radius) > 1e-9 * max(1.0, radius):
        assert rejects == (abs(difference) > radius)


def test_the_tested_metric_falls_back_where_no_variance_is_known() -> None:
    assert experiment_metric("classification", "f1") == "auc"
    assert experiment_metric("classification", "log_loss") == "log_loss"
    assert experiment_metric("regression", "rmse") == "rmse"
