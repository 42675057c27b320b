"""Outcomes of labelled predictions as additive sufficient statistics.

An aggregate holds only sums and counts, so two of them add (partitions,
time buckets) and subtract (an arm's evidence since a moment = now - then).

Classification keeps the scores of positives and of negatives in a histogram
of `BINS` equal bins over [0, 1]. AUC and its DeLong variance follow from the
two histograms in O(BINS), whatever the number of outcomes: a score's placement
value (the share of the other class below it, ties counted half) is the same
for every score of one bin. Scores within one bin count as tied, which moves the
AUC of smooth score distributions by about 1/BINS² — far below its sampling
error at any sample size this is used with — and identically for both arms of
an experiment.

Regression keeps sums of |e| and e² and of their squares: MAE and RMSE with
normal intervals (delta method for the RMSE).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

BINS = 1000
Z95 = 1.959963984540054
_EPS = 1e-15

Task = Literal["classification", "regression"]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Estimate:
    """A metric's point estimate with a 95% interval and the count behind it."""

    name: str
    value: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
        }


def prediction_score(outputs: Mapping[str, Sequence[float]]) -> float | None:
    """The score a prediction's outcome is measured on: P(positive) or the regression value.

    Classifiers from the trainer output `probabilities` [N, 2] (the positive class is
    the last column); regressors `prediction` [N, 1]. Another model's single-valued
    output is taken as its score. The drift service profiles and watches the same score.
    """
    probabilities = outputs.get("probabilities")
    if probabilities:
        value = float(probabilities[-1])
    else:
        chosen = outputs.get("prediction")
        if not chosen:
            single = [v for name, v in outputs.items() if len(v) == 1 and name != "label"]
            chosen = single[0] if len(single) == 1 else None
        if not chosen:
            return None
        value = float(chosen[0])
    return value if math.isfinite(value) else None


def score_bin(score: float) -> int:
    """The histogram bin of a probability (clipped to [0, 1])."""
    if not math.isfinite(score):
        return 0
    return min(BINS - 1, max(0, int(score * BINS)))


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of a proportion."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def auc_with_variance(positives: IntArray, negatives: IntArray) -> tuple[float, float]:
    """AUC and its DeLong variance from binned scores of positives and negatives.

    NaN for both when a class is empty; the variance is NaN with a single member
    of a class (no spread to estimate).
    """
    n_pos = int(positives.sum())
    n_neg = int(negatives.sum())
    if n_pos == 0 or n_neg == 0:
        return (math.nan, math.nan)
    pos = positives.astype(np.float64)
    neg = negatives.astype(np.float64)
    neg_below = np.cumsum(neg) - neg
    pos_above = n_pos - np.cumsum(pos)
    v10 = (neg_below + 0.5 * neg) / n_neg  # per positive of each bin
    v01 = (pos_above + 0.5 * pos) / n_pos  # per negative of each bin
    auc = float((pos * v10).sum() / n_pos)
    if n_pos < 2 or n_neg < 2:
        return (auc, math.nan)
    s10 = float((pos * (v10 - auc) ** 2).sum() / (n_pos - 1))
    s01 = float((neg * (v01 - auc) ** 2).sum() / (n_neg - 1))
    return (auc, s10 / n_pos + s01 / n_neg)


def _mean_interval(total: float, total_sq: float, n: int) -> tuple[float, float, float]:
    """Mean, and the variance of the mean, from a sum and a sum of squares."""
    if n == 0:
        return (math.nan, math.nan, math.nan)
    mean = total / n
    if n < 2:
        return (mean, math.nan, math.nan)
    var = max(0.0, (total_sq - n * mean * mean) / (n - 1))
    return (mean, var, var / n)


def _normal(name: str, value: float, variance: float, n: int, lo: float = -math.inf) -> Estimate:
    if not math.isfinite(variance):
        return Estimate(name, value, math.nan, math.nan, n)
    half = Z95 * math.sqrt(variance)
    return Estimate(name, value, max(lo, value - half), value + half, n)


@dataclass
class ClassificationOutcomes:
    """Labelled binary predictions: score histograms per class, decisions, log-loss sums."""

    threshold: float = 0.5
    positives: IntArray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))
    negatives: IntArray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))
    true_pos: int = 0
    false_pos: int = 0
    true_neg: int = 0
    false_neg: int = 0
    log_loss_sum: float = 0.0
    log_loss_sq: float = 0.0

    task: Literal["classification"] = "classification"

    @property
    def n(self) -> int:
        return self.true_pos + self.false_pos + self.true_neg + self.false_neg

    def add(self, score: float, actual: bool) -> None:
        p = min(1.0 - _EPS, max(_EPS, score)) if math.isfinite(score) else 0.5
        loss = -math.log(p if actual else 1.0 - p)
        self.log_loss_sum += loss
        self.log_loss_sq += loss * loss
        decided = score >= self.threshold
        if actual:
            self.positives[score_bin(score)] += 1
            if decided:
                self.true_pos += 1
            else:
                self.false_neg += 1
        else:
            self.negatives[score_bin(score)] += 1
            if decided:
                self.false_pos += 1
            else:
                self.true_neg += 1

    def add_many(self, scores: npt.NDArray[np.float64], actual: npt.NDArray[np.bool_]) -> None:
        """Vectorised `add` (the benchmark's path)."""
        p = np.clip(np.nan_to_num(scores, nan=0.5), _EPS, 1.0 - _EPS)
        loss = -np.log(np.where(actual, p, 1.0 - p))
        self.log_loss_sum += float(loss.sum())
        self.log_loss_sq += float((loss * loss).sum())
        bins = np.clip((np.nan_to_num(scores) * BINS).astype(np.int64), 0, BINS - 1)
        self.positives += np.bincount(bins[actual], minlength=BINS)
        self.negatives += np.bincount(bins[~actual], minlength=BINS)
        decided = scores >= self.threshold
        self.true_pos += int((decided & actual).sum())
        self.false_neg += int((~decided & actual).sum())
        self.false_pos += int((decided & ~actual).sum())
        self.true_neg += int((~decided & ~actual).sum())

    def _combine(self, other: ClassificationOutcomes, sign: int) -> ClassificationOutcomes:
        return ClassificationOutcomes(
            self.threshold,
            self.positives + sign * other.positives,
            self.negatives + sign * other.negatives,
            self.true_pos + sign * other.true_pos,
            self.false_pos + sign * other.false_pos,
            self.true_neg + sign * other.true_neg,
            self.false_neg + sign * other.false_neg,
            self.log_loss_sum + sign * other.log_loss_sum,
            self.log_loss_sq + sign * other.log_loss_sq,
        )

    def __add__(self, other: ClassificationOutcomes) -> ClassificationOutcomes:
        return self._combine(other, 1)

    def __sub__(self, other: ClassificationOutcomes) -> ClassificationOutcomes:
        return self._combine(other, -1)

    def auc(self) -> tuple[float, float]:
        return auc_with_variance(self.positives, self.negatives)

    def metric(self, name: str) -> tuple[float, float]:
        """(value, variance of the value) of `auc` or `log_loss`: what an experiment tests."""
        if name == "log_loss":
            mean, _, var = _mean_interval(self.log_loss_sum, self.log_loss_sq, self.n)
            return (mean, var)
        return self.auc()

    def estimates(self) -> dict[str, Estimate]:
        n = self.n
        n_pos = self.true_pos + self.false_neg
        auc, auc_var = self.auc()
        accuracy = (self.true_pos + self.true_neg) / n if n else math.nan
        predicted = self.true_pos + self.false_pos
        precision_den = predicted
        recall_den = n_pos
        f1 = (
            2 * self.true_pos / (precision_den + recall_den)
            if precision_den + recall_den
            else math.nan
        )
        log_loss, _, log_loss_var = _mean_interval(self.log_loss_sum, self.log_loss_sq, n)
        auc_est = _normal("auc", auc, auc_var, n)
        if math.isfinite(auc_est.ci_low):
            auc_est = Estimate("auc", auc, auc_est.ci_low, min(1.0, auc_est.ci_high), n)
        return {
            "auc": auc_est,
            "accuracy": Estimate(
                "accuracy", accuracy, *wilson(self.true_pos + self.true_neg, n), n
            ),
            "log_loss": _normal("log_loss", log_loss, log_loss_var, n, lo=0.0),
            "positive_rate": Estimate(
                "positive_rate", n_pos / n if n else math.nan, *wilson(n_pos, n), n
            ),
            "predicted_positive_rate": Estimate(
                "predicted_positive_rate",
                predicted / n if n else math.nan,
                *wilson(predicted, n),
                n,
            ),
            "f1": Estimate("f1", f1, math.nan, math.nan, n),
        }

    def class_counts(self) -> tuple[int, int]:
        """(positives, negatives)."""
        return (self.true_pos + self.false_neg, self.false_pos + self.true_neg)

    def to_json(self) -> dict[str, Any]:
        """Sparse: only the bins that hold scores."""
        pos = np.flatnonzero(self.positives)
        neg = np.flatnonzero(self.negatives)
        return {
            "task": "classification",
            "threshold": self.threshold,
            "pos": [[int(b), int(self.positives[b])] for b in pos],
            "neg": [[int(b), int(self.negatives[b])] for b in neg],
            "tp": self.true_pos,
            "fp": self.false_pos,
            "tn": self.true_neg,
            "fn": self.false_neg,
            "ll": self.log_loss_sum,
            "ll2": self.log_loss_sq,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClassificationOutcomes:
        out = cls(threshold=float(data["threshold"]))
        for b, count in data["pos"]:
            out.positives[int(b)] = int(count)
        for b, count in data["neg"]:
            out.negatives[int(b)] = int(count)
        out.true_pos, out.false_pos = int(data["tp"]), int(data["fp"])
        out.true_neg, out.false_neg = int(data["tn"]), int(data["fn"])
        out.log_loss_sum, out.log_loss_sq = float(data["ll"]), float(data["ll2"])
        return out


@dataclass
class RegressionOutcomes:
    """Labelled numeric predictions: sums of absolute and squared errors and their squares."""

    n: int = 0
    abs_sum: float = 0.0
    abs_sq: float = 0.0
    sq_sum: float = 0.0
    sq_sq: float = 0.0

    task: Literal["regression"] = "regression"

    def add(self, prediction: float, actual: float) -> None:
        error = abs(actual - prediction)
        self.n += 1
        self.abs_sum += error
        self.abs_sq += error * error
        self.sq_sum += error * error
        self.sq_sq += error**4

    def _combine(self, other: RegressionOutcomes, sign: int) -> RegressionOutcomes:
        return RegressionOutcomes(
            self.n + sign * other.n,
            self.abs_sum + sign * other.abs_sum,
            self.abs_sq + sign * other.abs_sq,
            self.sq_sum + sign * other.sq_sum,
            self.sq_sq + sign * other.sq_sq,
        )

    def __add__(self, other: RegressionOutcomes) -> RegressionOutcomes:
        return self._combine(other, 1)

    def __sub__(self, other: RegressionOutcomes) -> RegressionOutcomes:
        return self._combine(other, -1)

    def metric(self, name: str) -> tuple[float, float]:
        """(value, variance) of `mae`, or of the mean squared error for `rmse` (same order)."""
        if name == "rmse":
            mse, _, var = _mean_interval(self.sq_sum, self.sq_sq, self.n)
            return (mse, var)
        mae, _, var = _mean_interval(self.abs_sum, self.abs_sq, self.n)
        return (mae, var)

    def estimates(self) -> dict[str, Estimate]:
        mae, _, mae_var = _mean_interval(self.abs_sum, self.abs_sq, self.n)
        mse, _, mse_var = _mean_interval(self.sq_sum, self.sq_sq, self.n)
        rmse = math.sqrt(mse) if math.isfinite(mse) else math.nan
        # delta method: se(sqrt(m)) = se(m) / (2 sqrt(m))
        rmse_var = mse_var / (4 * mse) if math.isfinite(mse_var) and mse > 0 else math.nan
        return {
            "mae": _normal("mae", mae, mae_var, self.n, lo=0.0),
            "rmse": _normal("rmse", rmse, rmse_var, self.n, lo=0.0),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "task": "regression",
            "n": self.n,
            "abs": self.abs_sum,
            "abs2": self.abs_sq,
            "sq": self.sq_sum,
            "sq2": self.sq_sq,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RegressionOutcomes:
        return cls(
            int(data["n"]),
            float(data["abs"]),
            float(data["abs2"]),
            float(data["sq"]),
            float(data["sq2"]),
        )


Outcomes = ClassificationOutcomes | RegressionOutcomes


def empty_outcomes(task: Task, threshold: float = 0.5) -> Outcomes:
    if task == "classification":
        return ClassificationOutcomes(threshold=threshold)
    return RegressionOutcomes()


def outcomes_from_json(data: dict[str, Any]) -> Outcomes:
    if data.get("task") == "regression":
        return RegressionOutcomes.from_json(data)
    return ClassificationOutcomes.from_json(data)


def merge(parts: list[Outcomes], task: Task, threshold: float = 0.5) -> Outcomes:
    """The sum of `parts` (an empty aggregate when there are none)."""
    total = empty_outcomes(task, threshold)
    for part in parts:
        total = total + part  # type: ignore[operator]
    return total
