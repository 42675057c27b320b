"""Live health checks of what a run state names: broker, Redis, services.

Every check has a short timeout and returns a `Health`, never raises: a status
report must come back quickly even when everything is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel

from mlbus.config import KafkaSettings, MlbusSettings
from mlbus.runstate._state import RunState, pid_alive

DEFAULT_TIMEOUT_S = 3.0


class Health(BaseModel):
    """One component as `mlbus status` reports it."""

    healthy: bool
    address: str | None = None
    pid: int | None = None
    embedded: bool | None = None
    status: str | None = None
    restarts: int | None = None
    log: Path | None = None
    detail: str = ""


class SupervisorReport(BaseModel):
    pid: int
    alive: bool
    status: str
    started_at: datetime


class StatusReport(BaseModel):
    """The whole answer of `mlbus status --json`."""

    data_dir: Path
    supervisor: SupervisorReport | None = None
    components: dict[str, Health] = {}
    not_installed: list[str] = []
    needs_spec: list[str] = []

    @property
    def healthy(self) -> bool:
        return (
            self.supervisor is not None
            and self.supervisor.alive
            and self.supervisor.status == "running"
            and all(c.healthy for c in self.components.values())
        )


async def kafka_health(kafka: KafkaSettings, timeout_s: float = DEFAULT_TIMEOUT_S) -> Health:
    """A metadata request to the broker; healthy when it answers within `timeout_s`."""
    from aiokafka.admin import AIOKafkaAdminClient

    address = kafka.bootstrap_servers
    kwargs = kafka.client_kwargs()
    kwargs["request_timeout_ms"] = max(1, int(timeout_s * 1000))
    admin = AIOKafkaAdminClient(**kwargs)
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            cluster: dict[str, Any] = await admin.describe_cluster()
            topics: list[str] = await admin.list_topics()
    except Exception as exc:  # any failure means "not healthy"; say which
        return Health(healthy=False, address=address, detail=_describe(exc))
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    brokers = len(cluster.get("brokers", []))
    return Health(
        healthy=True, address=address, detail=f"{brokers} broker(s), {len(topics)} topic(s)"
    )


def redis_ping(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Health:
    """PING over RESP (with AUTH when the URL carries a password); healthy on +PONG."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            sock: socket.socket = raw
            if parts.scheme == "rediss":
                sock = ssl.create_default_context().wrap_socket(raw, server_hostname=host)
            if parts.password:
                auth = [unquote(parts.username)] if parts.username else []
                _send(sock, ["AUTH", *auth, unquote(parts.password)])
                reply = sock.recv(256)
                if not reply.startswith(b"+OK"):
                    return Health(healthy=False, address=url, detail=_reply(reply))
            _send(sock, ["PING"])
            reply = sock.recv(256)
    except (OSError, ssl.SSLError) as exc:
        return Health(healthy=False, address=url, detail=_describe(exc))
    if reply.startswith(b"+PONG"):
        return Health(healthy=True, address=url)
    return Health(healthy=False, address=url, detail=_reply(reply))


def http_health(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Health:
    """GET `<url>healthz`; healthy on a 200 answer within `timeout_s`."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}healthz", timeout=timeout_s) as answer:
            code = int(answer.status)
    except urllib.error.HTTPError as exc:
        return Health(healthy=False, address=url, detail=f"HTTP {exc.code}")
    except (OSError, ValueError) as exc:
        return Health(healthy=False, address=url, detail=_describe(exc))
    return Health(healthy=code == 200, address=url, detail=f"HTTP {code}")


def grpc_health(address: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Health | None:
    """The standard gRPC health check; None when `grpcio-health-checking` is absent."""
    try:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:
        return None
    try:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        return Health(healthy=False, address=address, detail=f"gRPC health: {code or exc}")
    serving = answer.status == health_pb2.HealthCheckResponse.SERVING
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return Health(healthy=serving, address=address, detail=f"gRPC health: {name}")


async def check_run(
    state: RunState, settings: MlbusSettings, timeout_s: float = DEFAULT_TIMEOUT_S
) -> StatusReport:
    """Check every component a run state names, concurrently, each within `timeout_s`."""
    supervisor_alive = pid_alive(state.supervisor_pid)
    report = StatusReport(
        data_dir=state.data_dir,
        supervisor=SupervisorReport(
            pid=state.supervisor_pid,
            alive=supervisor_alive,
            status=state.status,
            started_at=state.started_at,
        ),
        not_installed=list(state.not_installed),
        needs_spec=list(state.needs_spec),
    )
    checks: dict[str, asyncio.Future[Health]] = {}
    if state.broker is not None:
        kafka = settings.kafka.model_copy(
            update={"bootstrap_servers": state.broker.bootstrap_servers}
        )
        checks["broker"] = asyncio.ensure_future(kafka_health(kafka, timeout_s))
    if state.redis is not None:
        checks["redis"] = asyncio.ensure_future(
            asyncio.to_thread(redis_ping, state.redis.url, timeout_s)
        )
    for name in state.services:
        checks[name] = asyncio.ensure_future(
            asyncio.to_thread(_service_health, name, state, timeout_s)
        )
    results = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))

    if state.broker is not None:
        broker = results["broker"]
        report.components["broker"] = broker.model_copy(
            update={
                "pid": state.broker.pid,
                "embedded": state.broker.embedded,
                "restarts": state.broker.restarts,
                "log": state.broker.log,
            }
        )
    if state.redis is not None:
        redis = results["redis"]
        report.components["redis"] = redis.model_copy(
            update={
                "pid": state.redis.pid,
                "embedded": state.redis.embedded,
                "restarts": state.redis.restarts,
                "log": state.redis.log,
            }
        )
    for name in state.services:
        report.components[name] = results[name]
    return report


def _service_health(name: str, state: RunState, timeout_s: float) -> Health:
    service = state.services[name]
    address = state.grpc_address(name) or state.http_url(name)
    base = Health(
        healthy=False,
        address=address,
        pid=service.pid,
        status=service.status,
        restarts=service.restarts,
        log=service.log,
    )
    if service.status != "running":
        return base.model_copy(update={"detail": service.status})
    if service.pid is None or not pid_alive(service.pid):
        return base.model_copy(update={"detail": "process not running"})
    url = state.http_url(name)
    if url is not None:
        answered = http_health(url, timeout_s)
        return base.model_copy(update={"healthy": answered.healthy, "detail": answered.detail})
    if address is not None:
        checked = grpc_health(address, timeout_s)
        if checked is not None:
            return base.model_copy(update={"healthy": checked.healthy, "detail": checked.detail})
    return base.model_copy(update={"healthy": True})


def _send(sock: socket.socket, words: list[str]) -> None:
    encoded = [word.encode() for word in words]
    frame = b"*%d\r\n" % len(encoded) + b"".join(
        b"$%d\r\n%s\r\n" % (len(word), word) for word in encoded
    )
    sock.sendall(frame)


def _reply(reply: bytes) -> str:
    return reply.decode(errors="replace").strip() or "no reply"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}".rstrip(": ")
