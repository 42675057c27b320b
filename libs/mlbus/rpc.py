"""What every mlbus gRPC server shares: errors to status codes, bearer auth, tracing.

Exceptions become gRPC status codes in exactly one place, `ErrorInterceptor`:
an `MlbusError` carries its own status (`InvalidInput` → INVALID_ARGUMENT,
`NotFound` → NOT_FOUND, `RetryableError` → UNAVAILABLE, …) and its message,
which names what was wrong; anything else is a bug → INTERNAL, logged with
its traceback, and the caller sees only the exception type.

    server = grpc.aio.server(interceptors=server_interceptors(token=settings.auth_token))
"""

from __future__ import annotations

import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from pydantic import SecretStr

from mlbus._grpcutil import Behavior, HandlerWrapping, InterceptorChain, Wrapper
from mlbus.errors import ConfigError, MlbusError
from mlbus.telemetry import MetricsServerInterceptor, TracingServerInterceptor

log = logging.getLogger(__name__)


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


def _guard(method: str) -> Callable[[Behavior], Behavior]:
    def wrap(behavior: Behavior) -> Behavior:
        if inspect.isasyncgenfunction(behavior):

            async def guarded_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    async for response in behavior(request, context):
                        yield response
                except (grpc.aio.AbortError, GeneratorExit):
                    raise
                except Exception as exc:
                    await _abort_for(exc, context, method)

            return guarded_stream

        async def guarded(request: Any, context: Any) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort_for(exc, context, method)

        return guarded if inspect.iscoroutinefunction(behavior) else behavior

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
