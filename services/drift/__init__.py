"""The drift service: served predictions and labels in; drift detections and retraining out.

See README.md for what it consumes and produces; the statistics live in the
shared library `mlbus.driftstats`, the state design in docs/adr/0017.
"""

from ._processor import DriftProcessor
from ._retraining import Retraining, detection_id
from ._service import DriftService, run
from ._settings import DriftSettings

__all__ = [
    "DriftProcessor",
    "DriftService",
    "DriftSettings",
    "Retraining",
    "detection_id",
    "run",
]
