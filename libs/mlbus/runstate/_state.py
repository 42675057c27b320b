"""The state of a running `mlbus up`, shared with other commands through the data folder.

`mlbus up` holds an exclusive `flock` on `<data>/run/up.lock` for as long as it
runs (`RunLock`, in the shell's `mlbus.runtime`) and rewrites
`<data>/run/state.json` atomically (temporary file + rename) whenever something
changes: addresses, pids, restarts. Any other process reads that file to find
the broker, Redis and the services (`discover`, `mlbus status`).

A state file left behind by a crashed `mlbus up` is recognised by its
supervisor pid no longer being alive, and is replaced by the next `mlbus up`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from mlbus.config import DataDir, MlbusSettings
from mlbus.errors import MlbusError

log = logging.getLogger(__name__)

S = TypeVar("S", bound=MlbusSettings)

ServiceStatus = Literal["starting", "running", "restarting", "failed", "stopped"]
SupervisorStatus = Literal["starting", "running", "stopping"]


class BrokerState(BaseModel):
    """Where the Kafka-compatible broker answers; `pid` only when `mlbus up` runs it."""

    bootstrap_servers: str
    pid: int | None = None
    embedded: bool
    log: Path | None = None
    restarts: int = 0


class RedisState(BaseModel):
    """Where the online store answers; `pid` only when `mlbus up` runs it."""

    url: str
    key_prefix: str = Field(
        default="mlbus", description="Prefix of every key this instance writes (ADR 0021)."
    )
    pid: int | None = None
    embedded: bool
    log: Path | None = None
    restarts: int = 0


class ServiceState(BaseModel):
    """One supervised mlbus service."""

    pid: int | None = None
    status: ServiceStatus = "starting"
    restarts: int = 0
    grpc_port: int | None = None
    metrics_port: int | None = None
    log: Path
    http_port: int | None = None


class RunState(BaseModel):
    """Everything `mlbus up` tells other processes about itself."""

    supervisor_pid: int
    status: SupervisorStatus = "starting"
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    data_dir: Path
    spec: Path | None = None
    broker: BrokerState | None = None
    redis: RedisState | None = None
    services: dict[str, ServiceState] = Field(default_factory=dict)
    not_installed: list[str] = Field(
        default_factory=list, description="Catalogue services whose module is not installed."
    )
    needs_spec: list[str] = Field(
        default_factory=list, description="Installed services not started: no --spec was given."
    )

    def grpc_address(self, service: str, host: str = "127.0.0.1") -> str | None:
        """`host:port` of a service's gRPC server, if it runs one."""
        found = self.services.get(service)
        if found is None or found.grpc_port is None:
            return None
        return f"{host}:{found.grpc_port}"

    def http_url(self, service: str, host: str = "127.0.0.1") -> str | None:
        """`http://host:port/` of a service's web server (the console), if it runs one."""
        found = self.services.get(service)
        if found is None or found.http_port is None:
            return None
        return f"http://{host}:{found.http_port}/"

    def pids(self) -> dict[str, int]:
        """Every process `mlbus up` started, by component name (the supervisor excluded)."""
        pids: dict[str, int] = {}
        if self.broker is not None and self.broker.pid is not None:
            pids["broker"] = self.broker.pid
        if self.redis is not None and self.redis.pid is not None:
            pids["redis"] = self.redis.pid
        for name, service in self.services.items():
            if service.pid is not None:
                pids[name] = service.pid
        return pids


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # a zombie (dead, not yet reaped) is gone for every purpose here
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def write_state(data: DataDir, state: RunState) -> None:
    """Replace the state file atomically: readers see the old or the new file, never half."""
    data.ensure(data.run)
    tmp = data.run_state.with_name(f".{data.run_state.name}.{os.getpid()}.tmp")
    tmp.write_text(state.model_dump_json(indent=2) + "\n")
    tmp.replace(data.run_state)


def read_state(data: DataDir) -> RunState | None:
    """The state file as written, alive or stale; None when absent or unreadable."""
    try:
        text = data.run_state.read_text()
    except FileNotFoundError:
        return None
    try:
        return RunState.model_validate_json(text)
    except ValidationError as exc:
        log.warning("ignoring unreadable run state %s: %s", data.run_state, exc)
        return None


def live_state(data: DataDir) -> RunState | None:
    """The state of the `mlbus up` running in this data folder, or None (absent or stale)."""
    state = read_state(data)
    if state is None or not pid_alive(state.supervisor_pid):
        return None
    return state


def remove_state(data: DataDir) -> None:
    with contextlib.suppress(FileNotFoundError):
        data.run_state.unlink()


INSTANCE_PREFIX_PATTERN = re.compile(r"^mlbus:[0-9a-f]{8}$")


def read_instance_prefix(data: DataDir) -> str | None:
    """The Redis key prefix of the instance in this data folder, if `mlbus up` ever ran there."""
    try:
        text = data.instance.read_text().strip()
    except FileNotFoundError:
        return None
    if not INSTANCE_PREFIX_PATTERN.match(text):
        raise MlbusError(
            f"{data.instance} holds {text!r}, not an instance prefix (mlbus:<8 hex>); "
            "remove the file to get a new one"
        )
    return text


def instance_prefix(data: DataDir) -> str:
    """This data folder's Redis key prefix, `mlbus:<8 hex>`, made once and kept (ADR 0021).

    Two instances (two data folders) sharing one Redis never read each other's
    keys: de-duplication marks, feature state and drift state all start with it.
    """
    found = read_instance_prefix(data)
    if found is not None:
        return found
    data.ensure(data.root)
    made = f"mlbus:{secrets.token_hex(4)}"
    tmp = data.instance.with_name(f".instance.{os.getpid()}.tmp")
    tmp.write_text(made + "\n")
    try:  # link, not rename: a concurrent maker keeps its own, and we read it back
        os.link(tmp, data.instance)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return read_instance_prefix(data) or made


def with_key_prefix(settings: S, prefix: str | None) -> S:
    """`settings` with `prefix` as the Redis key prefix, unless one was set explicitly."""
    if prefix is None or "key_prefix" in settings.redis.model_fields_set:
        return settings
    redis = settings.redis.model_copy(update={"key_prefix": prefix})
    redis.model_fields_set.add("key_prefix")  # handed down to children as set
    return settings.model_copy(update={"redis": redis})


def discover(settings: S) -> S:
    """Fill unset broker and Redis addresses and the key prefix from the data folder.

    Addresses set explicitly (environment, flags) always win; so does an explicit
    `MLBUS_REDIS_KEY_PREFIX`. Without a running `mlbus up` the addresses stay
    unset, and `require_bootstrap()` / `require_url()` say how to start one; the
    key prefix is still the data folder's instance prefix once `mlbus up` ran there.
    """
    state = live_state(settings.data)
    if state is None:
        return with_key_prefix(settings, read_instance_prefix(settings.data))
    update: dict[str, object] = {}
    if not settings.kafka.bootstrap_servers and state.broker is not None:
        update["kafka"] = settings.kafka.model_copy(
            update={"bootstrap_servers": state.broker.bootstrap_servers}
        )
    if not settings.redis.url and state.redis is not None:
        redis = settings.redis.model_copy(update={"url": state.redis.url})
        redis.model_fields_set.update(settings.redis.model_fields_set)
        update["redis"] = redis
    found = settings.model_copy(update=update) if update else settings
    prefix = state.redis.key_prefix if state.redis is not None else None
    return with_key_prefix(found, prefix or read_instance_prefix(settings.data))
