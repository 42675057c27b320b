"""The outcomes service: labels joined to predictions; per-alias metrics; experiment verdicts.

See README.md for what it consumes and produces; the statistics live in the
shared library `mlbus.outcomestats`, the design in docs/adr/0024.
"""

from ._evaluator import Evaluator, Totals, action_id, decision_id
from ._processor import OutcomesProcessor, label_value
from ._service import OutcomesService, run
from ._settings import OutcomesSettings
from ._store import ExperimentRecord, OutcomesStore, PendingPrediction, experiment_id

__all__ = [
    "Evaluator",
    "ExperimentRecord",
    "OutcomesProcessor",
    "OutcomesService",
    "OutcomesSettings",
    "OutcomesStore",
    "PendingPrediction",
    "Totals",
    "action_id",
    "decision_id",
    "experiment_id",
    "label_value",
    "run",
]
