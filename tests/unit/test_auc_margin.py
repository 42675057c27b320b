"""The margin the closed-loop test asks of an AUC difference (tests/e2e/auc_margin.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.e2e.auc_margin import (
    auc_standard_error,
    chance_margin,
    difference_margin,
    segment_standard_error,
)


@dataclass(frozen=True)
class Part:
    labelled: int
    positives: int
    auc: float | None


def rank_auc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """Mann–Whitney AUC (continuous scores: no ties)."""
    scores = np.concatenate([positive_scores, negative_scores])
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores)] = np.arange(1, len(scores) + 1)
    n1, n0 = len(positive_scores), len(negative_scores)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_a_worked_example_of_the_formula() -> None:
    # A = 0.75, 100 positives, 100 negatives: Q1 = 0.6, Q2 = 0.642857,
    # SE² = (0.1875 + 99 (0.0375) + 99 (0.080357)) / 10,000 = 0.00118554
    assert auc_standard_error(0.75, 100, 100) == pytest.approx(0.034432, abs=1e-6)
    assert auc_standard_error(1.0, 10, 10) == 0.0  # a perfect ranking does not vary


@pytest.mark.parametrize(
    ("separation", "positives", "negatives"),
    [(0.3, 50, 50), (0.5, 60, 240), (1.0, 100, 900), (1.5, 40, 400)],
)
def test_the_standard_error_matches_the_spread_of_simulated_runs(
    separation: float, positives: int, negatives: int
) -> None:
    """Scores of two normal classes `separation` apart; the spread of the AUC over many
    simulated runs is what Hanley–McNeil estimates. It is approximate, and errs wide:
    measured here, the spread is 0.78-1.03 times the estimate (the more separated and
    unbalanced the classes, the wider the estimate), so a margin built on it is, if
    anything, stricter than it needs to be."""
    rng = np.random.default_rng(26)
    aucs = [
        rank_auc(rng.normal(separation, 1, positives), rng.normal(0, 1, negatives))
        for _ in range(2_000)
    ]
    true_auc = 0.5 * (1 + math.erf(separation / 2))  # Φ(d / √2)
    assert float(np.mean(aucs)) == pytest.approx(true_auc, abs=0.01)
    ratio = float(np.std(aucs)) / auc_standard_error(true_auc, positives, negatives)
    assert 0.7 < ratio < 1.1


@given(
    auc=st.floats(0.0, 1.0),
    positives=st.integers(1, 10_000),
    negatives=st.integers(1, 10_000),
)
def test_more_labels_never_widen_the_error(auc: float, positives: int, negatives: int) -> None:
    se = auc_standard_error(auc, positives, negatives)
    assert 0.0 <= se <= 0.5
    assert auc_standard_error(auc, positives * 2, negatives * 2) <= se + 1e-12


def test_margins_combine_both_parts_and_follow_the_counts() -> None:
    small, large = Part(400, 40, 0.7), Part(40_000, 4_000, 0.7)
    assert difference_margin(large, large) < difference_margin(small, small)
    assert difference_margin(small, large) == pytest.approx(
        3 * math.hypot(segment_standard_error(small), segment_standard_error(large))
    )
    assert chance_margin(small) == pytest.approx(3 * auc_standard_error(0.5, 40, 360))


def test_a_part_without_both_classes_has_no_margin() -> None:
    with pytest.raises(ValueError, match="both classes"):
        auc_standard_error(0.7, 0, 10)
    with pytest.raises(AssertionError, match="no AUC"):
        segment_standard_error(Part(10, 0, None))
