"""Experiment verdicts under continuous monitoring: false verdicts and samples to a verdict.

Simulates seeded experiments through the same code the outcomes service runs:
each arm's labelled outcomes go into a `ClassificationOutcomes` (binned score
histograms), and after every `step` new outcomes per arm the experiment is
looked at — `msprt(champion.metric("auc"), challenger.metric("auc"), …)` with
the always-valid p-value carried from look to look, the spec defaults'
burn-in (`min_samples`, `min_class_count` per arm), τ = 0.02 AUC and α = 0.05.

Scores are binormal (negatives x ~ N(0, 1), positives x ~ N(μ, 1), score =
sigmoid(x), AUC = Φ(μ/√2)), prevalence 20%, champion AUC 0.75, both arms the
same size (a 50% canary, or a shadow whose correlation the test does not use).

- A/A (the control): challenger = champion. Any verdict is false. Goal: the
  share of experiments with a verdict within the horizon is ≤ α = 5%.
- AUC +0.02 and +0.05: the median labelled outcomes per arm until the verdict
  (experiments without one by the horizon count as "more than the horizon"),
  the share that reached it, and the share that said "worse" (wrong direction).

Exit status 1 when the false-verdict goal is missed.

    python loadtests/bench_experiments.py [--experiments 200] [--peeks 1000] [--horizon 100000]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import norm

from mlbus.outcomestats import BINS, ClassificationOutcomes, msprt
from mlbus.spec import ExperimentSpec

RESULTS = Path(__file__).parent / "results" / "bench_experiments.json"
console = Console()
CHAMPION_AUC = 0.75
PREVALENCE = 0.2


def separation(auc: float) -> float:
    """μ of the binormal model with this AUC."""
    return float(math.sqrt(2.0) * norm.ppf(auc))


def arm_histograms(
    rng: np.random.Generator, auc: float, n: int, peeks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (positives, negatives) histograms and (tp, tn) at threshold 0.5 per look."""
    actual = rng.random(n) < PREVALENCE
    x = rng.normal(0.0, 1.0, n) + separation(auc) * actual
    scores = 1.0 / (1.0 + np.exp(-x))
    bins = np.minimum((scores * BINS).astype(np.int64), BINS - 1)
    look = np.arange(n) * peeks // n  # the look after which each outcome is first counted
    pos = np.bincount(look[actual] * BINS + bins[actual], minlength=peeks * BINS)
    neg = np.bincount(look[~actual] * BINS + bins[~actual], minlength=peeks * BINS)
    decided = scores >= 0.5
    tp = np.cumsum(np.bincount(look[actual & decided], minlength=peeks))
    tn = np.cumsum(np.bincount(look[~actual & ~decided], minlength=peeks))
    return (
        np.cumsum(pos.reshape(peeks, BINS), axis=0),
        np.cumsum(neg.reshape(peeks, BINS), axis=0),
        tp,
        tn,
    )


def aggregate(pos: np.ndarray, neg: np.ndarray, tp: int, tn: int) -> ClassificationOutcomes:
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    return ClassificationOutcomes(
        positives=pos.astype(np.int64),
        negatives=neg.astype(np.int64),
        true_pos=tp,
        false_neg=n_pos - tp,
        true_neg=tn,
        false_pos=n_neg - tn,
    )


@dataclass
class Run:
    verdict: str
    samples_per_arm: float  # inf when no verdict by the horizon


def experiment(
    seed: int, challenger_auc: float, *, horizon: int, peeks: int, spec: ExperimentSpec
) -> Run:
    rng = np.random.default_rng(seed)
    champ = arm_histograms(rng, CHAMPION_AUC, horizon, peeks)
    chall = arm_histograms(rng, challenger_auc, horizon, peeks)
    p_value = 1.0
    tau = spec.effect_scale or 0.02
    for k in range(peeks):
        a = aggregate(champ[0][k], champ[1][k], int(champ[2][k]), int(champ[3][k]))
        b = aggregate(chall[0][k], chall[1][k], int(chall[2][k]), int(chall[3][k]))
        ready = all(
            arm.n >= spec.min_samples and min(arm.class_counts()) >= spec.min_class_count
            for arm in (a, b)
        )
        result = msprt(
            a.metric("auc"),
            b.metric("auc"),
            metric="auc",
            tau=tau,
            alpha=spec.alpha,
            previous_p=p_value,
            ready=ready,
        )
        p_value = result.p_value
        if result.verdict != "not yet":
            return Run(result.verdict, float(min(a.n, b.n)))
    return Run("not yet", math.inf)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--peeks", type=int, default=1000)
    parser.add_argument("--horizon", type=int, default=100_000, help="outcomes per arm")
    parser.add_argument("--seed", type=int, default=20261204)
    args = parser.parse_args()
    spec = ExperimentSpec(alpha=0.05)
    scenarios = {
        "A/A": CHAMPION_AUC,
        "AUC +0.02": CHAMPION_AUC + 0.02,
        "AUC +0.05": CHAMPION_AUC + 0.05,
    }
    report: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for index, (name, auc) in enumerate(scenarios.items()):
        runs = [
            experiment(
                args.seed + 100_003 * index + i,
                auc,
                horizon=args.horizon,
                peeks=args.peeks,
                spec=spec,
            )
            for i in range(args.experiments)
        ]
        decided = [r for r in runs if r.verdict != "not yet"]
        report[name] = {
            "experiments": len(runs),
            "verdict_rate": len(decided) / len(runs),
            "better_rate": sum(r.verdict == "better" for r in runs) / len(runs),
            "worse_rate": sum(r.verdict == "worse" for r in runs) / len(runs),
            "median_samples_per_arm": statistics.median(r.samples_per_arm for r in runs),
            "median_samples_per_arm_decided": (
                statistics.median(r.samples_per_arm for r in decided) if decided else math.inf
            ),
        }
        console.print(f"{name}: done ({time.perf_counter() - started:.0f} s)")
    false_rate = report["A/A"]["verdict_rate"]
    met = false_rate <= spec.alpha
    table = Table(
        title=f"{args.experiments} seeded experiments per row, {args.peeks} looks each, "
        f"horizon {args.horizon:,} outcomes per arm, α = {spec.alpha}, τ = 0.02, "
        f"champion AUC {CHAMPION_AUC}, prevalence {PREVALENCE:.0%}",
        title_justify="left",
    )
    for column in (
        "scenario",
        "verdicts",
        "better",
        "worse",
        "median n/arm",
        "median n/arm (decided)",
    ):
        table.add_column(column, justify="right")
    for name, row in report.items():
        table.add_row(
            name,
            f"{row['verdict_rate']:.1%}",
            f"{row['better_rate']:.1%}",
            f"{row['worse_rate']:.1%}",
            _count(row["median_samples_per_arm"], args.horizon),
            _count(row["median_samples_per_arm_decided"], args.horizon),
        )
    console.print(table)
    console.print(
        f"false-verdict rate (A/A) {false_rate:.1%} vs goal ≤ {spec.alpha:.0%}: "
        + ("[green]met[/]" if met else "[red]MISSED[/]")
        + f"  (ratio to α: {false_rate / spec.alpha:.2f})"
    )
    for name in ("AUC +0.02", "AUC +0.05"):
        median = report[name]["median_samples_per_arm"]
        console.print(
            f"{name}: median {_count(median, args.horizon)} labelled outcomes per arm to a verdict "
            f"({median / args.horizon:.2f} of the horizon), {report[name]['better_rate']:.0%} "
            "reached 'better'"
            if math.isfinite(median)
            else f"{name}: fewer than half reached a verdict within the horizon"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "args": vars(args),
                "alpha": spec.alpha,
                "tau": 0.02,
                "goal_met": met,
                "scenarios": {
                    k: {n: (v if math.isfinite(v) else None) for n, v in row.items()}
                    for k, row in report.items()
                },
            },
            indent=2,
        )
    )
    return 0 if met else 1


def _count(value: float, horizon: int) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else f"> {horizon:,}"


if __name__ == "__main__":
    sys.exit(main())
