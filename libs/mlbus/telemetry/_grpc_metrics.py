"""Request rate, latency and errors of every gRPC server, as metrics (what the dashboard plots).

`MetricsServerInterceptor` counts each answered call by service, method and
status code (`mlbus_rpc_server_requests_total`) and records its duration in
milliseconds (`mlbus_rpc_server_duration_ms`, a histogram). Put it first in
the chain, like the tracing interceptor, so it sees the status the error
interceptor chose. Unlike traces, metrics are not sampled.

These two series are aggregated here, not by OpenTelemetry instruments: an
SDK `Histogram.record` costs ~5 µs on an idle machine and took ~10% of
ModelInfer's saturated throughput (docs/adr/0019). A call is one list
increment on the event loop; `RpcServerMetrics`, a collector on the
process's Prometheus registry (the one the telemetry's metrics port
serves), turns the counts into the same series, names and labels the
OpenTelemetry exporter gave them, when Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import itertools
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from mlbus._grpcutil import Behavior, HandlerWrapping, Wrapper
from mlbus.telemetry._grpc import _as_status_code, _context_code, _rpc_names

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

CallKey = tuple[str, str, str]
"""(rpc.service, rpc.method, rpc.grpc.status_code)"""

LABELS = ("rpc_service", "rpc_method", "rpc_grpc_status_code")

BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
    1000.0, 2500.0, 5000.0, 10000.0,
)  # fmt: skip
"""Upper bounds of the duration buckets: sub-millisecond ModelInfer up to a slow training call."""


class RpcServerMetrics:
    """Calls per `CallKey`, bucketed by duration on the event loop, reported when scraped.

    A Prometheus collector: `collect()` runs in the metrics server's thread and
    reads a copy of each key's counts, so a scrape never sees a count that its
    buckets do not add up to.
    """

    def __init__(self) -> None:
        # Per key: one count per bucket, one for +Inf, then the sum of durations.
        self._calls: dict[CallKey, list[float]] = {}

    def record(self, key: CallKey, elapsed_ms: float) -> None:
        entry = self._calls.get(key)
        if entry is None:
            entry = self._calls[key] = [0] * (len(BUCKETS_MS) + 1) + [0.0]
        entry[bisect.bisect_left(BUCKETS_MS, elapsed_ms)] += 1  # `le` bounds are inclusive
        entry[-1] += elapsed_ms

    def describe(self) -> Iterator[Metric]:
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        return self._families(list(self._calls.items()))

    @staticmethod
    def _families(calls: list[tuple[CallKey, list[float]]]) -> Iterator[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        requests = CounterMetricFamily(
            "mlbus_rpc_server_requests",
            "gRPC calls answered, by rpc.service, rpc.method and status code",
            labels=LABELS,
        )
        durations = HistogramMetricFamily(
            "mlbus_rpc_server_duration_ms",
            "gRPC call duration in milliseconds, by rpc.service, rpc.method and code",
            labels=LABELS,
        )
        bounds = [floatToGoString(b) for b in (*BUCKETS_MS, float("inf"))]  # type: ignore[no-untyped-call]
        for key, entry in calls:
            snapshot = list(entry)  # the event loop keeps counting while we read
            cumulative = list(itertools.accumulate(snapshot[:-1]))
            requests.add_metric(key, cumulative[-1])
            durations.add_metric(key, list(zip(bounds, cumulative, strict=True)), snapshot[-1])
        yield requests
        yield durations


# One collector per registry: a registry refuses a second one with the same names,
# and every server of the process adds to the same series.
_metrics_of: weakref.WeakKeyDictionary[CollectorRegistry, RpcServerMetrics] = (
    weakref.WeakKeyDictionary()
)


def rpc_server_metrics(registry: CollectorRegistry | None = None) -> RpcServerMetrics:
    """The RPC metrics of `registry` (default: the one this process's metrics port serves)."""
    if registry is None:
        from mlbus.telemetry._setup import active_telemetry

        handle = active_telemetry()
        if handle is not None:
            registry = handle.metrics_registry
        else:  # what `setup_telemetry` serves once it runs
            from prometheus_client import REGISTRY

            registry = REGISTRY
    found = _metrics_of.get(registry)
    if found is None:
        found = _metrics_of[registry] = RpcServerMetrics()
        registry.register(found)
    return found


class MetricsServerInterceptor(HandlerWrapping):
    """Counts and times every call of the async handlers it wraps."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._metrics = rpc_server_metrics(registry)
        super().__init__()

    def wrapper_for(self, full_method: str) -> Wrapper:
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
        """Records one call of `service`/`method`; each status's key built once."""
        keys: dict[str, CallKey] = {}
        record = self._metrics.record

        def recorder(context: Any, error: BaseException | None, started: float) -> None:
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            code = _status_name(context, error)
            key = keys.get(code)
            if key is None:
                key = keys[code] = (service, method, code)
            record(key, elapsed_ms)

        return recorder


def _status_name(context: Any, error: BaseException | None) -> str:
    code: Any = _context_code(context)
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    unhandled = error is not None and not isinstance(error, grpc.aio.AbortError)
    if unhandled and (code is None or code == grpc.StatusCode.OK):
        return "UNKNOWN"  # what grpc answers for an unhandled exception
    return "OK" if code is None else str(_as_status_code(code).name)
