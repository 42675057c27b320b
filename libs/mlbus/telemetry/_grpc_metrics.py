"""Request rate, latency and errors of every gRPC server, as metrics (what the dashboard plots).

`MetricsServerInterceptor` counts each answered call by service, method and
status code (`mlbus.rpc.server.requests`) and records its duration in
milliseconds (`mlbus.rpc.server.duration_ms`). Put it first in the chain, like
the tracing interceptor, so it sees the status the error interceptor chose.
Unlike traces, metrics are not sampled: an add and a record cost a few
microseconds against a call of hundreds.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from opentelemetry import metrics

from mlbus._grpcutil import Behavior, rewrap_handler
from mlbus.telemetry._grpc import _as_status_code, _context_code, _rpc_names


class MetricsServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every call of the async handlers it wraps."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        if meter_provider is not None:
            meter = meter_provider.get_meter("mlbus.rpc")
        else:
            from mlbus.telemetry._setup import meter as process_meter

            meter = process_meter("mlbus.rpc")
        self._requests = meter.create_counter(
            "mlbus.rpc.server.requests",
            description="gRPC calls answered, by rpc.service, rpc.method and status code",
        )
        self._duration = meter.create_histogram(
            "mlbus.rpc.server.duration_ms",
            description="gRPC call duration in milliseconds, by rpc.service, rpc.method and code",
        )

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        _, service, method = _rpc_names(details.method)

        def wrap(behavior: Behavior) -> Behavior:
            if inspect.isasyncgenfunction(behavior):

                async def counted_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                    started = time.perf_counter()
                    error: BaseException | None = None
                    try:
                        async for response in behavior(request, context):
                            yield response
                    except BaseException as exc:
                        error = exc
                        raise
                    finally:
                        self._record(service, method, context, error, started)

                return counted_stream
            if inspect.iscoroutinefunction(behavior):

                async def counted(request: Any, context: Any) -> Any:
                    started = time.perf_counter()
                    error: BaseException | None = None
                    try:
                        return await behavior(request, context)
                    except BaseException as exc:
                        error = exc
                        raise
                    finally:
                        self._record(service, method, context, error, started)

                return counted
            return behavior

        return rewrap_handler(handler, wrap)

    def _record(
        self,
        service: str,
        method: str,
        context: Any,
        error: BaseException | None,
        started: float,
    ) -> None:
        attributes = {
            "rpc.service": service,
            "rpc.method": method,
            "rpc.grpc.status_code": _status_name(context, error),
        }
        self._requests.add(1, attributes)
        self._duration.record((time.perf_counter() - started) * 1000.0, attributes)


def _status_name(context: Any, error: BaseException | None) -> str:
    code: Any = _context_code(context)
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    unhandled = error is not None and not isinstance(error, grpc.aio.AbortError)
    if unhandled and (code is None or code == grpc.StatusCode.OK):
        return "UNKNOWN"  # what grpc answers for an unhandled exception
    return "OK" if code is None else str(_as_status_code(code).name)
