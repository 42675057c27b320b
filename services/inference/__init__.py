"""The inference service: Open Inference Protocol over gRPC, hot reload, prediction log.

Run with `python -m mlbus.inference` (or `mlbus up`); see README.md.

Names load from their module on first use: the supervisor of `--workers N`
needs `run` and the settings, not the serving stack (gRPC, ONNX Runtime,
numpy: ~50 MB it would hold for nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlbus._lazy import lazy_attributes

if TYPE_CHECKING:
    from ._layout import FeatureLayout, FeaturesUnavailable
    from ._model import LoadedModel, ModelRefused, OrtThreads, load_model
    from ._policy import MissingFeatures, resolve_features
    from ._predict import PREDICT_SERVICE_NAME, PredictionServicer
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
    from ._run import run
    from ._scoring import DeadlineExceeded, Route, Scorer
    from ._server import InferenceServer, serve
    from ._servicer import (
        ENTITY_PARAMETER,
        SERVICE_NAME,
        VERSION_PARAMETER,
        WORKER_PARAMETER,
        InferenceServicer,
    )
    from ._settings import InferenceSettings
    from ._tls import server_credentials
    from ._workers import WorkerPool, run_workers

_MODULE_OF = {
    "LoadedModel": "_model",
    "ModelRefused": "_model",
    "OrtThreads": "_model",
    "load_model": "_model",
    "PREDICT_SERVICE_NAME": "_predict",
    "FeatureLayout": "_layout",
    "FeaturesUnavailable": "_layout",
    "MissingFeatures": "_policy",
    "PredictionServicer": "_predict",
    "resolve_features": "_policy",
    "PredictionLog": "_predlog",
    "PredictionRecord": "_predlog",
    "ArtifactFetcher": "_reload",
    "ModelReloader": "_reload",
    "Publication": "_reload",
    "RegistryOrFileFetcher": "_reload",
    "ReloadStats": "_reload",
    "CANARY": "_repository",
    "SHADOW": "_repository",
    "ModelRepository": "_repository",
    "ShadowRunner": "_routing",
    "canary_point": "_routing",
    "goes_to_canary": "_routing",
    "run": "_run",
    "DeadlineExceeded": "_scoring",
    "Route": "_scoring",
    "Scorer": "_scoring",
    "InferenceServer": "_server",
    "serve": "_server",
    "ENTITY_PARAMETER": "_servicer",
    "SERVICE_NAME": "_servicer",
    "VERSION_PARAMETER": "_servicer",
    "WORKER_PARAMETER": "_servicer",
    "InferenceServicer": "_servicer",
    "InferenceSettings": "_settings",
    "server_credentials": "_tls",
    "WorkerPool": "_workers",
    "run_workers": "_workers",
}

__all__ = [
    "CANARY",
    "ENTITY_PARAMETER",
    "PREDICT_SERVICE_NAME",
    "SERVICE_NAME",
    "SHADOW",
    "VERSION_PARAMETER",
    "WORKER_PARAMETER",
    "ArtifactFetcher",
    "DeadlineExceeded",
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
    "Route",
    "Scorer",
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


__getattr__ = lazy_attributes(__name__, _MODULE_OF)
