"""gRPC interceptors against a real grpc.aio server on 127.0.0.1: context crosses the wire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from mlbus.config import MlbusSettings, TelemetrySettings
from mlbus.telemetry import (
    Telemetry,
    TracingServerInterceptor,
    read_spans,
    setup_telemetry,
    tracing_client_interceptors,
)
from mlbus.telemetry.spans import SpanRecord


class Services:
    """Client and server telemetry (separate providers, one span folder)."""

    def __init__(self, tmp_path: Path) -> None:
        settings = MlbusSettings(
            data_dir=tmp_path, telemetry=TelemetrySettings(otlp_endpoint=None, metrics_port=None)
        )
        self.spans_dir = settings.data.spans
        self.client = setup_telemetry("cli", settings, install_global=False)
        self.server = setup_telemetry("inference", settings, install_global=False)

    def shutdown(self) -> None:
        self.client.shutdown()
        self.server.shutdown()

    def spans(self) -> dict[str, list[SpanRecord]]:
        self.shutdown()
        by_key: dict[str, list[SpanRecord]] = {}
        for record in read_spans(self.spans_dir):
            by_key.setdefault(f"{record.kind}:{record.name}", []).append(record)
        return by_key


@pytest.fixture
def telemetry(tmp_path: Path) -> Iterator[Services]:
    services = Services(tmp_path)
    yield services
    services.shutdown()


def build_handlers(server_telemetry: Telemetry) -> grpc.GenericRpcHandler:
    tracer = server_telemetry.tracer("handler")

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        with tracer.start_as_current_span("score"):  # must nest under the server span
            metadata = dict(context.invocation_metadata())
            return f"{request.decode()} {metadata.get('x-request-id')}".encode()

    async def missing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no model 'fraud'")
        raise AssertionError("abort() returned")

    async def broken(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise ValueError("bad tensor")

    async def count(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()

    async def total(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        return str(sum([int(r) async for r in requests])).encode()

    async def double(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for r in requests:
            yield r * 2

    return grpc.method_handlers_generic_handler(
        "mlbus.test.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Missing": grpc.unary_unary_rpc_method_handler(missing),
            "Broken": grpc.unary_unary_rpc_method_handler(broken),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Total": grpc.stream_unary_rpc_method_handler(total),
            "Double": grpc.stream_stream_rpc_method_handler(double),
        },
    )


@pytest.fixture
async def server_address(telemetry: Services) -> AsyncIterator[str]:
    server = grpc.aio.server(
        interceptors=[TracingServerInterceptor(telemetry.server.tracer_provider)]
    )
    server.add_generic_rpc_handlers([build_handlers(telemetry.server)])
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


@pytest.fixture
async def channel(telemetry: Services, server_address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(
        server_address,
        interceptors=tracing_client_interceptors(telemetry.client.tracer_provider),
    ) as chan:
        yield chan


async def test_server_span_is_child_of_client_span(
    telemetry: Services, channel: grpc.aio.Channel
) -> None:
    outer_tracer = telemetry.client.tracer("cli")
    with outer_tracer.start_as_current_span("mlbus predict") as outer:
        reply = await channel.unary_unary("/mlbus.test.Echo/Echo")(
            b"ping", timeout=5, metadata=(("x-request-id", "r-1"),)
        )
    assert reply == b"ping r-1"  # the caller's own metadata survives the injection

    spans = telemetry.spans()
    (client,) = spans["CLIENT:mlbus.test.Echo/Echo"]
    (server,) = spans["SERVER:mlbus.test.Echo/Echo"]
    (score,) = spans["INTERNAL:score"]
    assert client.parent_span_id == f"{outer.get_span_context().span_id:016x}"
    assert server.trace_id == client.trace_id == f"{outer.get_span_context().trace_id:032x}"
    assert server.parent_span_id == client.span_id
    assert score.parent_span_id == server.span_id
    assert (client.service, server.service) == ("mlbus-cli", "mlbus-inference")
    for record in (client, server):
        assert record.attributes == {
            "rpc.system": "grpc",
            "rpc.service": "mlbus.test.Echo",
            "rpc.method": "Echo",
            "rpc.grpc.status_code": 0,
        }
        assert record.status == "UNSET"


async def test_protobuf_service_is_traced(telemetry: Services, channel: grpc.aio.Channel) -> None:
    stub: Any = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING

    spans = telemetry.spans()
    (client,) = spans["CLIENT:grpc.health.v1.Health/Check"]
    (server,) = spans["SERVER:grpc.health.v1.Health/Check"]
    assert server.parent_span_id == client.span_id
    assert server.attributes["rpc.service"] == "grpc.health.v1.Health"


async def test_abort_status_is_recorded_not_swallowed(
    telemetry: Services, channel: grpc.aio.Channel
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/mlbus.test.Echo/Missing")(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no model 'fraud'"

    spans = telemetry.spans()
    (client,) = spans["CLIENT:mlbus.test.Echo/Missing"]
    (server,) = spans["SERVER:mlbus.test.Echo/Missing"]
    assert server.parent_span_id == client.span_id
    assert client.attributes["rpc.grpc.status_code"] == server.attributes["rpc.grpc.status_code"]
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert server.status == "UNSET"  # a caller's mistake is not a server error
    assert client.status == "ERROR"
    assert client.status_message == "NOT_FOUND: no model 'fraud'"


async def test_handler_exception_propagates_and_marks_the_span(
    telemetry: Services, channel: grpc.aio.Channel
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/mlbus.test.Echo/Broken")(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNKNOWN  # grpc's answer: the error reached it

    spans = telemetry.spans()
    (server,) = spans["SERVER:mlbus.test.Echo/Broken"]
    assert server.status == "ERROR"
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNKNOWN.value[0]
    (event,) = server.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "bad tensor"


async def wait_for_client_spans(telemetry: Services, count: int) -> None:
    """Streaming client spans end from the call's done callback, a moment after the last read."""
    for _ in range(200):
        telemetry.client.force_flush()
        if sum(r.kind == "CLIENT" for r in read_spans(telemetry.spans_dir)) >= count:
            return
        await asyncio.sleep(0.01)


async def test_streaming_calls_are_traced(telemetry: Services, channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream("/mlbus.test.Echo/Count")(b"3", timeout=5)
    assert [item async for item in call] == [b"0", b"1", b"2"]

    async def numbers() -> AsyncIterator[bytes]:
        for n in (b"1", b"2", b"4"):
            yield n

    assert await channel.stream_unary("/mlbus.test.Echo/Total")(numbers(), timeout=5) == b"7"
    both = channel.stream_stream("/mlbus.test.Echo/Double")(numbers(), timeout=5)
    assert [item async for item in both] == [b"11", b"22", b"44"]
    await wait_for_client_spans(telemetry, 3)

    spans = telemetry.spans()
    for method in ("Count", "Total", "Double"):
        (client,) = spans[f"CLIENT:mlbus.test.Echo/{method}"]
        (server,) = spans[f"SERVER:mlbus.test.Echo/{method}"]
        assert server.parent_span_id == client.span_id
        assert client.attributes["rpc.grpc.status_code"] == 0
        assert server.attributes["rpc.grpc.status_code"] == 0
        assert client.end_ns >= server.end_ns


async def test_untraced_caller_gets_a_root_server_span(
    telemetry: Services, server_address: str
) -> None:
    async with grpc.aio.insecure_channel(server_address) as plain:
        await plain.unary_unary("/mlbus.test.Echo/Echo")(b"x", timeout=5)
    (server,) = telemetry.spans()["SERVER:mlbus.test.Echo/Echo"]
    assert server.parent_span_id is None
    assert "CLIENT:mlbus.test.Echo/Echo" not in telemetry.spans()


async def test_an_untraced_probe_gets_no_span(telemetry: Services, server_address: str) -> None:
    """A health check outside any trace (a kubelet, `mlbus up`) starts no trace of its own."""
    async with grpc.aio.insecure_channel(server_address) as plain:
        stub: Any = health_pb2_grpc.HealthStub(plain)
        for _ in range(3):
            response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        await plain.unary_unary("/mlbus.test.Echo/Echo")(b"x", timeout=5)
    spans = telemetry.spans()
    assert "SERVER:grpc.health.v1.Health/Check" not in spans
    assert len(spans["SERVER:mlbus.test.Echo/Echo"]) == 1  # other methods still are
