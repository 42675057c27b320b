"""Performance drift against the holdout's errors (ADR 0031): found, and how soon.

A classifier of a rare class (~3 %) is scored on a holdout of `--holdout` rows and
then serves; each served prediction's label arrives and is joined. Its scores are
calibrated (label ~ Bernoulli(score)) until the change, so the holdout and the
served outcomes come from one process. Two score shapes, both AUC ~0.85 (the
demo's v1: 0.80-0.88), 3 % positives:

- beta:     scores ~ Beta(0.4, 12);
- logistic: score = σ(-4.6 + 1.6·z), z ~ N(0, 1) (fewer scores near 0).

Streams (`--outcomes` labelled outcomes each, `--seeds` seeds from `--first-seed`):

- control:   no change: every alarm is false;
- control, frauds labelled first: no change, but a fraud's label comes ~10x sooner
             than a legitimate payment's (exponential delays, means 200 and 2,000
             outcomes), as chargebacks come before "no chargeback" is known: the
             first labels are rich in positives. Every alarm is false;
- collapse:  from the first outcome, labels no longer follow the scores (same base
             rate): a model worse than it evaluated from day one, with no good live
             stretch to compare with (the demo's concept drift, labelled late);
- collapse@800: the same after 800 good outcomes;
- half:      from the first outcome, half the labels follow the scores, half not;
- prior×2:   the base rate doubles, the ranking unchanged (label shift).

Detectors, each fed the same outcomes in order:

- before: what mlbus did before ADR 0031: River's ADWIN over 0/1 errors at
  threshold 0.5, live outcomes only;
- pooled: ADWIN over every outcome's Brier error, the holdout's as its oldest part
  (tried for mlbus and not kept: it alarms when frauds are labelled first);
- mlbus:  the drift monitor with the holdout's errors in its profile: a classifier's
  positives and negatives apart, each anchored on its holdout errors.

Prints per stream and detector: found (of seeds), median outcomes to detection
(counted from the change), and alarms before it.

    python loadtests/bench_drift_performance.py [--seeds 30] [--first-seed 1610]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from rich.table import Table

from _harness import console
from mlbus.driftstats import (
    Adwin,
    DriftMonitor,
    outcome_error,
    outcome_group,
    performance_reference,
)
from mlbus.profiles import ReferenceProfile
from mlbus.spec import DriftSpec

T0 = datetime(2026, 11, 30, tzinfo=UTC)
SPEC = DriftSpec(prediction_drift=False)
STREAMS = ("control", "control, frauds first", "collapse", "collapse@800", "half", "prior×2")
CONTROLS = ("control", "control, frauds first")
DETECTORS = ("before", "pooled", "mlbus")


def scores_of(model: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if model == "beta":
        return rng.beta(0.4, 12.0, n)
    return 1 / (1 + np.exp(4.6 - 1.6 * rng.normal(size=n)))


def labels_of(stream: str, rng: np.random.Generator, scores: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels of the served outcomes and the index of the change (len: none)."""
    n = len(scores)
    follow = rng.random(n) < scores
    unrelated = rng.random(n) < scores.mean()
    if stream in CONTROLS:
        return follow, n
    if stream == "collapse":
        return unrelated, 0
    if stream == "collapse@800":
        return np.where(np.arange(n) >= 800, unrelated, follow), 800
    if stream == "half":
        return np.where(rng.random(n) < 0.5, follow, unrelated), 0
    # prior×2: the odds of each score doubled (ranking kept)
    odds = scores / (1 - scores) * 2
    return rng.random(n) < odds / (1 + odds), 0


def detector(
    name: str, holdout_scores: np.ndarray, holdout_labels: np.ndarray
) -> Callable[[float, float, int], bool]:
    """A function of (score, label, index) → whether a rise was detected there."""
    actual = holdout_labels.astype(np.float64)
    if name == "before":
        adwin = Adwin(SPEC.adwin_delta)
        return lambda s, y, i: _rose(adwin, float((s >= 0.5) != (y >= 0.5)), i)
    if name == "pooled":
        errors = outcome_error("brier", actual, holdout_scores)
        pooled = Adwin(SPEC.adwin_delta, bound="bennett-hoeffding")
        pooled.anchor(len(errors), float(errors.mean()), float(errors.std()), 1.0)
        return lambda s, y, i: _rose(pooled, outcome_error("brier", y, s), i)
    seconds = np.arange(len(actual), dtype=np.float64) * 60.0
    reference = performance_reference("brier", actual, holdout_scores, seconds, "none", 10)
    profile = ReferenceProfile.from_samples({"x": [0.0, 1.0]})
    monitor = DriftMonitor(
        "m", 1, profile.model_copy(update={"performance": reference}), SPEC, {}, {}
    )

    def observe(s: float, y: float, i: int) -> bool:
        error, group = outcome_error("brier", y, s), outcome_group("brier", y)
        return monitor.observe_outcome(error, at=T0 + timedelta(seconds=i), group=group) is not None

    return observe


def _rose(adwin: Adwin, value: float, i: int) -> bool:
    change = adwin.update(value, float(i))
    return change is not None and change.increased


def run(model: str, stream: str, seed: int, holdout: int, outcomes: int) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    held = scores_of(model, rng, holdout)
    held_labels = rng.random(holdout) < held
    served = scores_of(model, rng, outcomes)
    labels, _ = labels_of(stream, rng, served)
    if stream == "control, frauds first":  # the order the labels arrive in
        delay = np.where(labels, rng.exponential(200, outcomes), rng.exponential(2000, outcomes))
        order = np.argsort(np.arange(outcomes) + delay, kind="stable")
        served, labels = served[order], labels[order]
    found: dict[str, list[int]] = {}
    for name in DETECTORS:
        observe = detector(name, held, held_labels)
        found[name] = [
            i
            for i, (s, y) in enumerate(zip(served, labels, strict=True))
            if observe(s, float(y), i)
        ]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--first-seed", type=int, default=1610)
    parser.add_argument("--holdout", type=int, default=5000, help="holdout rows")
    parser.add_argument("--outcomes", type=int, default=20_000, help="labelled outcomes per stream")
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for model in ("beta", "logistic"):
        span = f"seeds {seeds.start}–{seeds.stop - 1}"
        table = Table(title=f"{model} model: {args.holdout:,} holdout rows, {span}")
        for column in ("stream", "detector"):
            table.add_column(column)
        for column in ("found", "median", "early"):
            table.add_column(column, justify="right")
        for stream in STREAMS:
            results = [run(model, stream, seed, args.holdout, args.outcomes) for seed in seeds]
            change = 800 if stream == "collapse@800" else 0
            change = args.outcomes if stream in CONTROLS else change
            for name in DETECTORS:
                early = sum(sum(1 for i in r[name] if i < change) for r in results)
                delays = [next((i - change for i in r[name] if i >= change), None) for r in results]
                hits = [d for d in delays if d is not None]
                median = f"{np.median(hits):,.0f}" if hits else "—"
                shown = "—" if stream in CONTROLS else f"{len(hits)}/{len(results)}"
                table.add_row(
                    stream if name == DETECTORS[0] else "", name, shown, median, str(early)
                )
            table.add_section()
        console.print(table)
    console.print(
        "found: streams with a detection at or after the change (control: none can be); "
        "median: labelled outcomes from the change to the first detection; early: "
        "detections before the change (control: every detection), all seeds together."
    )


if __name__ == "__main__":
    main()
