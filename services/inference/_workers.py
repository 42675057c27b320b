"""Several inference processes on one port: `--workers N` / `MLBUS_INFERENCE_WORKERS`.

One Python process serves on one core (the GIL), so `N` worker processes each
run a complete `InferenceServer` and bind the same port with `SO_REUSEPORT`;
the kernel spreads incoming connections over them (per connection, not per
call: a client keeps talking to the worker that accepted its connection).

    supervisor (this module) ── reserves the port, spawns, watches, relays signals
      ├── worker 0: InferenceServer(grpc_port=P) ── own models, own reload consumer,
      ├── worker 1: InferenceServer(grpc_port=P)    own prediction-log producer
      └── …

Every worker follows `mlbus.model.published.v1` with its own broadcast
consumer (no consumer group: each sees every publication) and asks the
registry at start, exactly like a separate replica would, so all of them
reload. Workers are spawned (not forked: gRPC's threads do not survive a
fork) with the supervisor's settings; `MLBUS_TELEMETRY_METRICS_PORT=M`
becomes `M + index` per worker (0 stays "pick one").

Stopping: SIGTERM or SIGINT on the supervisor is relayed to every worker as
SIGTERM (workers ignore SIGINT, so a terminal's Ctrl-C reaches them once, via
the supervisor); each drains within `shutdown_grace_s`; stragglers are killed
after that plus a margin. A worker whose supervisor disappears stops itself.

A worker that dies on its own (crash, OOM kill, failed start) is reported
(index, pid, exit code or signal) and the supervisor stops the others and
exits 1 — it does not restart the worker alone: a fresh worker joins the
port's group before it has loaded anything (broadcast consumers start at the
end of the topic, the registry is optional), so it would answer NOT_FOUND
beside workers serving the model. Restarting the whole service (mlbus up,
Kubernetes, systemd) goes through the same bootstrap as a first start.
See docs/adr/0018-inference-workers.md.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from mlbus.errors import ConfigError

from ._settings import InferenceSettings

log = logging.getLogger(__name__)

STOP_MARGIN_S = 10.0
"""Beyond `shutdown_grace_s`, how long a stopping worker gets before it is killed."""
POLL_S = 0.5


def reserve_port(host: str, port: int) -> socket.socket:
    """Check `host:port` is free, pick one for port 0, and hold it for the workers.

    gRPC binds with SO_REUSEPORT, which would let a worker silently join an
    unrelated server already on the port: a probe without SO_REUSEPORT fails
    on any listener. The returned socket (bound with SO_REUSEPORT, never
    listening, so it receives no connections) keeps the port ours while the
    workers start; close it when they are gone.
    """
    variable = "MLBUS_INFERENCE_GRPC_PORT"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve MLBUS_INFERENCE_GRPC_HOST {host!r}: {exc}") from None
    family, _, _, _, address = infos[0]
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        probe.bind(address)
        chosen = int(probe.getsockname()[1])
    except OSError as exc:
        raise ConfigError(
            f"cannot serve gRPC on {host}:{port} ({exc.strerror or exc}); set {variable} "
            "to a free port, or 0 to pick one"
        ) from None
    finally:
        probe.close()
    held = socket.socket(family, socket.SOCK_STREAM)
    try:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((address[0], chosen, *address[2:]))
    except OSError as exc:
        held.close()
        raise ConfigError(
            f"cannot hold gRPC port {host}:{chosen} for the workers ({exc.strerror or exc}); "
            f"set {variable} to a free port"
        ) from None
    return held


def worker_settings(settings: InferenceSettings, index: int, port: int) -> InferenceSettings:
    """What worker `index` runs with: the shared port, one process, its own metrics port."""
    telemetry = settings.telemetry
    if telemetry.metrics_port:  # a fixed port cannot be shared: one per worker
        telemetry = telemetry.model_copy(update={"metrics_port": telemetry.metrics_port + index})
    return settings.model_copy(update={"grpc_port": port, "workers": 1, "telemetry": telemetry})


def _worker_main(settings: InferenceSettings, index: int, supervisor_pid: int) -> None:
    """Entry point of a spawned worker process."""
    # Ctrl-C in a terminal reaches the whole process group: let the supervisor
    # decide, and relay it as SIGTERM, so every worker stops once, the same way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ._server import run_worker

    try:
        run_worker(settings, index, supervisor_pid)
    except ConfigError as exc:
        log.error("inference worker %d: %s", index, exc)
        raise SystemExit(2) from None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


class WorkerPool:
    """Spawns `settings.workers` servers on one port and watches them. `run()` blocks."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")
        self.workers: list[BaseProcess] = []
        self.port: int | None = None
        self._stop_requested: int | None = None

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (→ 0) or until a worker dies (→ 1)."""
        settings = self.settings
        held = reserve_port(settings.grpc_host, settings.grpc_port)
        previous = {
            signum: signal.signal(signum, self._request_stop)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self.port = int(held.getsockname()[1])
            self._spawn_all(self.port)
            log.info(
                "inference: %d workers (pids %s) serving on %s:%d",
                len(self.workers),
                ", ".join(str(w.pid) for w in self.workers),
                settings.grpc_host,
                self.port,
            )
            died = self._watch()
            return 1 if died else 0
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            held.close()

    def _spawn_all(self, port: int) -> None:
        for index in range(self.settings.workers):
            process = self._context.Process(
                target=_worker_main,
                args=(worker_settings(self.settings, index, port), index, os.getpid()),
                name=f"mlbus-inference-{index}",
                daemon=False,  # a daemonic process cannot be stopped gracefully by us
            )
            process.start()
            self.workers.append(process)

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requested = signum

    def _watch(self) -> BaseProcess | None:
        """Block until a stop is requested (None) or a worker exits on its own (that worker)."""
        sentinels = {w.sentinel: w for w in self.workers}
        while self._stop_requested is None:
            ready = wait(list(sentinels), timeout=POLL_S)
            if self._stop_requested is not None:
                break
            for sentinel in ready:
                worker = sentinels[sentinel]  # type: ignore[index]
                # The sentinel closes a moment before the exit status can be reaped.
                worker.join(1.0)
                log.error(
                    "inference worker %s (pid %s) stopped on its own (%s); stopping the "
                    "other workers and exiting 1 so the service is restarted as a whole",
                    worker.name,
                    worker.pid,
                    describe_exit(worker.exitcode),
                )
                return worker
        log.info(
            "inference: %s, stopping %d workers (grace %.1fs)",
            signal.Signals(self._stop_requested).name,
            len(self.workers),
            self.settings.shutdown_grace_s,
        )
        return None

    def _stop_all(self) -> None:
        """SIGTERM every live worker, wait out the grace period, kill what is left. Idempotent."""
        for worker in self.workers:
            if worker.is_alive() and worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_s + STOP_MARGIN_S
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.error(
                    "inference worker %s (pid %s) did not stop: killed", worker.name, worker.pid
                )
                worker.kill()
                worker.join(5)
        for worker in self.workers:
            if worker.exitcode not in (0, None):
                log.warning(
                    "inference worker %s (pid %s): %s",
                    worker.name,
                    worker.pid,
                    describe_exit(worker.exitcode),
                )


def run_workers(settings: InferenceSettings) -> int:
    """Run `settings.workers` server processes on one port; the exit status of the service."""
    return WorkerPool(settings).run()
