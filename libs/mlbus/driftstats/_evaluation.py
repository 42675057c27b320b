"""A window's tests: PSI and binned KS on numeric channels, chi-square and Jensen-Shannon on
categorical ones, each against the reference counts; p-values corrected together (ADR 0016)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlbus.driftstats import _stats
from mlbus.driftstats._channels import Channel
from mlbus.driftstats._models import Correction
from mlbus.events import DriftTestResult
from mlbus.spec import DriftSpec


def run_tests(
    channels: Sequence[Channel], spec: DriftSpec, *, require_samples: bool
) -> list[tuple[Channel, DriftTestResult, int]]:
    """Every configured test on the channels' live counts, p-values corrected together.

    A test runs only on a channel holding `spec.min_samples` values (when
    `require_samples`; status() shows scores of a window still filling).
    """
    raw: list[tuple[Channel, str, float, float | None, float, int]] = []
    for channel in channels:
        live = np.asarray(channel.counts, dtype=np.float64)
        for test in channel.tests:
            samples = channel.present if test == "ks" else channel.samples
            if samples == 0 or (require_samples and samples < spec.min_samples):
                continue
            if test == "ks":
                d, p = _stats.binned_ks(channel.reference[:-1], live[:-1])
                raw.append((channel, test, d, p, spec.alpha, samples))
            elif test == "chi2":
                statistic, p, _ = _stats.chi2_homogeneity(channel.reference, live)
                raw.append((channel, test, statistic, p, spec.alpha, samples))
            elif test == "psi":
                score = _stats.psi(channel.reference, live)
                raw.append((channel, test, score, None, spec.psi_threshold, samples))
            else:
                distance = _stats.jensen_shannon_distance(channel.reference, live)
                raw.append((channel, test, distance, None, spec.jensen_shannon_threshold, samples))
    p_values = [entry[3] for entry in raw if entry[3] is not None]
    adjusted = iter(correct(p_values, spec.correction))
    results: list[tuple[Channel, DriftTestResult, int]] = []
    for channel, test, statistic, raw_p, threshold, samples in raw:
        corrected = None if raw_p is None else next(adjusted)
        drifted = statistic > threshold if corrected is None else corrected <= threshold
        result = DriftTestResult(
            feature=channel.name,
            kind=channel.kind,
            test=test,
            statistic=statistic,
            p_value=corrected,
            threshold=threshold,
            drifted=drifted,
        )
        results.append((channel, result, samples))
    return results


def correct(p_values: list[float], correction: Correction) -> list[float]:
    if correction == "bonferroni":
        return _stats.bonferroni(p_values)
    if correction == "benjamini-hochberg":
        return _stats.benjamini_hochberg(p_values)
    return list(p_values)
