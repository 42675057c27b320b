"""The closed loop end to end: a shorter `mlbus demo` on the real embedded stack.

One run of the demo (real broker, Redis and every service as processes, the real
drift service; `demo` in conftest.py, shared with the console's browser tests) is
read by the tests below; the demo's safety net (a manual retraining request) is
off, so only the drift service can ask for a retraining: it arms the retraining at
detection and fires it once enough drifted payments are labelled
(MLBUS_DRIFT_RETRAIN_MIN_LABELS). The kept stack's stop is checked by the console
module's last test; here a running demo is stopped with SIGINT and nothing may survive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlbus.config import MlbusSettings
from mlbus.demo import (
    AFTER_DRIFT,
    AFTER_RETRAIN,
    BEFORE_DRIFT,
    DemoRun,
)
from mlbus.events import DriftDetected, TrainingRequested
from mlbus.runstate import pid_alive, read_state
from tests.e2e._demo_run import assert_served_what_it_trained_on
from tests.e2e.auc_margin import chance_margin, difference_margin

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

CLI = [sys.executable, "-c", "from mlbus.cli import main; main()"]


def clean_env() -> dict[str, str]:
    dropped = ("MLBUS_KAFKA_BOOTSTRAP_SERVERS", "MLBUS_REDIS_URL", "REDIS_URL", "MLBUS_DATA_DIR")
    return {k: v for k, v in os.environ.items() if k not in dropped}


def test_the_first_model_serves_and_drift_makes_it_visibly_worse(demo: DemoRun) -> None:
    summary = demo.summary
    assert summary is not None
    assert summary.initial_version == 1, demo.error
    before, after = summary.segment(BEFORE_DRIFT), summary.segment(AFTER_DRIFT)
    assert before is not None
    assert after is not None
    assert before.auc is not None, "no labelled answers before the drift"
    assert after.auc is not None, "no labelled answers of the first model after the drift"
    # Margins from the label counts of this run (Hanley–McNeil), not tuned thresholds.
    assert before.auc > 0.5 + chance_margin(before), before
    assert after.auc < before.auc - difference_margin(before, after), (before, after)


def test_drift_is_detected_and_asks_for_exactly_one_retraining(demo: DemoRun) -> None:
    record = demo.record
    assert record.drift is not None, f"no drift detected: {demo.error}"
    detection = record.drift.event
    assert isinstance(detection, DriftDetected)
    assert detection.version == 1
    assert any(r.drifted for r in detection.results)
    assert record.drift_requests == 1
    request = record.retrain_request
    assert isinstance(request, TrainingRequested)
    assert request.reason == "drift"
    assert request.cause_event_id == detection.event_id
    assert demo.summary is not None
    assert demo.summary.detection is not None
    assert demo.summary.detection.events >= 1


def test_the_drift_caused_retraining_serves_and_recovers_accuracy(demo: DemoRun) -> None:
    summary = demo.summary
    assert summary is not None
    assert summary.retrained_version is not None, demo.error
    assert summary.retrained_by == "drift"
    assert not demo.record.manual_retrain
    # The run continued the detection's trace (the armed trigger kept its context).
    assert demo.record.drift is not None
    assert demo.record.retrain_trace_id == demo.record.drift.trace_id
    after, retrained = summary.segment(AFTER_DRIFT), summary.segment(AFTER_RETRAIN)
    assert after is not None
    assert retrained is not None
    assert retrained.versions == (summary.retrained_version,)
    assert retrained.auc is not None
    assert after.auc is not None
    assert retrained.auc > after.auc + difference_margin(retrained, after), (after, retrained)


def test_no_request_fails_while_the_retrained_version_loads(demo: DemoRun) -> None:
    """The reload is hot: from the publication of the retrained version to its first
    answer, every Predict of the live stream is answered (the README reports the count)."""
    summary = demo.summary
    assert summary is not None
    assert summary.retrained_version is not None, demo.error
    reload = summary.reload
    assert reload is not None, "no reload window: the retrained version never answered"
    # The whole run's failures beside the window's: whether they cluster in the reload.
    whole_run = f"{summary.requests_failed}/{summary.requests_total} failed in the whole run"
    assert reload.failed == 0, (reload, whole_run, summary.failure_examples)


def test_the_model_is_served_the_features_it_was_trained_on(demo: DemoRun) -> None:
    """ADR 0020: served values equal the offline rows, so what v1 served before the drift
    scores like its evaluation, and the detection comes after the drift, not before."""
    summary = demo.summary
    assert summary is not None
    assert_served_what_it_trained_on(demo)
    assert summary.detection is not None
    assert summary.detection.seconds is not None
    assert not summary.detection.false_alarm


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    data = tmp_path / "interrupted"
    proc = subprocess.Popen(
        # The drift point is a fixed age before now, so how many payments come before it
        # follows the hour and weekday the test runs at (the example's rhythm): with 2,500
        # bootstrap payments, fewer than the 500 live ones the demo needs came before it
        # from Sunday to Wednesday; 2,000 leaves at least 813 at every hour of the week.
        [*CLI, "demo", "--data-dir", str(data), "--payments", "8000", "--bootstrap", "2000"],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        pids: dict[str, int] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            state = read_state(MlbusSettings(data_dir=data).data)
            if state is not None and state.status == "running" and "inference" in state.services:
                pids = state.pids()
                break
            time.sleep(0.2)
        assert pids, f"the demo's stack never ran (exit {proc.poll()})"
        assert all(pid_alive(pid) for pid in pids.values())
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr.decode(errors="replace")[-2000:]
    assert b"interrupted" in stderr
    alive = {name: pid for name, pid in pids.items() if pid_alive(pid)}
    assert alive == {}, f"left behind after Ctrl-C: {alive}"
