"""The catalogue of mlbus services that `mlbus up` knows how to run.

Each service is its own process, started as `python -m mlbus.<name>` with the
shared settings handed down through the environment (`env_for_children`) plus
its own ports:

    MLBUS_<NAME>_GRPC_PORT           the gRPC port, for services that serve gRPC
    MLBUS_<NAME>_HTTP_PORT           the HTTP port, for services that serve web pages
    MLBUS_TELEMETRY_METRICS_PORT     the Prometheus /metrics port

A service runs only if its module is installed (`mlbus[<name>]` and its code
present), so `mlbus up` runs what exists and names what does not.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from mlbus.config import MlbusSettings, env_for_children


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service.

    `grpc_port` is the preferred port of a gRPC service (`mlbus up` takes it when
    free, else any free port); None means the service serves no gRPC. `argv`
    replaces `python -m <module>`, for tests and for services run another way.
    """

    name: str
    module: str
    grpc_port: int | None = None
    argv: tuple[str, ...] | None = None
    needs_spec: bool = False
    calls_registry: bool = False
    """Gets `MLBUS_<NAME>_REGISTRY_ADDRESS` pointing at the registry `mlbus up` started."""
    http_port: int | None = None
    """The preferred port of a service that serves HTTP (the console); None: no HTTP."""

    @property
    def serves_grpc(self) -> bool:
        return self.grpc_port is not None

    @property
    def grpc_port_env(self) -> str:
        return f"MLBUS_{self.name.upper()}_GRPC_PORT"

    @property
    def serves_http(self) -> bool:
        return self.http_port is not None

    @property
    def http_port_env(self) -> str:
        return f"MLBUS_{self.name.upper()}_HTTP_PORT"

    def command(self) -> list[str]:
        return list(self.argv) if self.argv is not None else [sys.executable, "-m", self.module]

    def installed(self) -> bool:
        """Whether there is something to run: an explicit command or an importable module."""
        if self.argv is not None:
            return True
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):  # a missing parent package
            return False

    def environment(
        self,
        settings: MlbusSettings,
        grpc_port: int | None,
        metrics_port: int | None,
        registry_address: str | None = None,
        http_port: int | None = None,
    ) -> dict[str, str]:
        """Variables added to the inherited environment of this service's process."""
        env = env_for_children(settings)
        env["PYTHONUNBUFFERED"] = "1"  # logs reach the log file as they are written
        if grpc_port is not None:
            env[self.grpc_port_env] = str(grpc_port)
        if http_port is not None:
            env[self.http_port_env] = str(http_port)
        if registry_address is not None and self.calls_registry:
            env[f"MLBUS_{self.name.upper()}_REGISTRY_ADDRESS"] = registry_address
        if metrics_port is not None:
            env["MLBUS_TELEMETRY_METRICS_PORT"] = str(metrics_port)
        return env


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("ingestion", "mlbus.ingestion", needs_spec=True),
    ServiceSpec("features", "mlbus.features", grpc_port=8003, needs_spec=True),
    ServiceSpec("trainer", "mlbus.trainer", needs_spec=True, calls_registry=True),
    ServiceSpec("registry", "mlbus.registry", grpc_port=8002),
    ServiceSpec("inference", "mlbus.inference", grpc_port=8001, calls_registry=True),
    ServiceSpec("drift", "mlbus.drift", needs_spec=True, calls_registry=True),
    ServiceSpec("outcomes", "mlbus.outcomes", grpc_port=8004, needs_spec=True, calls_registry=True),
    ServiceSpec("console", "mlbus.console", calls_registry=True, http_port=8080),
)
"""Every mlbus service, in start order."""


def split_installed(
    catalogue: Sequence[ServiceSpec],
) -> tuple[list[ServiceSpec], list[ServiceSpec]]:
    """(services that can run, services whose module is not installed)."""
    installed = [spec for spec in catalogue if spec.installed()]
    missing = [spec for spec in catalogue if spec not in installed]
    return installed, missing
