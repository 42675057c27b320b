"""The experiment verdict: a mixture sequential probability ratio test (mSPRT).

Champion and challenger each give an estimate of the experiment's metric (AUC,
log-loss, MAE, MSE) with its variance. Their difference D (signed so that a
positive D means the challenger is better) is, for large samples, normal with
mean θ and variance V = V_champion + V_challenger, and as the samples grow it
behaves like a Gaussian random walk. Against H0: θ = 0 the mSPRT of Johari et
al. ("Always valid inference", 2017/2022) mixes the alternatives θ ~ N(0, τ²):

    Λ = sqrt(V / (V + τ²)) · exp(τ² D² / (2 V (V + τ²)))

Λ is (asymptotically) a nonnegative martingale under H0, so by Ville's
inequality P(Λ ever ≥ 1/α) ≤ α: looking after every label costs no error
rate. The always-valid p-value is the running minimum of 1/Λ; the verdict is
**better** or **worse** (the sign of D) once it is ≤ α, else **not yet**.

Inverting the same mixture gives an always-valid confidence sequence for θ.

Before a first look the test waits for `min_samples` outcomes per arm (and,
for AUC, `min_class_count` of each class per arm): the plug-in variance of a
tiny sample is too noisy for the normal approximation. The benchmark in
`loadtests/bench_experiments.py` measures the false-verdict rate this gives.

When both arms score the same events (a shadow), their estimates are
positively correlated and the true variance of D is V − 2·cov < V: using V is
conservative (valid, a little slower). See docs/adr/0024.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["better", "worse", "not yet"]

HIGHER_IS_BETTER_TESTED: dict[str, bool] = {
    "auc": True,
    "log_loss": False,
    "mae": False,
    "rmse": False,  # tested on the mean squared error: same order as the RMSE
}


def experiment_metric(task: str, spec_metric: str) -> str:
    """Which metric an experiment tests: the spec's, where one can be tested sequentially.

    f1 (a ratio of counts at a threshold) has no simple variance here: AUC stands in.
    """
    if task == "regression":
        return spec_metric if spec_metric in ("mae", "rmse") else "mae"
    return spec_metric if spec_metric in ("auc", "log_loss") else "auc"


def log_mixture_ratio(difference: float, variance: float, tau2: float) -> float:
    """log Λ of the normal-mixture SPRT for H0: θ = 0."""
    return 0.5 * math.log(variance / (variance + tau2)) + tau2 * difference * difference / (
        2.0 * variance * (variance + tau2)
    )


def confidence_radius(variance: float, tau2: float, alpha: float) -> float:
    """Half-width of the always-valid (1 − α) confidence sequence around D."""
    return math.sqrt(
        2.0
        * variance
        * (variance + tau2)
        / tau2
        * (math.log(1.0 / alpha) + 0.5 * math.log((variance + tau2) / variance))
    )


@dataclass(frozen=True)
class SequentialResult:
    """One look at an experiment."""

    verdict: Verdict
    difference: float
    """challenger − champion on the metric, signed so that positive is better."""
    variance: float
    p_value: float
    """always-valid: the running minimum of 1/Λ, never above the previous look's."""
    ci_low: float
    ci_high: float
    ready: bool
    """False while an arm has too few outcomes to look."""


def msprt(
    champion: tuple[float, float],
    challenger: tuple[float, float],
    *,
    metric: str,
    tau: float,
    alpha: float,
    previous_p: float = 1.0,
    ready: bool = True,
) -> SequentialResult:
    """Look once: (value, variance of the value) per arm → verdict, p-value, interval."""
    (champ, champ_var), (chall, chall_var) = champion, challenger
    sign = 1.0 if HIGHER_IS_BETTER_TESTED.get(metric, True) else -1.0
    difference = sign * (chall - champ)
    variance = champ_var + chall_var
    usable = (
        ready and math.isfinite(difference) and math.isfinite(variance) and variance > 0 and tau > 0
    )
    if not usable:
        shown = difference if math.isfinite(difference) else math.nan
        return SequentialResult(
            "not yet", shown, variance, previous_p, math.nan, math.nan, ready=False
        )
    tau2 = tau * tau
    log_lambda = log_mixture_ratio(difference, variance, tau2)
    p_now = 1.0 if log_lambda <= 0 else math.exp(-log_lambda)
    p_value = min(previous_p, p_now)
    radius = confidence_radius(variance, tau2, alpha)
    verdict: Verdict = "not yet"
    if p_value <= alpha:
        verdict = "better" if difference > 0 else "worse"
    return SequentialResult(
        verdict, difference, variance, p_value, difference - radius, difference + radius, True
    )
