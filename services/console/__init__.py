"""The console: the web page over the loop (models, lineage, drift, features, traces,
experiments, the labeling queue).

It reads only through the shared contracts — the registry over gRPC, Redis
through `mlbus.featurestore`, `mlbus.driftstatus`, `mlbus.outcomesstatus` and
`mlbus.labeling`, Kafka topics, span files — and imports no other service. See
README.md and docs/adr/0025.
"""

from ._app import build_app, run
from ._settings import ConsoleSettings

__all__ = ["ConsoleSettings", "build_app", "run"]
