"""Promotion gates: does a new version take `champion` automatically?

The rule is the spec's (`ModelSpec.gate_failures`): the candidate must reach
the absolute minimums and beat the champion's metric by `min_improvement`.
Fairness needs both measured on the same evaluation window, so the trainer
sends the champion's metrics on its window (`champion_metrics` for
`champion_version`). When it did not, or the champion moved since, the
champion's metrics from its own registration are used and the reason says so.

A version that passes takes `champion`, or `canary` when the spec says
`gates.promote_to: canary` and there is a champion: an experiment on its
outcomes then decides (ADR 0024). The first version always becomes champion.

Models that are not the spec's model (brought in with `mlbus models register`)
have no gates: they become champion only when someone says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mlbus.spec import ModelSpec

CHAMPION = "champion"
CANARY = "canary"


@dataclass(frozen=True)
class Champion:
    version: int
    registered_metrics: Mapping[str, float]


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reason: str
    compared_with_version: int | None
    alias: str = CHAMPION
    """The alias a version that passed takes."""


def decide(
    spec: ModelSpec | None,
    model: str,
    candidate: Mapping[str, float],
    champion: Champion | None,
    *,
    champion_version: int | None = None,
    champion_metrics: Mapping[str, float] | None = None,
) -> GateVerdict:
    """Whether `candidate` may replace `champion` as the model's champion, and why."""
    if spec is None or spec.name != model:
        return GateVerdict(
            False,
            f"no promotion gates for {model!r} (not the spec's model): "
            "promote it explicitly with a reason",
            None,
        )
    if champion is None:
        failures = spec.gate_failures(candidate, None)
        if failures:
            return GateVerdict(False, "gates failed: " + "; ".join(failures), None)
        return GateVerdict(
            True, f"first version to pass the gates ({_metric(spec, candidate)})", None
        )

    same_window = champion_metrics is not None and champion_version == champion.version
    baseline = dict(champion_metrics or {}) if same_window else dict(champion.registered_metrics)
    where = (
        "on the same evaluation window"
        if same_window
        else "against the champion's registration metrics (no same-window evaluation given)"
    )
    failures = spec.gate_failures(candidate, baseline)
    if spec.metric not in baseline and spec.metric in candidate:
        where += f"; the champion has no {spec.metric}"
    if failures:
        return GateVerdict(
            False,
            f"stays a candidate: {'; '.join(failures)} (v{champion.version} compared {where})",
            champion.version,
        )
    shown = (
        f"{spec.metric} {candidate[spec.metric]:.4f} vs {baseline[spec.metric]:.4f}"
        if spec.metric in baseline and spec.metric in candidate
        else _metric(spec, candidate)
    )
    reason = (
        f"beats champion v{champion.version}: {shown}, min_improvement "
        f"{spec.gates.min_improvement} ({where})"
    )
    if spec.gates.promote_to == CANARY:
        return GateVerdict(
            True,
            f"{reason}; goes out as canary: an experiment on its outcomes decides "
            "(gates.promote_to: canary)",
            champion.version,
            CANARY,
        )
    return GateVerdict(True, reason, champion.version)


def _metric(spec: ModelSpec, metrics: Mapping[str, float]) -> str:
    value = metrics.get(spec.metric)
    return f"{spec.metric} {value:.4f}" if value is not None else f"{spec.metric} not measured"
