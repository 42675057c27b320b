"""Every gRPC server counts and times its calls by method and status code (real grpc.aio server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry

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


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    """`name`'s samples by (rpc_method, rpc_grpc_status_code), as Prometheus scrapes them."""
    found: dict[tuple[str, str], float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                labels = sample.labels
                found[(labels["rpc_method"], labels["rpc_grpc_status_code"])] = sample.value
    return found


async def test_calls_are_counted_and_timed_by_method_and_final_status() -> None:
    registry = CollectorRegistry()
    server = grpc.aio.server(interceptors=[MetricsServerInterceptor(registry), ErrorInterceptor()])
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

    assert samples(registry, "mlbus_rpc_server_requests_total") == {
        ("Echo", "OK"): 3,
        ("Invalid", "INVALID_ARGUMENT"): 1,
        ("Count", "OK"): 1,
    }
    counts = samples(registry, "mlbus_rpc_server_duration_ms_count")
    assert counts == {("Echo", "OK"): 3, ("Invalid", "INVALID_ARGUMENT"): 1, ("Count", "OK"): 1}
    assert all(
        value > 0 for value in samples(registry, "mlbus_rpc_server_duration_ms_sum").values()
    )


async def test_servers_sharing_a_registry_count_into_one_series() -> None:
    # A registry refuses a second collector with the same names: the second
    # server's interceptor must count into the first one's series.
    registry = CollectorRegistry()
    servers = []
    for _ in range(2):
        server = grpc.aio.server(interceptors=[MetricsServerInterceptor(registry)])
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
    assert samples(registry, "mlbus_rpc_server_requests_total") == {("Echo", "OK"): 3}


@pytest.mark.parametrize("chained", [False, True], ids=["three interceptors", "one chain"])
async def test_traced_and_untraced_calls_share_the_chain_each_counted_traced_and_mapped(
    chained: bool,
) -> None:
    """Wrapped handlers are cached per method and the tracing decision is made per call:
    spans only for traced calls, every call counted and mapped, whether the three run as
    separate interceptors or as one `InterceptorChain` (what `server_interceptors` builds)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mlbus._grpcutil import InterceptorChain
    from mlbus.telemetry import TracingServerInterceptor, _sampling

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    data_plane = ("/mlbus.test.Echo/Echo", "/mlbus.test.Echo/Invalid").__contains__
    links = [
        MetricsServerInterceptor(registry),
        TracingServerInterceptor(tracer_provider, data_plane=data_plane),
        ErrorInterceptor(),
    ]
    server = grpc.aio.server(interceptors=[InterceptorChain(links)] if chained else links)
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

    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["mlbus.test.Echo/Echo", "mlbus.test.Echo/Invalid"] * 2
    assert {span.context.trace_id for span in spans} == {0x4BF92F3577B34DA6A3CE929D0E0E4736}
    assert samples(registry, "mlbus_rpc_server_requests_total") == {
        ("Echo", "OK"): 6,
        ("Invalid", "INVALID_ARGUMENT"): 6,
    }
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


def test_durations_fall_in_cumulative_buckets_whose_bounds_are_inclusive() -> None:
    from mlbus.telemetry._grpc_metrics import BUCKETS_MS, rpc_server_metrics

    registry = CollectorRegistry()
    metrics = rpc_server_metrics(registry)
    assert rpc_server_metrics(registry) is metrics  # one collector per registry
    key = ("mlbus.test.Echo", "Echo", "OK")
    for elapsed_ms in (0.05, 0.1, 0.11, 3.0, 60_000.0):
        metrics.record(key, elapsed_ms)
    labels = {"rpc_service": "mlbus.test.Echo", "rpc_method": "Echo", "rpc_grpc_status_code": "OK"}

    def bucket(le: str) -> float | None:
        return registry.get_sample_value(
            "mlbus_rpc_server_duration_ms_bucket", {**labels, "le": le}
        )

    assert BUCKETS_MS[:2] == (0.1, 0.25)
    assert bucket("0.1") == 2  # 0.05 and exactly 0.1
    assert bucket("0.25") == 3
    assert bucket("2.5") == 3
    assert bucket("5.0") == 4
    assert bucket("10000.0") == 4
    assert bucket("+Inf") == 5
    assert registry.get_sample_value("mlbus_rpc_server_duration_ms_count", labels) == 5
    assert registry.get_sample_value("mlbus_rpc_server_duration_ms_sum", labels) == pytest.approx(
        60_003.26
    )
    assert registry.get_sample_value("mlbus_rpc_server_requests_total", labels) == 5
