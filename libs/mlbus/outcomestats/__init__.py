"""Statistics of labelled outcomes: additive aggregates and the sequential experiment test.

    outcomes = ClassificationOutcomes(threshold=0.5)
    outcomes.add(score, actual)                  # or add_many(scores, labels)
    outcomes.estimates()["auc"]                  # Estimate(value, ci_low, ci_high, n)
    since = outcomes - earlier                   # aggregates add and subtract
    msprt(champion.metric("auc"), challenger.metric("auc"), metric="auc", tau=0.02, alpha=0.05)

Shared by the outcomes service and its benchmark (docs/adr/0024).
"""

from mlbus.outcomestats._aggregate import (
    BINS,
    ClassificationOutcomes,
    Estimate,
    Outcomes,
    RegressionOutcomes,
    auc_with_variance,
    empty_outcomes,
    merge,
    outcomes_from_json,
    prediction_score,
    score_bin,
    wilson,
)
from mlbus.outcomestats._sequential import (
    HIGHER_IS_BETTER_TESTED,
    SequentialResult,
    Verdict,
    confidence_radius,
    experiment_metric,
    log_mixture_ratio,
    msprt,
)

__all__ = [
    "BINS",
    "HIGHER_IS_BETTER_TESTED",
    "ClassificationOutcomes",
    "Estimate",
    "Outcomes",
    "RegressionOutcomes",
    "SequentialResult",
    "Verdict",
    "auc_with_variance",
    "confidence_radius",
    "empty_outcomes",
    "experiment_metric",
    "log_mixture_ratio",
    "merge",
    "msprt",
    "outcomes_from_json",
    "prediction_score",
    "score_bin",
    "wilson",
]
