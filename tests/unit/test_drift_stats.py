"""The drift statistics against hand-computed values, scipy, and textbook corrections."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlbus.driftstats import stats

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")
scipy_distance = pytest.importorskip("scipy.spatial.distance")


def test_psi_matches_a_hand_computed_value() -> None:
    # with pseudo-count 0: p = (.5, .5), q = (.25, .75)
    # PSI = (.25-.5) ln(.25/.5) + (.75-.5) ln(.75/.5) = .25 ln 2 + .25 ln 1.5
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert stats.psi([50, 50], [25, 75], pseudo_count=0.0) == pytest.approx(expected, rel=1e-12)
    assert stats.psi([50, 50], [50, 50]) == 0.0


def test_psi_stays_finite_when_a_bin_is_empty_on_one_side() -> None:
    value = stats.psi([100, 0, 100], [0, 50, 50])
    assert math.isfinite(value)
    assert value > 1.0  # a whole new bin and a vanished one is a large shift


def test_psi_of_the_same_proportions_at_other_sizes_is_near_zero() -> None:
    assert stats.psi([1000, 2000, 7000], [10, 20, 70]) == pytest.approx(0.0, abs=0.01)


@given(
    st.lists(st.integers(0, 1000), min_size=2, max_size=12).flatmap(
        lambda ref: st.tuples(
            st.just(ref), st.lists(st.integers(0, 1000), min_size=len(ref), max_size=len(ref))
        )
    )
)
@settings(max_examples=100, deadline=None)
def test_jensen_shannon_matches_scipy(pair: tuple[list[int], list[int]]) -> None:
    ref, live = pair
    ours = stats.jensen_shannon_distance(ref, live)
    assert 0.0 <= ours <= 1.0
    if sum(ref) and sum(live):
        theirs = float(scipy_distance.jensenshannon(ref, live, base=2))
        assert ours == pytest.approx(theirs, abs=1e-7)


def test_jensen_shannon_is_one_for_disjoint_distributions() -> None:
    assert stats.jensen_shannon_distance([10, 0], [0, 10]) == pytest.approx(1.0)


@given(
    st.lists(st.integers(0, 500), min_size=2, max_size=10).flatmap(
        lambda ref: st.tuples(
            st.just(ref), st.lists(st.integers(0, 500), min_size=len(ref), max_size=len(ref))
        )
    )
)
@settings(max_examples=100, deadline=None)
def test_chi2_homogeneity_matches_scipy_contingency(pair: tuple[list[int], list[int]]) -> None:
    ref, live = pair
    statistic, p_value, dof = stats.chi2_homogeneity(ref, live)
    table = np.asarray([ref, live])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or sum(ref) == 0 or sum(live) == 0:
        assert (statistic, p_value, dof) == (0.0, 1.0, 0)
        return
    expected = scipy_stats.chi2_contingency(table, correction=False)
    assert statistic == pytest.approx(expected.statistic, rel=1e-9, abs=1e-9)
    assert dof == expected.dof
    assert p_value == pytest.approx(expected.pvalue, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("dof", [1, 2, 3, 7, 10, 50, 300])
def test_chi2_sf_matches_scipy(dof: int) -> None:
    for x in (0.01, 0.5, 1.0, dof * 0.5, float(dof), dof + 3.0, dof * 2.0, dof * 5.0 + 40):
        assert stats.chi2_sf(x, dof) == pytest.approx(
            scipy_stats.chi2.sf(x, dof), rel=1e-9, abs=1e-300
        )


def test_kolmogorov_sf_matches_scipy() -> None:
    for x in np.linspace(0.05, 3.5, 70):
        assert stats.kolmogorov_sf(float(x)) == pytest.approx(
            scipy_special.kolmogorov(x), rel=1e-9, abs=1e-15
        )
    assert stats.kolmogorov_sf(0.0) == 1.0


def test_binned_ks_statistic_is_scipys_on_the_binned_values() -> None:
    rng = np.random.default_rng(3)
    edges = np.quantile(rng.normal(size=5000), np.linspace(0, 1, 11)[1:-1])
    ref_values, live_values = rng.normal(size=4000), rng.normal(0.3, 1.0, size=900)
    ref_bins = np.searchsorted(edges, ref_values, side="left")
    live_bins = np.searchsorted(edges, live_values, side="left")
    d, p_value = stats.binned_ks(
        np.bincount(ref_bins, minlength=11), np.bincount(live_bins, minlength=11)
    )
    theirs = scipy_stats.ks_2samp(ref_bins, live_bins)
    assert d == pytest.approx(theirs.statistic, abs=1e-12)
    effective_n = 4000 * 900 / 4900
    assert p_value == pytest.approx(scipy_special.kolmogorov(math.sqrt(effective_n) * d))
    # binning can only hide part of the gap, never add to it: a conservative test
    assert d <= scipy_stats.ks_2samp(ref_values, live_values).statistic + 1e-12


def test_binned_ks_is_conservative_under_the_null() -> None:
    rng = np.random.default_rng(11)
    reference = np.bincount(rng.integers(0, 10, 20_000), minlength=10)
    rejections = sum(
        stats.binned_ks(reference, np.bincount(rng.integers(0, 10, 500), minlength=10))[1] <= 0.05
        for _ in range(400)
    )
    assert rejections <= 0.05 * 400 + 3 * math.sqrt(400 * 0.05 * 0.95)


def test_benjamini_hochberg_on_the_1995_paper_example() -> None:
    # Benjamini & Hochberg (1995), section 4: 15 p-values, q = 0.05 rejects the four smallest
    p_values = [
        0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344,
        0.0459, 0.3240, 0.4262, 0.5719, 0.6528, 0.7590, 1.0000,
    ]  # fmt: skip
    adjusted = stats.benjamini_hochberg(p_values)
    assert [a <= 0.05 for a in adjusted] == [True] * 4 + [False] * 11
    assert adjusted[3] == pytest.approx(0.0095 * 15 / 4)
    # and in shuffled order the same p-values get the same adjusted values
    order = [14, 3, 0, 9, 5, 1, 12, 7, 2, 11, 6, 13, 4, 10, 8]
    shuffled = stats.benjamini_hochberg([p_values[i] for i in order])
    assert shuffled == [adjusted[i] for i in order]


def test_bonferroni_on_the_same_example_rejects_three() -> None:
    p_values = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.5]
    adjusted = stats.bonferroni(p_values)
    assert [a <= 0.05 for a in adjusted] == [True, True, True, False, False, False]
    assert adjusted[-1] == 1.0
    assert stats.bonferroni([]) == []
    assert stats.benjamini_hochberg([]) == []


@given(st.lists(st.floats(0.0, 1.0), max_size=30))
def test_adjusted_p_values_are_monotone_and_bounded(p_values: list[float]) -> None:
    bh = stats.benjamini_hochberg(p_values)
    bonf = stats.bonferroni(p_values)
    for p, a, b in zip(p_values, bh, bonf, strict=True):
        assert p <= a + 1e-15 <= b + 2e-15
        assert a <= 1.0
    ranked = sorted(zip(p_values, bh, strict=True))
    assert all(x[1] <= y[1] + 1e-15 for x, y in itertools.pairwise(ranked))


def test_bins_must_match_and_counts_must_be_sane() -> None:
    with pytest.raises(ValueError, match="differ"):
        stats.psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        stats.chi2_homogeneity([1, -2], [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        stats.binned_ks([1, math.nan], [1, 2])
    assert stats.binned_ks([0, 0], [1, 2]) == (0.0, 1.0)
