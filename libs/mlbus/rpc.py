"""What every mlbus gRPC server shares: errors to status codes, bearer auth, tracing.

Exceptions become gRPC status codes in exactly one place, `ErrorInterceptor`:
an `MlbusError` carries its own status (`InvalidInput` → INVALID_ARGUMENT,
`NotFound` → NOT_FOUND, `RetryableError` → UNAVAILABLE, …) and its message,
which names what was wrong; anything else is a bug → INTERNAL, logged with
its traceback, and the caller sees only the exception type. A request whose
bytes do not parse as the method's message is INVALID_ARGUMENT naming the
type, without a traceback in the log (grpc itself would answer UNKNOWN and
log one per call: found by the soak's fuzzing).

    server = grpc.aio.server(interceptors=server_interceptors(token=settings.auth_token))

And how a server starts and stops: `start_serving` / `stop_serving` (what health checks
report, then the server; `mark_serving` alone), `ServerLifecycle` (`async with` for a class with
`start()` / `stop(grace_s)`) and `stop_on_signals` (what a serving process waits for).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import grpc
import grpc.aio
from pydantic import SecretStr

from mlbus._grpcutil import Behavior, Deserializer, HandlerWrapping, InterceptorChain, Wrapper
from mlbus.errors import ConfigError, InvalidInput, MlbusError
from mlbus.telemetry import MetricsServerInterceptor, TracingServerInterceptor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Undecodable:
    """What a request deserializer returns for bytes that are not the method's message."""

    message_type: str
    reason: str

    def details(self) -> str:
        return f"the request is not a valid {self.message_type}: {self.reason}"


def _tolerant(deserializer: Deserializer) -> Deserializer:
    """`deserializer`, returning an `Undecodable` instead of raising on bad bytes."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    message_type = getattr(descriptor, "full_name", "request message")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or whatever a hand-written one raises
            return Undecodable(message_type, str(exc) or type(exc).__name__)

    return parse


async def _abort_for(exc: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    if isinstance(exc, MlbusError):
        await context.abort(exc.grpc_status, str(exc) or type(exc).__name__)
    log.exception("unexpected error in %s", method, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"
    )


class ErrorInterceptor(HandlerWrapping):
    """Turns exceptions raised by handlers into gRPC status codes (the only place that does)."""

    def wrapper_for(self, method: str) -> Wrapper:
        return _guard(method)

    def deserializer_for(
        self, method: str, deserializer: Deserializer | None, unary_request: bool
    ) -> Deserializer | None:
        # Only where `_guard` sees the request itself: a streamed request arrives in an iterator.
        return (
            _tolerant(deserializer) if unary_request and deserializer is not None else deserializer
        )


def _guard(method: str) -> Callable[[Behavior], Behavior]:
    def wrap(behavior: Behavior) -> Behavior:
        if inspect.isasyncgenfunction(behavior):

            async def guarded_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details())
                try:
                    async for response in behavior(request, context):
                        yield response
                except (grpc.aio.AbortError, GeneratorExit):
                    raise
                except Exception as exc:
                    await _abort_for(exc, context, method)

            return guarded_stream

        async def guarded(request: Any, context: Any) -> Any:
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details())
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort_for(exc, context, method)

        if inspect.iscoroutinefunction(behavior):
            return guarded

        def guarded_sync(request: Any, context: Any) -> Any:
            if isinstance(request, Undecodable):
                context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                context.set_details(request.details())
                return None
            return behavior(request, context)

        return guarded_sync

    return wrap


class BearerAuthInterceptor(HandlerWrapping):
    """Requires `authorization: Bearer <token>` on the methods `protects` says yes to."""

    def __init__(self, token: SecretStr, protects: Callable[[str], bool]) -> None:
        self._expected = f"Bearer {token.get_secret_value()}".encode()
        self._protects = protects
        super().__init__()

    def wrapper_for(self, method: str) -> Wrapper:
        if not self._protects(method):
            return _unchanged
        message = f"{method} needs 'authorization: Bearer <token>' metadata"
        expected = self._expected

        def authorized(context: Any) -> bool:
            given = dict(context.invocation_metadata() or ()).get("authorization", "")
            given_bytes = given.encode() if isinstance(given, str) else bytes(given)
            return hmac.compare_digest(given_bytes, expected)

        def wrap(behavior: Behavior) -> Behavior:
            if inspect.isasyncgenfunction(behavior):

                async def guarded_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                    if not authorized(context):
                        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
                    async for response in behavior(request, context):
                        yield response

                return guarded_stream

            async def guarded(request: Any, context: Any) -> Any:
                if not authorized(context):
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
                return await behavior(request, context)

            return guarded if inspect.iscoroutinefunction(behavior) else behavior

        return wrap


def _unchanged(behavior: Behavior) -> Behavior:
    return behavior


def server_interceptors(
    token: SecretStr | None = None,
    protects: Callable[[str], bool] = lambda method: True,
    data_plane: Callable[[str], bool] | None = None,
) -> list[grpc.aio.ServerInterceptor]:
    """Metrics and tracing first (so they see the final status), then auth, then error mapping.

    One interceptor that runs them all (`InterceptorChain`). `data_plane` names
    the per-request methods traced by sampling (docs/adr/0004).
    """
    links: list[HandlerWrapping] = [
        MetricsServerInterceptor(),
        TracingServerInterceptor(data_plane=data_plane),
    ]
    if token is not None:
        links.append(BearerAuthInterceptor(token, protects))
    links.append(ErrorInterceptor())
    return [InterceptorChain(links)]


def timestamp_ms(message: Any, field: str) -> int | None:
    """`message.<field>` (a google.protobuf.Timestamp) in epoch ms; None when unset.

    Out-of-range seconds or nanos are `InvalidInput` naming the field: protobuf's
    own `ToMilliseconds` raises a bare ValueError, which would answer INTERNAL
    (found by the soak's fuzzing: Predict with `event_time.nanos = -1`).
    """
    if not message.HasField(field):
        return None
    stamp = getattr(message, field)
    if not (_MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS and 0 <= stamp.nanos < 1_000_000_000):
        raise InvalidInput(
            f"{field} is not a valid timestamp (seconds {stamp.seconds}, nanos {stamp.nanos}); "
            "expected 0001-01-01 to 9999-12-31 and nanos in [0, 999999999]"
        )
    return int(stamp.seconds) * 1000 + int(stamp.nanos) // 1_000_000


_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z, as google.protobuf.Timestamp defines
_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z


def add_health_and_reflection(server: grpc.aio.Server, services: Sequence[str]) -> Any:
    """gRPC health checking and server reflection for `services` (full names).

    Returns the health servicer: set `""` and each service SERVING when ready,
    and call `enter_graceful_shutdown()` when stopping.
    """
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio
    from grpc_reflection.v1alpha import reflection

    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection((*services, health_name, reflection.SERVICE_NAME), server)
    return health


def bind_port(server: grpc.aio.Server, host: str, port: int, variable: str) -> int:
    """Listen on `host:port` (0 picks a free port); a taken port is a clear `ConfigError`."""
    address = f"{host}:{port}"
    try:
        bound = int(server.add_insecure_port(address))
    except RuntimeError as exc:
        bound, reason = 0, str(exc)
    else:
        reason = "the port is taken"
    if not bound:
        raise ConfigError(
            f"cannot serve gRPC on {address} ({reason}); set {variable} to a free port, "
            "or 0 to pick one"
        )
    return bound


async def mark_serving(health: Any, services: Sequence[str]) -> None:
    """Report the process (`""`) and each of `services` SERVING (once the server started)."""
    from grpc_health.v1 import health_pb2

    for name in ("", *services):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)


async def start_serving(
    server: grpc.aio.Server, services: Sequence[str], *, host: str, port: int, variable: str
) -> tuple[int, Any]:
    """Health and reflection for `services`, `server` bound (`bind_port`), started and
    reported SERVING. Returns the bound port and the health servicer (for `stop_serving`)."""
    health = add_health_and_reflection(server, services)
    bound = bind_port(server, host, port, variable)
    await server.start()
    await mark_serving(health, services)
    return bound, health


async def stop_serving(server: grpc.aio.Server, health: Any, grace_s: float) -> None:
    """NOT_SERVING first, so balancers stop sending; then refuse new calls and give
    the calls in flight `grace_s` to finish."""
    await health.enter_graceful_shutdown()
    await server.stop(grace_s)


class ServerLifecycle:
    """`async with` for a server with `start()` and an idempotent `stop(grace_s)`.

    A `start()` that fails half-way is followed by `stop(0)`: what it had
    started is stopped at once, without waiting for calls that never came.
    """

    async def start(self) -> Self:
        raise NotImplementedError

    async def stop(self, grace_s: float | None = None) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            return await self.start()
        except BaseException:
            await self.stop(0)
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()  # with the grace period: in-flight calls finish, also on an error


def stop_on_signals(
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> asyncio.Event:
    """An event the running loop sets on any of `signals`: what a serving process waits for."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    return stop
