"""The drift service's metrics (OpenTelemetry; Prometheus names add `_total` to counters).

    mlbus.drift.score                 gauge   model, version, feature, test, kind, source:
                                              the latest window's statistic (PSI, KS D, chi2 or
                                              JS distance, ADWIN mean change)
    mlbus.drift.threshold             gauge   same attributes: what the score is compared with
    mlbus.drift.windows               counter model, version, drifted: windows evaluated
    mlbus.drift.detections            counter model, version, outcome (alarm|suppressed)
    mlbus.drift.triggers              counter model, outcome (armed|fired|suppressed), reason
                                              (labels|max_wait when an armed trigger fires)
    mlbus.drift.records               counter topic, outcome (observed|outcome|skipped), reason
    mlbus.drift.labels                counter model, outcome (joined|unmatched|unreadable)
    mlbus.drift.pending_not_kept      counter model: predictions not kept for the label join
    mlbus.drift.profile_unavailable   counter model, version: a version that cannot be monitored
    mlbus.drift.state_saves           counter outcome (saved|fenced): partition states written
Consumer lag is the bus's `mlbus.consumer.lag` with group `mlbus-drift`.
"""

from __future__ import annotations

from mlbus.telemetry import meter

_meter = meter("mlbus.drift")

score = _meter.create_gauge("mlbus.drift.score", description="latest statistic per test")
threshold = _meter.create_gauge("mlbus.drift.threshold", description="threshold per test")
windows = _meter.create_counter("mlbus.drift.windows", description="live windows evaluated")
detections = _meter.create_counter("mlbus.drift.detections", description="drift detections")
triggers = _meter.create_counter(
    "mlbus.drift.triggers", description="retraining requests fired or suppressed (with reason)"
)
records = _meter.create_counter("mlbus.drift.records", description="records handled")
labels = _meter.create_counter("mlbus.drift.labels", description="label events joined or not")
pending_not_kept = _meter.create_counter(
    "mlbus.drift.pending_not_kept",
    description="predictions not kept for the label join (pending_max reached)",
)
profile_unavailable = _meter.create_counter(
    "mlbus.drift.profile_unavailable",
    description="versions found without a reference profile (or unknown to the registry)",
)
state_saves = _meter.create_counter(
    "mlbus.drift.state_saves", description="partition states written (or fenced off)"
)
