"""`mlbus up`: the broker, Redis and every installed service, supervised on one machine.

Synchronous on purpose: one thread starts every child and polls them, so the
Linux parent-death signal (which follows the *thread* that spawned a child)
always reaches every child when the supervisor dies, however it dies.

    Supervisor(settings).run(on_started=print_table)   # blocks until SIGINT/SIGTERM

Start order: lock the data folder → broker (embedded unless
`MLBUS_KAFKA_BOOTSTRAP_SERVERS` is set) → Redis (the configured `REDIS_URL`,
else embedded: a Redis that merely answers on 127.0.0.1:6379 is never written
to unasked) → topics → services. Every key this instance writes starts with the
data folder's instance prefix (`<data>/instance`, ADR 0021). Stop order is
the reverse, each step with a grace period, and the run state is removed. A
crashed child is started again after a capped, growing delay; after
`max_rapid_crashes` crashes in a row, each within `stable_after_s` of its
start, a service is left stopped (`failed`) and the embedded broker or
Redis ends the whole run with exit code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from mlbus.config import KafkaSettings, MlbusSettings
from mlbus.errors import MlbusError
from mlbus.runstate import (
    BrokerState,
    RedisState,
    RunState,
    ServiceState,
    ServiceStatus,
    instance_prefix,
    kafka_health,
    redis_ping,
    remove_state,
    with_key_prefix,
    write_state,
)
from mlbus.runtime._embedded import EmbeddedBroker, EmbeddedRedis
from mlbus.runtime._lock import RunLock
from mlbus.runtime._process import free_port, port_open, spawn, tail
from mlbus.runtime._services import SERVICES, ServiceSpec, split_installed

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_LOG_LEVELS: dict[str, int] = {"failed": logging.ERROR, "restarting": logging.WARNING}


class StartupError(MlbusError):
    """Part of the runtime could not start; nothing is left running."""


@dataclass(frozen=True)
class RestartPolicy:
    """When a crashed child is started again, and when the supervisor gives up on it.

    The n-th crash in a row waits `min(backoff_cap_s, backoff_base_s * 2**(n-1))`
    before the restart. A crash after at least `stable_after_s` of running starts
    the count again at 1. The `max_rapid_crashes`-th crash in a row is final.
    """

    backoff_base_s: float = 0.5
    backoff_cap_s: float = 10.0
    stable_after_s: float = 30.0
    max_rapid_crashes: int = 5

    def delay_s(self, rapid_crashes: int) -> float:
        exponent = min(max(rapid_crashes - 1, 0), 30)
        return float(min(self.backoff_cap_s, self.backoff_base_s * 2**exponent))


class RestartTracker:
    """The crash history of one child under a `RestartPolicy` (no I/O: `now` is given)."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.restarts = 0
        self.rapid_crashes = 0
        self._started_at: float | None = None

    def started(self, now: float) -> None:
        if self._started_at is not None:
            self.restarts += 1
        self._started_at = now

    def crashed(self, now: float) -> float | None:
        """Record a crash; return the delay before the restart, or None to give up."""
        ran_s = now - self._started_at if self._started_at is not None else 0.0
        if ran_s >= self.policy.stable_after_s:
            self.rapid_crashes = 0
        self.rapid_crashes += 1
        if self.rapid_crashes >= self.policy.max_rapid_crashes:
            return None
        return self.policy.delay_s(self.rapid_crashes)


class ServiceProcess:
    """One service: its process, its ports, its restarts."""

    def __init__(
        self,
        spec: ServiceSpec,
        env: dict[str, str],
        log_path: Path,
        policy: RestartPolicy,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        http_port: int | None = None,
    ) -> None:
        self.spec = spec
        self.http_port = http_port
        self.env = env
        self.log_path = log_path
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.tracker = RestartTracker(policy)
        self.status: ServiceStatus = "starting"
        self.proc: subprocess.Popen[bytes] | None = None
        self._restart_at: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self, now: float) -> None:
        self.proc = spawn(self.spec.command(), self.log_path, env=self.env)
        self.tracker.started(now)
        self.status = "running"
        self._restart_at = None

    def poll(self, now: float) -> str | None:
        """Notice a crash or a due restart; return what happened, for the log."""
        if self.status == "running" and self.proc is not None:
            code = self.proc.poll()
            if code is None:
                return None
            delay_s = self.tracker.crashed(now)
            if delay_s is None:
                self.status = "failed"
                return (
                    f"service {self.name} exited with code {code}, "
                    f"{self.tracker.rapid_crashes} crashes in a row: giving up; "
                    f"see {self.log_path}:\n{tail(self.log_path, 10)}"
                )
            self.status = "restarting"
            self._restart_at = now + delay_s
            return f"service {self.name} exited with code {code}; restarting in {delay_s:.1f} s"
        if self.status == "restarting" and self._restart_at is not None and now >= self._restart_at:
            self.start(now)
            return f"service {self.name} restarted (restart {self.tracker.restarts})"
        return None

    def state(self) -> ServiceState:
        alive = self.proc is not None and self.proc.returncode is None
        return ServiceState(
            pid=self.proc.pid if self.proc is not None and alive else None,
            status=self.status,
            restarts=self.tracker.restarts,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            log=self.log_path,
            http_port=self.http_port,
        )


def terminate_all(procs: Sequence[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM every process at once, wait up to `grace_s` for all, SIGKILL the rest."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.0f s; killing it", proc.pid, grace_s)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


class Supervisor:
    """Runs the embedded runtime of one data folder until told to stop."""

    def __init__(
        self,
        settings: MlbusSettings,
        *,
        services: Sequence[ServiceSpec] = SERVICES,
        embedded_redis: bool = False,
        policy: RestartPolicy | None = None,
        grace_s: float = 5.0,
        poll_interval_s: float = 0.2,
    ) -> None:
        self.data = settings.data
        # The instance prefix unless MLBUS_REDIS_KEY_PREFIX is set; handed to every service.
        self.settings = with_key_prefix(settings, instance_prefix(self.data))
        self.catalogue = tuple(services)
        self.embedded_redis = embedded_redis
        self.policy = policy or RestartPolicy()
        self.grace_s = grace_s
        self.poll_interval_s = poll_interval_s
        self.state = RunState(
            supervisor_pid=os.getpid(), data_dir=self.data.root, spec=settings.spec
        )
        self.services: list[ServiceProcess] = []
        self._broker: EmbeddedBroker | None = None
        self._redis: EmbeddedRedis | None = None
        self._broker_tracker = RestartTracker(self.policy)
        self._redis_tracker = RestartTracker(self.policy)
        self._topics: list[str] = []
        self._retention_s: dict[str, int] = {}
        self._stop_requested = False
        self._starting = True

    # -- public -----------------------------------------------------------------------

    def run(self, on_started: Callable[[RunState], None] | None = None) -> int:
        """Start everything, supervise until SIGINT/SIGTERM or `request_stop`, stop everything.

        Returns the exit code: 0 after a requested stop, 1 when the embedded broker
        or Redis could not be kept running. Raises `AlreadyRunningError` when another
        `mlbus up` holds the data folder and `StartupError` when something could not
        start (after stopping what had started).
        """
        self.data.ensure(self.data.root, self.data.logs, self.data.run)
        with RunLock(self.data):
            restore = self._install_signal_handlers()
            try:
                self._start()
                self._starting = False
                if self._stop_requested:
                    return 0
                if on_started is not None:
                    on_started(self.state)
                return self._watch()
            except KeyboardInterrupt:  # a signal while starting: stop what started
                return 0
            finally:
                self._starting = False
                self._stop()
                remove_state(self.data)
                restore()

    def request_stop(self) -> None:
        """Ask `run` to stop everything and return (safe from signal handlers and threads)."""
        self._stop_requested = True

    # -- start ------------------------------------------------------------------------

    def _start(self) -> None:
        write_state(self.data, self.state)
        self._start_broker()
        self._start_redis()
        self._create_topics()
        self._start_services()
        self.state.status = "running"
        write_state(self.data, self.state)

    def _start_broker(self) -> None:
        configured = self.settings.kafka.bootstrap_servers
        if configured:
            health = asyncio.run(kafka_health(self.settings.kafka, timeout_s=10.0))
            if not health.healthy:
                raise StartupError(
                    f"the broker at MLBUS_KAFKA_BOOTSTRAP_SERVERS={configured} does not answer "
                    f"({health.detail}); start it, or unset the variable to use the embedded one"
                )
            self.state.broker = BrokerState(bootstrap_servers=configured, embedded=False)
        else:
            self._broker = EmbeddedBroker(self.data.logs)
            try:
                self._broker.start()
            except (RuntimeError, TimeoutError, OSError) as exc:
                raise StartupError(f"the embedded broker did not start: {exc}") from None
            self._broker_tracker.started(time.monotonic())
            self.state.broker = self._broker_state()
        log.info("broker at %s", self.state.broker.bootstrap_servers)
        write_state(self.data, self.state)

    def _start_redis(self) -> None:
        configured = self.settings.redis.url
        if not self.embedded_redis and configured:
            health = redis_ping(configured)
            if not health.healthy:
                raise StartupError(
                    f"the Redis at REDIS_URL={configured} does not answer PING ({health.detail}); "
                    "start it, or unset REDIS_URL to use an embedded one"
                )
            self.state.redis = RedisState(
                url=configured, embedded=False, key_prefix=self.settings.redis.key_prefix
            )
        else:
            self._redis = EmbeddedRedis(self.data.logs)
            try:
                self._redis.start()
            except (RuntimeError, TimeoutError, OSError) as exc:
                raise StartupError(f"the embedded Redis did not start: {exc}") from None
            self._redis_tracker.started(time.monotonic())
            self.state.redis = self._redis_state()
        log.info("Redis at %s, keys under %s:", self.state.redis.url, self.state.redis.key_prefix)
        write_state(self.data, self.state)

    def _create_topics(self) -> None:
        from mlbus.events import ALL_TOPICS, INGEST_VALIDATED

        topics = set(ALL_TOPICS)
        if self.settings.spec is not None:
            topics.update(spec_source_topics(self.settings.spec))
            # long enough to rebuild the feature state from it (ADR 0012, Redis loss)
            self._retention_s = {INGEST_VALIDATED: spec_replay_horizon_s(self.settings.spec)}
        self._topics = sorted(topics)
        try:
            asyncio.run(create_topics(self._kafka(), self._topics, self._retention_s))
        except (TimeoutError, OSError, MlbusError) as exc:
            raise StartupError(f"could not create the mlbus topics: {exc}") from None
        except Exception as exc:  # aiokafka's own errors share no base class worth naming
            raise StartupError(
                f"could not create the mlbus topics: {type(exc).__name__}: {exc}"
            ) from None
        log.info("%d topics ready", len(self._topics))

    def _start_services(self) -> None:
        installed, missing = split_installed(self.catalogue)
        self.state.not_installed = [spec.name for spec in missing]
        if missing:
            log.info("not installed (skipped): %s", ", ".join(self.state.not_installed))
        if self.settings.spec is None:
            self.state.needs_spec = [spec.name for spec in installed if spec.needs_spec]
            installed = [spec for spec in installed if not spec.needs_spec]
            if self.state.needs_spec:
                log.info("no --spec (skipped): %s", ", ".join(self.state.needs_spec))
        running = self._running_settings()
        taken: set[int] = set()
        # Ports first: services that call the registry are told where it really listens.
        grpc_ports = {
            spec.name: _pick_port(spec.grpc_port, taken) for spec in installed if spec.serves_grpc
        }
        http_ports = {
            spec.name: _pick_port(spec.http_port, taken) for spec in installed if spec.serves_http
        }
        registry_port = grpc_ports.get("registry")
        registry_address = None if registry_port is None else f"127.0.0.1:{registry_port}"
        for spec in installed:
            grpc_port = grpc_ports.get(spec.name)
            http_port = http_ports.get(spec.name)
            metrics_port = _pick_port(None, taken)
            env = spec.environment(running, grpc_port, metrics_port, registry_address, http_port)
            service = ServiceProcess(
                spec,
                env=env,
                log_path=self.data.logs / f"{spec.name}.log",
                policy=self.policy,
                grpc_port=grpc_port,
                metrics_port=metrics_port,
                http_port=http_port,
            )
            service.start(time.monotonic())
            self.services.append(service)
            self.state.services[spec.name] = service.state()
            log.info("service %s started (pid %s)", spec.name, service.state().pid)

    # -- watch ------------------------------------------------------------------------

    def _watch(self) -> int:
        while not self._stop_requested:
            time.sleep(self.poll_interval_s)
            if self._stop_requested:
                break
            now = time.monotonic()
            changed = False
            if self._broker is not None and not self._broker.alive():
                if not self._restart_infra("broker", now):
                    return 1
                changed = True
            if self._redis is not None and not self._redis.alive():
                if not self._restart_infra("redis", now):
                    return 1
                changed = True
            for service in self.services:
                event = service.poll(now)
                if event is not None:
                    changed = True
                    log.log(_LOG_LEVELS.get(service.status, logging.INFO), "%s", event)
                    self.state.services[service.name] = service.state()
            if changed:
                write_state(self.data, self.state)
        return 0

    def _restart_infra(self, which: str, now: float) -> bool:
        """Start a crashed embedded broker or Redis again on its port; False to give up."""
        child: EmbeddedBroker | EmbeddedRedis | None = (
            self._broker if which == "broker" else self._redis
        )
        tracker = self._broker_tracker if which == "broker" else self._redis_tracker
        assert child is not None
        while True:
            delay_s = tracker.crashed(now)
            if delay_s is None:
                log.error(
                    "the embedded %s crashed %d times in a row; stopping everything; see %s:\n%s",
                    which,
                    tracker.rapid_crashes,
                    child.log_path,
                    tail(child.log_path, 10),
                )
                return False
            log.warning("the embedded %s exited; restarting it in %.1f s", which, delay_s)
            child.stop()
            if self._sleep(delay_s):
                return True  # a stop was requested meanwhile
            now = time.monotonic()
            try:
                child.start()
                if which == "broker":
                    asyncio.run(create_topics(self._kafka(), self._topics, self._retention_s))
            except Exception as exc:  # try again under the same policy
                log.warning("restarting the embedded %s failed: %s", which, exc)
                tracker.started(now)
                continue
            tracker.started(now)
            if which == "broker":
                self.state.broker = self._broker_state()
            else:
                self.state.redis = self._redis_state()
            log.warning("the embedded %s is back (pid %s)", which, child.pid)
            return True

    # -- stop -------------------------------------------------------------------------

    def _stop(self) -> None:
        """Stop services, then Redis, then the broker; each within the grace period."""
        self.state.status = "stopping"
        with contextlib.suppress(OSError):
            write_state(self.data, self.state)
        procs = [s.proc for s in self.services if s.proc is not None]
        if procs:
            log.info("stopping %d service(s)", len(procs))
            terminate_all(procs, self.grace_s)
        for service in self.services:
            service.status = "stopped"
        if self._redis is not None:
            log.info("stopping the embedded Redis")
            self._redis.stop()
        if self._broker is not None:
            log.info("stopping the embedded broker")
            self._broker.stop()

    # -- helpers ----------------------------------------------------------------------

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.request_stop()
            if self._starting:
                raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early on a stop request; True if a stop was requested."""
        deadline = time.monotonic() + seconds
        while not self._stop_requested and time.monotonic() < deadline:
            time.sleep(min(self.poll_interval_s, max(0.0, deadline - time.monotonic())))
        return self._stop_requested

    def _kafka(self) -> KafkaSettings:
        assert self.state.broker is not None
        return self.settings.kafka.model_copy(
            update={"bootstrap_servers": self.state.broker.bootstrap_servers}
        )

    def _running_settings(self) -> MlbusSettings:
        """The settings handed to services: this run's broker and Redis addresses."""
        assert self.state.broker is not None
        assert self.state.redis is not None
        return self.settings.model_copy(
            update={
                "kafka": self._kafka(),
                "redis": self.settings.redis.model_copy(update={"url": self.state.redis.url}),
            }
        )

    def _broker_state(self) -> BrokerState:
        assert self._broker is not None
        return BrokerState(
            bootstrap_servers=self._broker.bootstrap_servers,
            pid=self._broker.pid,
            embedded=True,
            log=self._broker.log_path,
            restarts=self._broker_tracker.restarts,
        )

    def _redis_state(self) -> RedisState:
        assert self._redis is not None
        return RedisState(
            url=self._redis.url,
            key_prefix=self.settings.redis.key_prefix,
            pid=self._redis.pid,
            embedded=True,
            log=self._redis.log_path,
            restarts=self._redis_tracker.restarts,
        )


async def create_topics(
    kafka: KafkaSettings,
    topics: Iterable[str],
    retention_s: Mapping[str, int] | None = None,
    timeout_s: float = 30,
) -> None:
    """Every topic in `topics`, created if missing (with `retention_s`), within `timeout_s`."""
    from mlbus.bus import ensure_topics

    async with asyncio.timeout(timeout_s):
        await ensure_topics(kafka, topics, retention_s=retention_s)


def spec_source_topics(path: Path) -> list[str]:
    """The source topics a spec declares (a bad spec raises `SpecError`, a `ConfigError`)."""
    try:
        from mlbus.spec import load_spec
    except ModuleNotFoundError as exc:  # an install without the spec loader
        if exc.name != "mlbus.spec":
            raise
        log.warning("the spec loader (mlbus.spec) is not installed: source topics not created")
        return []
    return sorted(load_spec(path).topics())


def spec_replay_horizon_s(path: Path) -> int:
    """How long the validated topic keeps events for this spec (`replay_horizon_s`);
    0 (the broker's default) without the spec loader."""
    try:
        from mlbus.spec import load_spec
    except ModuleNotFoundError as exc:
        if exc.name != "mlbus.spec":
            raise
        return 0
    return load_spec(path).replay_horizon_s()


def _pick_port(preferred: int | None, taken: set[int]) -> int:
    """`preferred` when nobody listens there, else a free loopback port; never one in `taken`."""
    port = preferred
    if port is None or port in taken or port_open(LOOPBACK, port):
        port = free_port()
        while port in taken:
            port = free_port()
    taken.add(port)
    return port
