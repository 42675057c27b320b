"""The inference service: Open Inference Protocol over gRPC, hot reload, prediction log.

Run with `python -m mlbus.inference` (or `mlbus up`); see README.md.
"""

from ._model import LoadedModel, ModelRefused, OrtThreads, load_model
from ._predlog import PredictionLog, PredictionRecord
from ._reload import (
    ArtifactFetcher,
    ModelReloader,
    Publication,
    RegistryOrFileFetcher,
    ReloadStats,
)
from ._repository import ModelRepository
from ._server import InferenceServer, run, serve
from ._servicer import SERVICE_NAME, VERSION_PARAMETER, InferenceServicer
from ._settings import InferenceSettings

__all__ = [
    "SERVICE_NAME",
    "VERSION_PARAMETER",
    "ArtifactFetcher",
    "InferenceServer",
    "InferenceServicer",
    "InferenceSettings",
    "LoadedModel",
    "ModelRefused",
    "ModelReloader",
    "ModelRepository",
    "OrtThreads",
    "PredictionLog",
    "PredictionRecord",
    "Publication",
    "RegistryOrFileFetcher",
    "ReloadStats",
    "load_model",
    "run",
    "serve",
]
