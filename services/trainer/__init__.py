"""The trainer: training requests in; ONNX models registered with their lineage out.

See README.md for what it consumes and produces; the pipeline itself lives in
the shared library `mlbus.training` (also run by `mlbus train`).
"""

from ._service import TrainerService, run, worker_pool
from ._settings import TrainerSettings

__all__ = ["TrainerService", "TrainerSettings", "run", "worker_pool"]
