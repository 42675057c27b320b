"""The control run end to end: `mlbus demo --drift-kind none` on the real embedded stack.

The stream has the example's daily and weekly rhythm and no drift. Nothing may be
detected and nothing retrained (ADR 0022), while the model is served the features it
was trained on (ADR 0020). Another seed than the demo's default, so the check is not a
fit to the stream the mechanism was looked at on.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from mlbus.demo import DemoConfig, DemoRun, DemoSizes, LoopOptions
from tests.e2e._demo_run import assert_served_what_it_trained_on, run_for_tests

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# 24,000 payments over 8 days (the demo's rhythm), 12,000 of them before the first
# training; the "drift" point, 72 hours before now, only splits the summary's segments.
SIZES = DemoSizes(
    payments=24_000, bootstrap=12_000, drift_age=timedelta(hours=72), drift_kind="none"
)
CONFIG = DemoConfig(
    sizes=SIZES, seed=11, loop=LoopOptions(manual_retrain_after=None, after_retrain=2_000)
)


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return run_for_tests(tmp_path_factory.mktemp("control"), CONFIG)


def test_a_stream_without_drift_raises_no_detection_and_no_retraining(control: DemoRun) -> None:
    summary = control.summary
    assert summary is not None, control.error
    assert summary.drift_kind == "none"
    assert summary.detections == 0, (summary.drift_causes, control.error)
    assert summary.drift_requests == 0
    assert summary.retrained_version is None
    assert control.error is None


def test_the_control_run_serves_what_it_trained_on(control: DemoRun) -> None:
    assert_served_what_it_trained_on(control)
