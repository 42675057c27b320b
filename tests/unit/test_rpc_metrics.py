"""Every gRPC server counts and times its calls by method and status code (real grpc.aio server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from mlbus.errors import InvalidInput
from mlbus.rpc import ErrorInterceptor
from mlbus.telemetry import MetricsServerInterceptor


def handlers() -> grpc.GenericRpcHandler:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def invalid(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise InvalidInput("input 'x': expected shape [1, 20]")

    async def count(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for i in range(3):
            yield str(i).encode()

    return grpc.method_handlers_generic_handler(
        "mlbus.test.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Invalid": grpc.unary_unary_rpc_method_handler(invalid),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )


def points(reader: InMemoryMetricReader, name: str) -> dict[tuple[str, str], Any]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[tuple[str, str], Any] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        attrs = point.attributes
                        found[(attrs["rpc.method"], attrs["rpc.grpc.status_code"])] = point
    return found


async def test_calls_are_counted_and_timed_by_method_and_final_status() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    server = grpc.aio.server(interceptors=[MetricsServerInterceptor(provider), ErrorInterceptor()])
    server.add_generic_rpc_handlers([handlers()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/mlbus.test.Echo/Echo")
            for _ in range(3):
                assert await echo(b"hi") == b"hi"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/mlbus.test.Echo/Invalid")(b"")
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            streamed = [r async for r in channel.unary_stream("/mlbus.test.Echo/Count")(b"")]
            assert streamed == [b"0", b"1", b"2"]
    finally:
        await server.stop(grace=None)

    requests = points(reader, "mlbus.rpc.server.requests")
    assert {key: p.value for key, p in requests.items()} == {
        ("Echo", "OK"): 3,
        ("Invalid", "INVALID_ARGUMENT"): 1,
        ("Count", "OK"): 1,
    }
    durations = points(reader, "mlbus.rpc.server.duration_ms")
    assert durations[("Echo", "OK")].count == 3
    assert durations[("Invalid", "INVALID_ARGUMENT")].count == 1
    assert all(p.sum > 0 for p in durations.values())
    provider.shutdown()


async def test_servers_sharing_a_meter_provider_count_into_one_counter() -> None:
    # The SDK keeps only the first callbacks registered for an instrument name:
    # a second interceptor's calls must still be counted.
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    servers = []
    for _ in range(2):
        server = grpc.aio.server(interceptors=[MetricsServerInterceptor(provider)])
        server.add_generic_rpc_handlers([handlers()])
        servers.append((server, server.add_insecure_port("127.0.0.1:0")))
        await server.start()
    try:
        for calls, (_, port) in enumerate(servers, start=1):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                for _ in range(calls):
                    await channel.unary_unary("/mlbus.test.Echo/Echo")(b"hi")
    finally:
        for server, _ in servers:
            await server.stop(grace=None)
    assert points(reader, "mlbus.rpc.server.requests")[("Echo", "OK")].value == 3
    provider.shutdown()


async def test_traced_and_untraced_calls_share_the_chain_each_counted_traced_and_mapped() -> None:
    """Wrapped handlers are cached per method; a traced call's own handler must not be served
    from (or poison) that cache: spans only for traced calls, every call counted and mapped."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mlbus.telemetry import TracingServerInterceptor, _sampling

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    data_plane = ("/mlbus.test.Echo/Echo", "/mlbus.test.Echo/Invalid").__contains__
    server = grpc.aio.server(
        interceptors=[
            MetricsServerInterceptor(provider),
            TracingServerInterceptor(tracer_provider, data_plane=data_plane),
            ErrorInterceptor(),
        ]
    )
    server.add_generic_rpc_handlers([handlers()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sampled = (("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),)
    saved = _sampling._data_ratio
    _sampling.set_data_sample_ratio(0.0)  # only callers that sampled their trace are traced
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/mlbus.test.Echo/Echo")
            invalid = channel.unary_unary("/mlbus.test.Echo/Invalid")
            for metadata in ((), sampled, (), (), sampled, ()):
                assert await echo(b"hi", metadata=metadata) == b"hi"
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await invalid(b"", metadata=metadata)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "expected shape [1, 20]" in (caught.value.details() or "")
    finally:
        _sampling.set_data_sample_ratio(saved)
        await server.stop(grace=None)

    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["mlbus.test.Echo/Echo", "mlbus.test.Echo/Invalid"] * 2
    requests = points(reader, "mlbus.rpc.server.requests")
    assert {key: p.value for key, p in requests.items()} == {
        ("Echo", "OK"): 6,
        ("Invalid", "INVALID_ARGUMENT"): 6,
    }
    provider.shutdown()
    tracer_provider.shutdown()


def test_a_method_is_wrapped_once_and_rewrapped_when_its_handler_changes() -> None:
    from mlbus._grpcutil import WrappedHandlers

    built: list[str] = []

    def wrapper_for(method: str) -> Any:
        built.append(method)
        return lambda behavior: behavior

    def handler() -> grpc.RpcMethodHandler:
        async def behavior(request: bytes, context: object) -> bytes:
            return request

        return grpc.unary_unary_rpc_method_handler(behavior)

    cache = WrappedHandlers(wrapper_for)
    first, second = handler(), handler()
    wrapped = cache.get("/s/M", first)
    assert cache.get("/s/M", first) is wrapped
    assert built == ["/s/M"]
    other = cache.get("/s/M", second)
    assert other.unary_unary is second.unary_unary
    rebuilt = cache.get("/s/M", first)
    assert rebuilt.unary_unary is first.unary_unary
    assert built == ["/s/M"] * 3


def test_a_call_finished_outside_a_running_loop_is_still_timed() -> None:
    """A streaming handler finalised after its loop stopped records its duration at once."""
    import time

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    record = MetricsServerInterceptor(provider)._recorder("mlbus.test.Echo", "Count")

    class Finished:
        def code(self) -> None:
            return None

    record(Finished(), None, time.perf_counter())  # no running loop here
    durations = points(reader, "mlbus.rpc.server.duration_ms")
    assert durations[("Count", "OK")].count == 1
    provider.shutdown()
