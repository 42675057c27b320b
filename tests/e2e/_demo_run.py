"""One `mlbus demo` run for a test module: the embedded stack, silent, its failure kept."""

from __future__ import annotations

import os
from pathlib import Path

from mlbus.config import MlbusSettings
from mlbus.demo import BEFORE_DRIFT, DemoConfig, DemoRun, PhaseFailed, SilentReporter, run_demo
from tests.e2e.auc_margin import Z, segment_standard_error


def run_for_tests(data_dir: Path, config: DemoConfig, *, keep: bool = False) -> DemoRun:
    """Run the demo in `data_dir`; a failed phase is kept in `run.error` for the tests to
    judge, one claim each, instead of failing the fixture. `keep`: a run that succeeded
    leaves its stack up in `run.stack` (the caller stops it)."""
    for name in ("MLBUS_KAFKA_BOOTSTRAP_SERVERS", "MLBUS_REDIS_URL", "REDIS_URL"):
        assert name not in os.environ, f"unset {name}: the demo runs its own embedded stack"
    run = DemoRun()
    try:
        run_demo(MlbusSettings(data_dir=data_dir), config, SilentReporter(), run, keep=keep)
    except PhaseFailed as exc:
        run.error = exc
    return run


def assert_served_what_it_trained_on(run: DemoRun) -> None:
    """ADR 0020 in a run: served values equal the offline rows, and what v1 served before
    the drift point scores like its evaluation."""
    summary = run.summary
    assert summary is not None, run.error
    consistency = summary.consistency
    assert consistency is not None, "the feature service's consistency counts were not read"
    answered = sum(1 for r in run.record.served if r.ok)
    assert consistency.events >= 0.99 * answered
    assert consistency.match_rate is not None
    assert consistency.match_rate >= 0.999, consistency.examples
    before = summary.segment(BEFORE_DRIFT)
    assert before is not None
    assert before.auc is not None
    assert summary.initial_evaluation_auc is not None
    # Two AUCs on different samples: Z standard errors of the served one (the holdout's
    # is of the same order), from its own label counts, not a tuned threshold.
    margin = Z * segment_standard_error(before)
    assert abs(before.auc - summary.initial_evaluation_auc) < margin
