"""The statistics, on bin counts: PSI, Jensen-Shannon, chi-square, binned KS, corrections.

Every function takes the reference's and the live window's counts over the
same bins (numpy arrays or sequences of non-negative numbers) and is pure.
Distributions are computed with numpy and `math` only, so the drift service
does not need scipy; the unit tests check them against scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PSI_PSEUDO_COUNT = 0.5
"""Added to every bin before PSI's log ratio (Jeffreys prior), so an empty bin stays finite."""

_GAMMA_EPS = 1e-15
_GAMMA_MAX_ITER = 10_000


def _counts(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"expected one-dimensional counts, got shape {array.shape}")
    if array.size and (not np.all(np.isfinite(array)) or array.min() < 0):
        raise ValueError("counts must be finite and non-negative")
    return array


def _pair(
    reference: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    ref, cur = _counts(reference), _counts(live)
    if ref.shape != cur.shape:
        raise ValueError(f"reference and live bins differ: {ref.size} vs {cur.size}")
    return ref, cur


def psi(
    reference: Sequence[float] | np.ndarray,
    live: Sequence[float] | np.ndarray,
    pseudo_count: float = PSI_PSEUDO_COUNT,
) -> float:
    """Population stability index Σ (q - p) ln(q / p) of live q against reference p.

    Both sides get `pseudo_count` added per bin, so a bin empty on one side
    contributes a large but finite term instead of infinity.
    """
    ref, cur = _pair(reference, live)
    if ref.size == 0 or ref.sum() == 0 or cur.sum() == 0:
        return 0.0
    p = (ref + pseudo_count) / (ref.sum() + pseudo_count * ref.size)
    q = (cur + pseudo_count) / (cur.sum() + pseudo_count * cur.size)
    return float(np.sum((q - p) * np.log(q / p)))


def jensen_shannon_distance(
    reference: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray
) -> float:
    """Jensen-Shannon distance (square root of the divergence, base 2): 0 same, 1 disjoint."""
    ref, cur = _pair(reference, live)
    if ref.size == 0 or ref.sum() == 0 or cur.sum() == 0:
        return 0.0
    p, q = ref / ref.sum(), cur / cur.sum()
    m = (p + q) / 2
    divergence = (_kl_bits(p, m) + _kl_bits(q, m)) / 2
    # rounding can leave a hair below 0 or above 1
    return math.sqrt(min(max(divergence, 0.0), 1.0))


def _kl_bits(p: np.ndarray, m: np.ndarray) -> float:
    mask = p > 0  # 0 log 0 = 0; m > 0 wherever p > 0
    return float(np.sum(p[mask] * np.log2(p[mask] / m[mask])))


def chi2_homogeneity(
    reference: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray
) -> tuple[float, float, int]:
    """Pearson's chi-square test that both samples come from one distribution over the bins.

    The 2×k contingency table (reference row, live row) without continuity
    correction; bins empty on both sides are dropped. Returns (statistic,
    p-value, degrees of freedom); fewer than two usable bins is (0, 1, 0).
    """
    ref, cur = _pair(reference, live)
    n_ref, n_live = ref.sum(), cur.sum()
    totals = ref + cur
    keep = totals > 0
    dof = int(keep.sum()) - 1
    if dof < 1 or n_ref == 0 or n_live == 0:
        return 0.0, 1.0, 0
    ref, cur, totals = ref[keep], cur[keep], totals[keep]
    grand = n_ref + n_live
    expected_ref = totals * (n_ref / grand)
    expected_live = totals * (n_live / grand)
    statistic = float(
        np.sum((ref - expected_ref) ** 2 / expected_ref)
        + np.sum((cur - expected_live) ** 2 / expected_live)
    )
    return statistic, chi2_sf(statistic, dof), dof


def binned_ks(
    reference: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov on counts over ordered bins: (D, p-value).

    D is the largest gap between the two empirical CDFs at the bin edges, which
    is at most the D of the raw values. Under "same distribution" it is
    therefore stochastically smaller than the continuous D, and the Kolmogorov
    limit gives a valid, conservative p-value (ties are handled the same way).
    """
    ref, cur = _pair(reference, live)
    n_ref, n_live = ref.sum(), cur.sum()
    if ref.size < 2 or n_ref == 0 or n_live == 0:
        return 0.0, 1.0
    gap = np.abs(np.cumsum(ref)[:-1] / n_ref - np.cumsum(cur)[:-1] / n_live)
    d = float(gap.max())
    effective_n = n_ref * n_live / (n_ref + n_live)
    return d, kolmogorov_sf(math.sqrt(effective_n) * d)


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (the limit of sqrt(n)·D)."""
    if x <= 0:
        return 1.0
    if x < 1.0:
        # the theta-function form converges fast for small x
        total = 0.0
        for k in range(1, 30):
            total += math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * x * x))
        return min(1.0, max(0.0, 1.0 - math.sqrt(2 * math.pi) / x * total))
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2 * k * k * x * x)
        total += term if k % 2 else -term
        if term < 1e-300:
            break
    return min(1.0, max(0.0, 2 * total))


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X > statistic) for a chi-square variable with `dof` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"expected dof >= 1, got {dof}")
    if statistic <= 0:
        return 1.0
    if math.isinf(statistic):
        return 0.0
    return regularized_gamma_q(dof / 2, statistic / 2)


def regularized_gamma_q(a: float, x: float) -> float:
    """Q(a, x) = Γ(a, x) / Γ(a), by series below a + 1, else by continued fraction."""
    if x < a + 1:
        return max(0.0, 1.0 - _gamma_p_series(a, x))
    return _gamma_q_continued_fraction(a, x)


def _gamma_p_series(a: float, x: float) -> float:
    term = total = 1.0 / a
    denominator = a
    for _ in range(_GAMMA_MAX_ITER):
        denominator += 1
        term *= x / denominator
        total += term
        if abs(term) < abs(total) * _GAMMA_EPS:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_q_continued_fraction(a: float, x: float) -> float:
    # modified Lentz evaluation of the continued fraction for Γ(a, x)
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, _GAMMA_MAX_ITER):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < _GAMMA_EPS:
            break
    return min(1.0, math.exp(-x + a * math.log(x) - math.lgamma(a)) * h)


def bonferroni(p_values: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values min(1, m·p): reject where adjusted <= alpha."""
    m = len(p_values)
    return [min(1.0, p * m) for p in p_values]


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (step-up): reject where adjusted <= alpha.

    adjusted p_(i) = min over j >= i of m·p_(j)/j, capped at 1, so rejecting
    adjusted <= q is exactly the BH procedure at false discovery rate q.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        index = order[rank - 1]
        running = min(running, p_values[index] * m / rank)
        adjusted[index] = min(1.0, running)
    return adjusted
