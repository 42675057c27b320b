"""The embedded stack for the demo: `mlbus up`'s Supervisor, run in a thread of this process.

The scenario runs on the main thread's event loop; the Supervisor starts and
watches every child from its own thread, and `stop()` (also on Ctrl-C or a
failure) makes it stop them in order and return. The children die with the
thread that spawned them (parent-death signal), so nothing survives this
process, however it ends.

Ports: each gRPC service gets a free port chosen here (not the fixed 8001–8003,
which another run on the machine may hold) as its preferred port. The Supervisor
moves a server whose port was taken meanwhile (the broker, Redis or another
process may bind it between the pick and the start) and tells every service
that calls the registry where the registry really listens; this module does
not name the registry's address, which would override that.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlbus.config import MlbusSettings
from mlbus.errors import MlbusError
from mlbus.runstate import RunState
from mlbus.runtime import SERVICES, ServiceSpec, Supervisor, free_ports

START_TIMEOUT_S = 60.0


class StackError(MlbusError):
    """The embedded stack did not start, or stopped under the demo."""


@dataclass(frozen=True)
class DemoService(ServiceSpec):
    """A catalogue service with extra environment variables for this run."""

    extra_env: tuple[tuple[str, str], ...] = ()

    def environment(
        self,
        settings: MlbusSettings,
        grpc_port: int | None,
        metrics_port: int | None,
        registry_address: str | None = None,
        http_port: int | None = None,
    ) -> dict[str, str]:
        env = super().environment(settings, grpc_port, metrics_port, registry_address, http_port)
        env.update(dict(self.extra_env))
        return env


def demo_catalogue(
    env: Mapping[str, str], catalogue: Sequence[ServiceSpec] = SERVICES
) -> tuple[DemoService, ...]:
    """The catalogue with free preferred ports and `env` for every service."""
    grpc_names = [spec.name for spec in catalogue if spec.serves_grpc]
    http_names = [spec.name for spec in catalogue if spec.serves_http]
    picked = free_ports(len(grpc_names) + len(http_names))  # one port per server, distinct
    ports = dict(zip(grpc_names, picked[: len(grpc_names)], strict=True))
    http_ports = dict(zip(http_names, picked[len(grpc_names) :], strict=True))
    shared = dict(env)
    return tuple(
        DemoService(
            name=spec.name,
            module=spec.module,
            grpc_port=ports.get(spec.name),
            argv=spec.argv,
            needs_spec=spec.needs_spec,
            calls_registry=spec.calls_registry,
            http_port=http_ports.get(spec.name),
            extra_env=tuple(sorted(shared.items())),
        )
        for spec in catalogue
    )


@dataclass
class EmbeddedStack:
    """Broker, Redis and the services of one data folder, supervised from a thread."""

    settings: MlbusSettings
    services: Sequence[ServiceSpec]
    grace_s: float = 5.0
    state: RunState | None = None
    exit_code: int | None = None
    error: BaseException | None = None
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _started: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _supervisor: Supervisor | None = field(default=None, init=False, repr=False)

    @property
    def logs(self) -> Path:
        return self.settings.data.logs

    def start(self, timeout_s: float = START_TIMEOUT_S) -> RunState:
        """Start everything; return the run's state once every child was spawned."""
        supervisor = Supervisor(
            self.settings, services=self.services, embedded_redis=True, grace_s=self.grace_s
        )
        self._supervisor = supervisor

        def on_started(state: RunState) -> None:
            self.state = state
            self._started.set()

        def supervise() -> None:
            try:
                self.exit_code = supervisor.run(on_started=on_started)
            except BaseException as exc:  # reported to the main thread, never lost
                self.error = exc
            finally:
                self._started.set()

        self._thread = threading.Thread(target=supervise, name="mlbus-demo-supervisor")
        self._thread.start()
        if not self._started.wait(timeout_s):
            self.stop()
            raise StackError(
                f"the embedded stack did not start within {timeout_s:.0f} s; logs in {self.logs}"
            )
        if self.error is not None or self.state is None:
            self.stop()
            raise StackError(f"the embedded stack did not start: {self.error}; logs in {self.logs}")
        return self.state

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def failed_services(self) -> list[str]:
        """Services the Supervisor gave up on (crashed too often)."""
        if self._supervisor is None:
            return []
        return [s.name for s in self._supervisor.services if s.status == "failed"]

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop every child and wait for the Supervisor's thread. Safe to call twice."""
        if self._supervisor is not None:
            self._supervisor.request_stop()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def child_pids(self) -> list[int]:
        """Every process the stack started, restarts included (for leftover checks)."""
        pids = set(self.state.pids().values()) if self.state is not None else set()
        if self._supervisor is not None:
            pids.update(s.proc.pid for s in self._supervisor.services if s.proc is not None)
        return sorted(pids)
