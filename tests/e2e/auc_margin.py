"""How far apart two measured AUCs must be before a test may call them different.

An AUC measured on a finite sample of labels varies from run to run. Hanley and
McNeil (Radiology 143:29-36, 1982) give its standard error from the AUC and the
number of positives and negatives alone:

    SE(A)² = (A(1 - A) + (n₁ - 1)(Q₁ - A²) + (n₀ - 1)(Q₂ - A²)) / (n₁ n₀)
    Q₁ = A / (2 - A),   Q₂ = 2A² / (1 + A)

Two AUCs measured on disjoint parts of the stream are independent, so the
standard error of their difference is the root of the sum of the squares. A
test that says "B is better than A" asserts B - A > Z · SE(B - A): the margin
follows from the label counts of the run, not from a threshold tuned on past
runs. Z = 3 is the confidence asked for (a one-sided 0.13 % chance that noise
alone would pass a claim with no effect behind it).
"""

from __future__ import annotations

import math
from typing import Protocol

Z = 3.0


class Labelled(Protocol):
    """What a measured part of the stream gives (`mlbus.demo.Segment` has these)."""

    @property
    def labelled(self) -> int: ...

    @property
    def positives(self) -> int: ...

    @property
    def auc(self) -> float | None: ...


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley–McNeil standard error of an AUC measured on `positives` and `negatives`."""
    if not 0.0 <= auc <= 1.0:
        raise ValueError(f"an AUC is in [0, 1], got {auc}")
    if positives < 1 or negatives < 1:
        raise ValueError(f"an AUC needs both classes, got {positives} and {negatives}")
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    variance = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))


def segment_standard_error(segment: Labelled) -> float:
    assert segment.auc is not None, "the segment has no AUC (a single class, or no labels)"
    negatives = segment.labelled - segment.positives
    return auc_standard_error(segment.auc, segment.positives, negatives)


def difference_margin(better: Labelled, worse: Labelled, z: float = Z) -> float:
    """How much `better.auc` must exceed `worse.auc` for the difference to be more than
    noise at `z` standard errors (the two parts of the stream are independent)."""
    return z * math.hypot(segment_standard_error(better), segment_standard_error(worse))


def chance_margin(segment: Labelled, z: float = Z) -> float:
    """How much `segment.auc` must exceed 0.5 to be better than guessing at `z` standard
    errors (the standard error of an AUC of 0.5 on the same label counts)."""
    negatives = segment.labelled - segment.positives
    return z * auc_standard_error(0.5, segment.positives, negatives)
