"""ADWIN2: finds an abrupt change in a Bernoulli error stream, stays quiet without one."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlbus.driftstats import Adwin, AdwinState
from mlbus.driftstats._adwin import Bound, _exponent, _tight_epsilon


def _bernoulli(seed: int, rates: list[tuple[float, int]]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([(rng.random(n) < p).astype(np.float64) for p, n in rates])


def _detections(adwin: Adwin, values: np.ndarray) -> list[int]:
    return [i for i, v in enumerate(values) if adwin.update(float(v), float(i)) is not None]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_abrupt_rise_in_the_error_rate_is_detected_soon_after_the_change(seed: int) -> None:
    stream = _bernoulli(seed, [(0.1, 5000), (0.4, 2000)])
    adwin = Adwin(0.002)
    found = _detections(adwin, stream)
    assert found, "no change detected"
    assert all(i >= 5000 for i in found), f"false alarm before the change: {found}"
    assert found[0] - 5000 < 300  # 0.1 → 0.4 is large: a few hundred errors at most
    assert len(found) == 1  # the window starts afresh after a change: one alarm per change
    # after the cut the window holds the new regime only
    assert adwin.mean == pytest.approx(0.4, abs=0.05)
    assert adwin.width == 7000 - 1 - found[0]


def test_the_change_reports_which_way_the_mean_moved() -> None:
    adwin = Adwin(0.002)
    changes = [
        change
        for i, v in enumerate(_bernoulli(4, [(0.4, 3000), (0.05, 2000)]))
        if (change := adwin.update(float(v), float(i))) is not None
    ]
    assert changes
    assert not changes[0].increased
    assert changes[0].mean_old > changes[0].mean_recent
    assert changes[0].n_old + changes[0].n_recent <= 5000
    assert changes[0].since == 0.0  # the oldest element's time


@pytest.mark.parametrize("seed", range(5))
def test_a_stationary_bernoulli_stream_raises_no_alarm(seed: int) -> None:
    adwin = Adwin(0.002)
    assert _detections(adwin, _bernoulli(100 + seed, [(0.2, 20_000)])) == []
    assert adwin.width == 20_000  # nothing was ever cut
    assert adwin.mean == pytest.approx(0.2, abs=0.02)


def test_the_histogram_stays_logarithmic_and_the_totals_exact() -> None:
    adwin = Adwin(0.002)
    values = np.random.default_rng(5).random(10_000)
    for i, v in enumerate(values):
        adwin.update(float(v), float(i))
    state = adwin.snapshot()
    buckets = sum(len(row) for row in state.rows)
    assert buckets <= 5 * math.ceil(math.log2(10_000) + 1)
    assert sum(len(row) << level for level, row in enumerate(state.rows)) == adwin.width
    assert adwin.total == pytest.approx(values[-adwin.width :].sum())
    assert adwin.variance / adwin.width == pytest.approx(values[-adwin.width :].var(), rel=1e-6)


def test_snapshot_and_restore_continue_exactly() -> None:
    stream = _bernoulli(9, [(0.1, 3000), (0.5, 1500)])
    straight = Adwin(0.002)
    expected = _detections(straight, stream)
    first = Adwin(0.002)
    for i, v in enumerate(stream[:2017]):
        first.update(float(v), float(i))
    state = AdwinState.model_validate_json(first.snapshot().model_dump_json())
    resumed = Adwin.restore(state)
    rest = [
        i
        for i in range(2017, len(stream))
        if resumed.update(float(stream[i]), float(i)) is not None
    ]
    assert rest == expected
    assert resumed.snapshot() == straight.snapshot()


def test_non_finite_values_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        Adwin().update(math.nan)


def _uniform_shift(seed: int, shift: float, at: int = 5000, n: int = 7000) -> np.ndarray:
    """Bounded values like a channel's reference-CDF positions, shifted at `at`."""
    values = np.random.default_rng(seed).random(n) - 0.5
    values[at:] = np.clip(values[at:] + shift, -0.5, 0.5)
    return values


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("looser", "tighter"), [("river", "bernstein"), ("bernstein", "bennett-hoeffding")]
)
def test_a_tighter_bound_never_cuts_later(seed: int, looser: Bound, tighter: Bound) -> None:
    # the exact Bernstein root's ε is below River's for every split, and Bennett–Hoeffding's
    # below Bernstein's; both see the same window until the first cut
    stream = _uniform_shift(seed, 0.1)
    late = _detections(Adwin(0.002, clock=16, bound=looser), stream)
    soon = _detections(Adwin(0.002, clock=16, bound=tighter), stream)
    assert late
    assert soon
    assert 5000 <= soon[0] <= late[0]


def test_the_exact_bernstein_root_is_sooner_on_a_short_recent_window() -> None:
    delays = []
    for seed in range(6):
        stream = _uniform_shift(seed, 0.1)
        river = _detections(Adwin(0.002, clock=16), stream)[0]
        exact = _detections(Adwin(0.002, clock=16, bound="bernstein"), stream)[0]
        delays.append((river - 5000, exact - 5000))
    assert sum(e for _, e in delays) < 0.95 * sum(r for r, _ in delays), delays


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("bound", "delta", "seeds"), [("bernstein", 0.002, 200), ("bennett-hoeffding", 0.001, 400)]
)
def test_the_exact_bounds_stay_quiet_on_stationary_streams(
    bound: Bound, delta: float, seeds: int, seed: int
) -> None:
    adwin = Adwin(delta, clock=16, bound=bound)
    assert _detections(adwin, np.random.default_rng(seeds + seed).random(30_000) - 0.5) == []
    assert adwin.width == 30_000
    errors = Adwin(0.002, bound=bound)
    assert _detections(errors, _bernoulli(seeds + 100 + seed, [(0.1, 30_000)])) == []


@pytest.mark.parametrize("bound", ["bernstein", "bennett-hoeffding"])
def test_the_bound_survives_a_snapshot_and_old_states_keep_rivers(bound: Bound) -> None:
    adwin = Adwin(0.001, clock=16, bound=bound)
    for i, v in enumerate(_uniform_shift(1, 0.0, n=500)):
        adwin.update(float(v), float(i))
    state = AdwinState.model_validate_json(adwin.snapshot().model_dump_json())
    assert Adwin.restore(state).bound == bound
    legacy = state.model_dump(mode="json")
    del legacy["bound"]  # written before the bound was a choice
    assert Adwin.restore(AdwinState.model_validate(legacy)).bound == "river"


# ── the Bennett-Hoeffding bound ──────────────────────────────────────────────


def _two_point_tail(variance: float, scale: float, old: int, recent: int, gap: float) -> float:
    """Exact P(mean(recent) - mean(old) >= gap) for values of the extremal two-point law."""
    p, low = variance / (variance + scale * scale), variance / scale

    def means(n: int) -> tuple[np.ndarray, np.ndarray]:
        k = np.arange(n + 1)
        pmf = np.array([math.comb(n, int(j)) for j in k]) * p**k * (1 - p) ** (n - k)
        return (k * scale - (n - k) * low) / n, pmf

    x0, p0 = means(old)
    x1, p1 = means(recent)
    differences = x1[:, None] - x0[None, :]
    return float((p1[:, None] * p0[None, :])[differences >= gap - 1e-12].sum())


@given(
    ratio=st.floats(0.05, 1.0),  # σ / R
    old=st.integers(1, 40),
    recent=st.integers(1, 40),
    gap=st.floats(0.01, 3.0),  # in units of the Gaussian σ of the difference
)
@settings(max_examples=200, deadline=None)
def test_the_bennett_hoeffding_exponent_bounds_the_exact_tail_of_the_extremal_law(
    ratio: float, old: int, recent: int, gap: float
) -> None:
    scale = 0.45
    variance = (ratio * scale) ** 2
    gap *= math.sqrt(variance * (1 / old + 1 / recent))
    exponent = _exponent(gap, variance, scale, old, recent, None)
    # a Chernoff bound: never below the exact tail of the law it is extremal for ...
    assert _two_point_tail(variance, scale, old, recent, gap) <= math.exp(-exponent) * (1 + 1e-9)
    # ... and never looser than Bernstein's: exp(-gap² / (2·(V + M·gap/3)))
    bernstein = gap**2 / (
        2 * (variance * (1 / old + 1 / recent) + scale * gap / 3 / min(old, recent))
    )
    assert exponent >= bernstein * (1 - 1e-9)


@given(
    variance=st.floats(0.001, 0.2),
    old=st.integers(5, 10**7),
    recent=st.integers(5, 10**4),
    delta_prime=st.floats(3.0, 20.0),
)
@settings(max_examples=200, deadline=None)
def test_the_tight_epsilon_lies_between_the_gaussian_and_the_bernstein_root(
    variance: float, old: int, recent: int, delta_prime: float
) -> None:
    scale = 0.45
    spread = 2 * variance * delta_prime * (1 / old + 1 / recent)
    reach = scale * delta_prime / 3 / min(old, recent)
    bernstein = reach + math.sqrt(reach * reach + spread)
    epsilon = _tight_epsilon(variance, scale, old, recent, delta_prime, bernstein)
    assert math.sqrt(spread) <= epsilon <= bernstein
    assert _exponent(epsilon, variance, scale, old, recent, None) >= delta_prime * (1 - 1e-9)
    if epsilon > math.sqrt(spread):  # the least such gap: a little less is not enough
        below = _exponent(epsilon * (1 - 1e-6), variance, scale, old, recent, None)
        assert below <= delta_prime


def test_the_bennett_hoeffding_bound_is_sooner_on_a_short_recent_window() -> None:
    delays = []
    for seed in range(6):
        stream = _uniform_shift(seed, 0.15)
        bernstein = _detections(Adwin(0.002, clock=16, bound="bernstein"), stream)[0]
        change = None
        adwin = Adwin(0.002, clock=16, bound="bennett-hoeffding")
        for i, v in enumerate(stream):
            change = adwin.update(float(v), float(i))
            if change is not None:
                break
        assert change is not None
        assert abs(change.mean_recent - change.mean_old) > change.epsilon > 0
        delays.append((bernstein - 5000, i - 5000))
    assert sum(t for _, t in delays) < 0.9 * sum(b for b, _ in delays), delays


# ── a reference as the window's oldest part (ADR 0031) ───────────────────────


def _anchored(reference: np.ndarray, delta: float = 0.002) -> Adwin:
    adwin = Adwin(delta, bound="bennett-hoeffding")
    adwin.anchor(len(reference), float(reference.mean()), float(reference.std()), 1.0)
    return adwin


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_a_stream_worse_than_its_reference_from_the_start_is_found_only_when_anchored(
    seed: int,
) -> None:
    """Live errors at 0.3 from the first one on: nothing changes within the live stream, so
    a plain ADWIN never cuts; against a reference at 0.1 the first checks do."""
    reference = _bernoulli(seed, [(0.1, 5000)])
    live = _bernoulli(seed + 100, [(0.3, 3000)])
    assert _detections(Adwin(0.002), live) == []
    anchored = _anchored(reference)
    found = _detections(anchored, live)
    assert found
    assert found[0] < 200, found
    assert anchored.reference is None  # a cut drops the oldest part first: the reference


@pytest.mark.parametrize("seed", range(20, 25))
def test_a_stream_like_its_reference_raises_no_alarm_when_anchored(seed: int) -> None:
    reference = _bernoulli(seed, [(0.05, 4000)])
    adwin = _anchored(reference)
    assert _detections(adwin, _bernoulli(seed + 100, [(0.05, 20_000)])) == []
    assert adwin.reference == (4000, float(reference.sum()), pytest.approx(4000 * reference.var()))
    assert adwin.width == 20_000


def test_the_reference_is_tested_against_every_live_suffix() -> None:
    """A change after a long stable live stretch is found, as without a reference."""
    reference = _bernoulli(30, [(0.1, 3000)])
    live = _bernoulli(31, [(0.1, 6000), (0.4, 2000)])
    found = _detections(_anchored(reference), live)
    assert found
    assert 6000 <= found[0] < 6300, found


def test_an_anchored_adwin_survives_a_snapshot() -> None:
    reference = _bernoulli(32, [(0.1, 3000)])
    stream = _bernoulli(33, [(0.1, 700), (0.3, 1000)])
    whole = _anchored(reference)
    expected = _detections(whole, stream)
    first = _anchored(reference)
    _detections(first, stream[:500])
    state = AdwinState.model_validate_json(first.snapshot().model_dump_json())
    assert state.reference == first.reference
    resumed = Adwin.restore(state)
    got = [500 + i for i in _detections(resumed, stream[500:])]
    assert expected
    assert got == expected


def test_a_stream_better_than_its_reference_keeps_it_and_a_later_rise_is_found() -> None:
    """While the reference is held only a rise cuts: errors below the holdout's are no
    reason to forget it, and a later rise is still measured from it."""
    reference = _bernoulli(34, [(0.2, 3000)])
    live = _bernoulli(35, [(0.05, 4000), (0.35, 1500)])
    anchored = _anchored(reference)
    found = _detections(anchored, live)
    assert found
    assert 4000 <= found[0] < 4300, found
    plain = Adwin(0.002, bound="bennett-hoeffding")
    assert _detections(plain, live[:4000]) == []  # nothing changes within the live stream
    kept = _anchored(reference)
    assert _detections(kept, live[:4000]) == []  # far below the reference: no cut
    assert kept.reference is not None


def test_a_saved_reference_of_no_values_is_refused() -> None:
    state = _anchored(_bernoulli(36, [(0.1, 100)])).snapshot().model_dump()
    state["reference"] = (0, 0.0, 0.0)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        AdwinState.model_validate(state)


def test_anchor_refuses_an_empty_or_non_finite_reference() -> None:
    with pytest.raises(ValueError, match="n >= 1"):
        Adwin().anchor(0, 0.1, 0.1, 1.0)
    with pytest.raises(ValueError, match="finite"):
        Adwin().anchor(10, math.nan, 0.1, 1.0)
