"""The feature service: validated events in; online (Redis) and offline (Parquet) features out.

See README.md for what it consumes, writes and serves; the computation and the
stores live in the shared library `mlbus.featurestore`.
"""

from ._service import FeatureService, run
from ._settings import FeaturesSettings

__all__ = ["FeatureService", "FeaturesSettings", "run"]
