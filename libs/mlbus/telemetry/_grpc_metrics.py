"""Request rate, latency and errors of every gRPC server, as metrics (what the dashboard plots).

`MetricsServerInterceptor` counts each answered call by service, method and
status code (`mlbus.rpc.server.requests`) and records its duration in
milliseconds (`mlbus.rpc.server.duration_ms`). Put it first in the chain, like
the tracing interceptor, so it sees the status the error interceptor chose.
Unlike traces, metrics are not sampled. With the SDK installed, the request
count is a dict increment per call that an observable counter reports at
collection (an SDK `Counter.add` costs ~10 µs, a tenth of a small call's
server time); the duration is one histogram record, made on the next turn of
the event loop so that it is not on the response's path.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Meter as SdkMeter

from mlbus._grpcutil import Behavior, WrappedHandlers
from mlbus.telemetry._grpc import _as_status_code, _context_code, _rpc_names

_REQUESTS_DESCRIPTION = "gRPC calls answered, by rpc.service, rpc.method and status code"

CallKey = tuple[str, str, str]
"""(rpc.service, rpc.method, rpc.grpc.status_code)"""


class _CallCounts:
    """Calls answered per `CallKey`, counted on the event loop, reported when metrics are read."""

    def __init__(self) -> None:
        self.counts: dict[CallKey, int] = {}

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                count,
                {"rpc.service": service, "rpc.method": method, "rpc.grpc.status_code": code},
            )
            for (service, method, code), count in list(self.counts.items())
        ]


# An SDK meter makes one instrument per name and keeps only the first callbacks
# it was given: every interceptor on that meter shares the first one's counts.
_counts_of: weakref.WeakKeyDictionary[Any, _CallCounts] = weakref.WeakKeyDictionary()


def _call_counts(meter: SdkMeter) -> _CallCounts:
    counts = _CallCounts()
    instrument = meter.create_observable_counter(
        "mlbus.rpc.server.requests", callbacks=[counts.observe], description=_REQUESTS_DESCRIPTION
    )
    return _counts_of.setdefault(instrument, counts)


class MetricsServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every call of the async handlers it wraps."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        if meter_provider is not None:
            meter = meter_provider.get_meter("mlbus.rpc")
        else:
            from mlbus.telemetry._setup import meter as process_meter

            meter = process_meter("mlbus.rpc")
        # No SDK yet (a proxy meter): a plain counter, which follows the SDK once installed.
        self._counts: dict[CallKey, int] | None = None
        self._requests: metrics.Counter | None = None
        if isinstance(meter, SdkMeter):
            self._counts = _call_counts(meter).counts
        else:
            self._requests = meter.create_counter(
                "mlbus.rpc.server.requests", description=_REQUESTS_DESCRIPTION
            )
        self._duration = meter.create_histogram(
            "mlbus.rpc.server.duration_ms",
            description="gRPC call duration in milliseconds, by rpc.service, rpc.method and code",
        )
        self._handlers = WrappedHandlers(self._counter)

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        return self._handlers.get(details.method, handler)

    def _counter(self, full_method: str) -> Callable[[Behavior], Behavior]:
        _, service, method = _rpc_names(full_method)
        record = self._recorder(service, method)

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
                        record(context, error, started)

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
                        record(context, error, started)

                return counted
            return behavior

        return wrap

    def _recorder(
        self, service: str, method: str
    ) -> Callable[[Any, BaseException | None, float], None]:
        """Records one call of `service`/`method`; each status's key and attributes built once."""
        keys: dict[str, tuple[CallKey, dict[str, str]]] = {}
        counts, requests, duration = self._counts, self._requests, self._duration

        def record(context: Any, error: BaseException | None, started: float) -> None:
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            code = _status_name(context, error)
            entry = keys.get(code)
            if entry is None:
                attributes = {
                    "rpc.service": service,
                    "rpc.method": method,
                    "rpc.grpc.status_code": code,
                }
                entry = keys[code] = ((service, method, code), attributes)
            key, attributes = entry
            if counts is not None:
                counts[key] = counts.get(key, 0) + 1
            else:
                assert requests is not None
                requests.add(1, attributes)
            # The SDK's record (~7 µs) runs after the response is handed to grpc, not before;
            # a stream finalised after its loop stopped records at once.
            try:
                asyncio.get_running_loop().call_soon(duration.record, elapsed_ms, attributes)
            except RuntimeError:
                duration.record(elapsed_ms, attributes)

        return record


def _status_name(context: Any, error: BaseException | None) -> str:
    code: Any = _context_code(context)
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    unhandled = error is not None and not isinstance(error, grpc.aio.AbortError)
    if unhandled and (code is None or code == grpc.StatusCode.OK):
        return "UNKNOWN"  # what grpc answers for an unhandled exception
    return "OK" if code is None else str(_as_status_code(code).name)
