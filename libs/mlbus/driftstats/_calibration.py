"""Calibration: replay held-out rows of the reference's own process through a monitor (ADR 0022).

A stationary stretch should raise no alarm. What the replay finds is recorded in the
profile (`ReferenceProfile.calibration`), shown by `mlbus models show` and logged at
registration, so a profile that alarms on its own data is seen before it is trusted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from mlbus.driftstats._monitor import DriftMonitor
from mlbus.events import Scalar
from mlbus.profiles import Calibration, ReferenceProfile
from mlbus.spec import DriftSpec


def calibrate(
    profile: ReferenceProfile,
    spec: DriftSpec,
    features: Mapping[str, str],
    tests: Mapping[str, Sequence[str]],
    rows: Sequence[Mapping[str, Scalar]],
    times: Sequence[datetime],
    predictions: Sequence[float | None] | None = None,
) -> Calibration:
    """Replay `rows` (in time order) through a fresh monitor on `profile`; what it raised."""
    order = sorted(range(len(rows)), key=lambda i: times[i])
    monitor = DriftMonitor("calibration", 0, profile, spec, features, tests)
    verdicts = monitor.observe_many(
        [rows[i] for i in order],
        None if predictions is None else [predictions[i] for i in order],
        at=[times[i] for i in order],
        source="calibration",
        offsets=range(len(order)),
    )
    detections = [v for v in verdicts if v.detection]
    span = (times[order[-1]] - times[order[0]]).total_seconds() if order else 0.0
    return Calibration(
        events=len(rows),
        windows=len(verdicts),
        detections=len(detections),
        drifted_windows=sum(1 for v in verdicts if v.drifted),
        tests=tuple(f"{r.feature}:{r.test}" for v in detections for r in v.results if r.drifted),
        span_s=max(span, 0.0),
    )
