"""The model registry service: versions, aliases, lineage, promotion gates, artifacts.

Run with `python -m mlbus.registry` (or `mlbus up`); see README.md.
"""

from ._server import RegistryServer, run, serve
from ._service import NewVersion, Registry
from ._settings import RegistrySettings

__all__ = ["NewVersion", "Registry", "RegistryServer", "RegistrySettings", "run", "serve"]
