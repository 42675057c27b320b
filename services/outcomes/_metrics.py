"""The outcomes service's metrics (OpenTelemetry; Prometheus names add `_total` to counters).

    mlbus.outcomes.metric            gauge   model, version, alias, window, metric, bound
                                             (value|ci_low|ci_high): AUC, accuracy, log-loss,
                                             positive rate (classification), MAE, RMSE
    mlbus.outcomes.labelled          gauge   model, version, alias, window: outcomes counted
    mlbus.outcomes.labels            counter model, outcome (joined|repeated|unmatched|unreadable)
    mlbus.outcomes.predictions       counter model, outcome (kept|no_event_id|no_score)
    mlbus.outcomes.experiment_p      gauge   model, alias, champion, challenger: always-valid p
    mlbus.outcomes.verdicts          counter model, alias, verdict (better|worse)
    mlbus.outcomes.actions           counter model, action, outcome (done|refused|failed)
Consumer lag is the bus's `mlbus.consumer.lag` with group `mlbus-outcomes`.
"""

from __future__ import annotations

from mlbus.telemetry import meter

_meter = meter("mlbus.outcomes")

metric = _meter.create_gauge("mlbus.outcomes.metric", description="outcome metric per window")
labelled = _meter.create_gauge("mlbus.outcomes.labelled", description="outcomes per window")
labels = _meter.create_counter("mlbus.outcomes.labels", description="label events joined or not")
predictions = _meter.create_counter(
    "mlbus.outcomes.predictions", description="predictions kept for the label join (or not)"
)
experiment_p = _meter.create_gauge(
    "mlbus.outcomes.experiment_p", description="always-valid p-value of each running experiment"
)
verdicts = _meter.create_counter("mlbus.outcomes.verdicts", description="experiment verdicts")
actions = _meter.create_counter("mlbus.outcomes.actions", description="actions on verdicts")
