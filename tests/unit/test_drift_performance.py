"""The performance channel against the holdout's errors (ADR 0031): a classifier that is
worse than it evaluated is found from its first labels; one as good stays quiet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from mlbus.driftstats import (
    DriftMonitor,
    MonitorState,
    outcome_error,
    outcome_group,
    performance_reference,
)
from mlbus.profiles import ReferenceProfile
from mlbus.spec import DriftSpec

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SPEC = DriftSpec(prediction_drift=False)  # the error streams only


def _scored(rng: np.random.Generator, n: int, *, collapsed: bool = False) -> tuple[np.ndarray, ...]:
    """A calibrated classifier of a ~3 % class: label ~ Bernoulli(score). Collapsed: the
    labels no longer follow the scores (same base rate), as when the concept changes."""
    scores = rng.beta(0.4, 12.0, n)
    chance = np.full(n, scores.mean()) if collapsed else scores
    return scores, (rng.random(n) < chance).astype(np.float64)


def _monitor(seed: int, holdout: int = 5000) -> DriftMonitor:
    rng = np.random.default_rng(seed)
    scores, labels = _scored(rng, holdout)
    seconds = np.arange(holdout, dtype=np.float64) * 60.0
    reference = performance_reference("brier", labels, scores, seconds, "none", 10)
    profile = ReferenceProfile.from_samples({"x": rng.normal(size=500)})
    profile = profile.model_copy(update={"performance": reference})
    return DriftMonitor("fraud", 1, profile, SPEC, {}, {})


def _feed(monitor: DriftMonitor, scores: np.ndarray, labels: np.ndarray) -> list[int]:
    found = []
    for i, (score, label) in enumerate(zip(scores, labels, strict=True)):
        error = outcome_error("brier", float(label), float(score))
        group = outcome_group("brier", float(label))
        at = T0 + timedelta(seconds=i)
        if monitor.observe_outcome(error, at=at, group=group) is not None:
            found.append(i)
    return found


@pytest.mark.parametrize("seed", range(8))
def test_outcomes_like_the_holdout_raise_no_alarm(seed: int) -> None:
    monitor = _monitor(seed)
    scores, labels = _scored(np.random.default_rng(1000 + seed), 20_000)
    assert _feed(monitor, scores, labels) == []


@pytest.mark.parametrize("seed", range(3))
def test_a_collapsed_ranking_is_found_in_the_positives_from_the_first_labels(seed: int) -> None:
    """No stretch of good live outcomes precedes it: only the holdout is a baseline. The
    pooled Brier score hardly moves (positives are 3 %); the positives' errors do."""
    monitor = _monitor(seed)
    scores, labels = _scored(np.random.default_rng(2000 + seed), 10_000, collapsed=True)
    found = _feed(monitor, scores, labels)
    assert found
    assert found[0] < 6000, found
    verdict = monitor.status().recent[0]
    (result,) = verdict.results
    assert (result.feature, result.kind, verdict.origin) == (
        "error:positive",
        "performance",
        "performance",
    )
    assert result.statistic > result.threshold > 0


def test_status_shows_each_group_against_its_holdout_errors() -> None:
    monitor = _monitor(40)
    scores, labels = _scored(np.random.default_rng(41), 3000)
    _feed(monitor, scores, labels)
    performance = monitor.status().performance
    assert performance is not None
    groups = performance.groups
    assert set(groups) == {"negative", "positive"}
    assert groups["negative"].outcomes + groups["positive"].outcomes == performance.outcomes == 3000
    assert groups["positive"].outcomes == int(labels.sum())
    # a positive's error (1 - score)² is large, a negative's score² small
    assert groups["positive"].reference_error > 0.5 > 0.05 > groups["negative"].reference_error
    assert groups["positive"].reference_outcomes + groups["negative"].reference_outcomes == 5000


def test_the_groups_survive_a_snapshot() -> None:
    scores, labels = _scored(np.random.default_rng(50), 8000, collapsed=True)
    whole = _monitor(51)
    expected = _feed(whole, scores, labels)
    first = _monitor(51)
    _feed(first, scores[:1500], labels[:1500])
    state = MonitorState.model_validate_json(first.snapshot().model_dump_json())
    assert set(state.outcome_adwins) == {"negative", "positive"}
    resumed = DriftMonitor.restore(state, first.profile, SPEC, {}, {})
    got = [1500 + i for i in _feed(resumed, scores[1500:], labels[1500:])]
    assert expected
    assert got == expected


def test_a_state_saved_before_the_groups_starts_the_errors_afresh() -> None:
    """Its ADWIN held a classifier's 0/1 errors: Brier errors after them would read as a
    change, so the rest of the state is restored and the error stream starts over."""
    profile = ReferenceProfile.from_samples({"x": np.random.default_rng(60).normal(size=500)})
    monitor = DriftMonitor("fraud", 1, profile, SPEC, {}, {})
    for i in range(100):
        monitor.observe_outcome(float(i % 2), at=T0)
    saved = monitor.snapshot()
    legacy = saved.model_copy(update={"adwin": saved.outcome_adwins["all"], "outcome_adwins": {}})
    legacy = MonitorState.model_validate_json(legacy.model_dump_json())
    restored = DriftMonitor.restore(legacy, profile, SPEC, {}, {})
    performance = restored.status().performance
    assert performance is not None
    assert performance.outcomes == 0
    assert performance.invalid == saved.invalid_outcomes


@pytest.mark.parametrize("seed", range(4))
def test_frauds_labelled_sooner_than_legitimate_payments_raise_no_alarm(seed: int) -> None:
    """Class-dependent label delay: the first labels of a healthy model are rich in
    positives. Tested by label, the share of each label does not count (a pooled error
    against the holdout alarmed on 24-30 of 30 such streams)."""
    monitor = _monitor(80 + seed)
    rng = np.random.default_rng(90 + seed)
    scores, labels = _scored(rng, 20_000)
    delay = np.where(labels > 0, rng.exponential(200, 20_000), rng.exponential(2000, 20_000))
    order = np.argsort(np.arange(20_000) + delay, kind="stable")
    assert labels[order[:500]].mean() > 2 * labels.mean()  # the first labels: mostly frauds
    assert _feed(monitor, scores[order], labels[order]) == []
