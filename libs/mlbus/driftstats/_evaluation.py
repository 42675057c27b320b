"""A window's tests: PSI and binned KS on numeric channels, chi-square and Jensen-Shannon on
categorical ones, each against the reference counts; p-values corrected together (ADR 0016).

Against a seasonal reference the counts are the mix of the phases the window holds; with
dependent data (κ > 1) both sides count n values as n/κ; PSI and Jensen-Shannon, effect
sizes without a p-value, drift only where chi-square on the same bins is significant too,
so a noisy window of dependent values cannot pass a fixed effect threshold (ADR 0022)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlbus.driftstats import _stats
from mlbus.driftstats._channels import Channel
from mlbus.driftstats._entities import EntitySketch, design_effect
from mlbus.driftstats._models import Correction
from mlbus.events import DriftTestResult
from mlbus.spec import DriftSpec


def run_tests(
    channels: Sequence[Channel],
    spec: DriftSpec,
    phase_rows: np.ndarray | None,
    entities: EntitySketch | None = None,
    *,
    require_samples: bool,
) -> list[tuple[Channel, DriftTestResult, int]]:
    """Every configured test on the channels' live counts, p-values corrected together.

    A test runs only on a channel holding `spec.min_samples` values (when
    `require_samples`; status() shows scores of a window still filling).
    `phase_rows` is the window's rows per phase (seasonal references). With
    `entities`, a channel whose values are alike within an entity (its reference
    ICC) counts the window's n rows as n/deff (ADR 0022, _entities).
    """
    # (channel, test, statistic, raw p-value, threshold, samples, significant for PSI/JS)
    raw: list[tuple[Channel, str, float, float | None, float, int, bool]] = []
    # the window's m̃, read once for all channels (a sort of up to 2k hashes above k entities)
    cluster_size = 1.0 if entities is None or not entities.rows else entities.cluster_size
    for channel in channels:
        observed = np.asarray(channel.counts, dtype=np.float64)
        expected = channel.expected(phase_rows)
        live, reference = observed, expected  # what the p-values see
        clustering = design_effect(channel.icc, cluster_size)
        if channel.kappa != 1.0 or clustering != 1.0:
            live = observed / max(channel.kappa, clustering)
            reference = expected / channel.kappa
        significant: bool | None = None  # chi-square on these bins, for PSI and JS
        for test in channel.tests:
            samples = channel.present if test == "ks" else channel.samples
            if samples == 0 or (require_samples and samples < spec.min_samples):
                continue
            if test == "ks":
                d, p = _stats.binned_ks(reference[:-1], live[:-1])
                raw.append((channel, test, d, p, spec.alpha, samples, True))
            elif test == "chi2":
                statistic, p, _ = _stats.chi2_homogeneity(reference, live)
                raw.append((channel, test, statistic, p, spec.alpha, samples, True))
            else:
                if significant is None:
                    significant = _stats.chi2_homogeneity(reference, live)[1] <= spec.alpha
                if test == "psi":
                    score, threshold = _stats.psi(expected, observed), spec.psi_threshold
                else:
                    score = _stats.jensen_shannon_distance(expected, observed)
                    threshold = spec.jensen_shannon_threshold
                raw.append((channel, test, score, None, threshold, samples, significant))
    p_values = [entry[3] for entry in raw if entry[3] is not None]
    adjusted = iter(correct(p_values, spec.correction))
    results: list[tuple[Channel, DriftTestResult, int]] = []
    for channel, test, statistic, raw_p, threshold, samples, significant in raw:
        corrected = None if raw_p is None else next(adjusted)
        drifted = (
            statistic > threshold and significant if corrected is None else corrected <= threshold
        )
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
