"""The inference service: Open Inference Protocol over gRPC, hot reload, prediction log.

Run with `python -m mlbus.inference` (or `mlbus up`); see README.md.
"""

from ._model import LoadedModel, ModelRefused, OrtThreads, load_model
from ._predict import (
    PREDICT_SERVICE_NAME,
    FeatureLayout,
    FeaturesUnavailable,
    MissingFeatures,
    PredictionServicer,
    resolve_features,
)
from ._predlog import PredictionLog, PredictionRecord
from ._reload import (
    ArtifactFetcher,
    ModelReloader,
    Publication,
    RegistryOrFileFetcher,
    ReloadStats,
)
from ._repository import CANARY, SHADOW, ModelRepository
from ._routing import ShadowRunner, canary_point, goes_to_canary
from ._server import InferenceServer, run, serve, server_credentials
from ._servicer import (
    ENTITY_PARAMETER,
    SERVICE_NAME,
    VERSION_PARAMETER,
    WORKER_PARAMETER,
    InferenceServicer,
)
from ._settings import InferenceSettings
from ._workers import WorkerPool, run_workers

__all__ = [
    "CANARY",
    "ENTITY_PARAMETER",
    "PREDICT_SERVICE_NAME",
    "SERVICE_NAME",
    "SHADOW",
    "VERSION_PARAMETER",
    "WORKER_PARAMETER",
    "ArtifactFetcher",
    "FeatureLayout",
    "FeaturesUnavailable",
    "InferenceServer",
    "InferenceServicer",
    "InferenceSettings",
    "LoadedModel",
    "MissingFeatures",
    "ModelRefused",
    "ModelReloader",
    "ModelRepository",
    "OrtThreads",
    "PredictionLog",
    "PredictionRecord",
    "PredictionServicer",
    "Publication",
    "RegistryOrFileFetcher",
    "ReloadStats",
    "ShadowRunner",
    "WorkerPool",
    "canary_point",
    "goes_to_canary",
    "load_model",
    "resolve_features",
    "run",
    "run_workers",
    "serve",
    "server_credentials",
]
