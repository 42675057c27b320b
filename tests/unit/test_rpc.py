"""Errors become gRPC status codes in one interceptor; bearer auth guards what it should.

A real grpc.aio server on loopback with a generic handler, no stubs needed.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable

import grpc
import grpc.aio
import pytest
from pydantic import SecretStr

from mlbus.errors import ConfigError, InvalidInput, ModelNotReady, NotFound, RetryableError
from mlbus.rpc import add_health_and_reflection, bind_port, server_interceptors

SERVICE = "test.Echo"


def _identity(data: bytes) -> bytes:
    return data


async def _serve(
    behaviours: dict[str, Callable[..., object]], token: SecretStr | None = None
) -> tuple[grpc.aio.Server, str]:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_identity, response_serializer=_identity
        )
        for name, fn in behaviours.items()
    }
    server = grpc.aio.server(
        interceptors=server_interceptors(token, protects=lambda m: m.endswith("/Write"))
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def endpoint() -> AsyncIterator[str]:
    async def ok(request: bytes, context: object) -> bytes:
        return b"echo:" + request

    async def invalid(request: bytes, context: object) -> bytes:
        raise InvalidInput("input 'x': expected FP32 [1, 20], got INT64 [1, 3]")

    async def missing(request: bytes, context: object) -> bytes:
        raise NotFound("model 'fraud' version 9 not found")

    async def down(request: bytes, context: object) -> bytes:
        raise RetryableError("online store unavailable: connection refused")

    async def loading(request: bytes, context: object) -> bytes:
        raise ModelNotReady("model 'fraud' is loading")

    async def bug(request: bytes, context: object) -> bytes:
        raise KeyError("secret internal detail")

    server, address = await _serve(
        {"Ok": ok, "Invalid": invalid, "Missing": missing, "Down": down, "Loading": loading,
         "Bug": bug, "Write": ok}
    )  # fmt: skip
    yield address
    await server.stop(grace=None)


async def call(address: str, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = channel.unary_unary(
            f"/{SERVICE}/{method}", request_serializer=_identity, response_deserializer=_identity
        )
        response: bytes = await stub(b"hi", metadata=metadata, timeout=5)
        return response


async def test_a_successful_call_is_untouched(endpoint: str) -> None:
    assert await call(endpoint, "Ok") == b"echo:hi"


@pytest.mark.parametrize(
    ("method", "code", "fragment"),
    [
        ("Invalid", grpc.StatusCode.INVALID_ARGUMENT, "input 'x': expected FP32"),
        ("Missing", grpc.StatusCode.NOT_FOUND, "version 9 not found"),
        ("Down", grpc.StatusCode.UNAVAILABLE, "online store unavailable"),
        ("Loading", grpc.StatusCode.UNAVAILABLE, "is loading"),
    ],
)
async def test_mlbus_errors_map_to_their_status_with_their_message(
    endpoint: str, method: str, code: grpc.StatusCode, fragment: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(endpoint, method)
    assert caught.value.code() == code
    assert fragment in (caught.value.details() or "")


async def test_an_unexpected_exception_is_internal_and_hides_its_details(endpoint: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(endpoint, "Bug")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "KeyError" in (caught.value.details() or "")
    assert "secret internal detail" not in (caught.value.details() or "")


async def test_bearer_token_guards_only_protected_methods() -> None:
    async def ok(request: bytes, context: object) -> bytes:
        return b"done"

    server, address = await _serve({"Write": ok, "Read": ok}, token=SecretStr("s3cret"))
    try:
        assert await call(address, "Read") == b"done"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(address, "Write")
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await call(address, "Write", (("authorization", "Bearer nope"),))
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await call(address, "Write", (("authorization", "Bearer s3cret"),)) == b"done"
    finally:
        await server.stop(grace=None)


async def test_a_taken_port_is_a_config_error_naming_the_variable() -> None:
    # A plain listener (no SO_REUSEPORT, unlike gRPC's own) holds the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = grpc.aio.server()
        try:
            with pytest.raises(ConfigError, match="MLBUS_TEST_GRPC_PORT"):
                bind_port(server, "127.0.0.1", port, "MLBUS_TEST_GRPC_PORT")
            assert bind_port(server, "127.0.0.1", 0, "MLBUS_TEST_GRPC_PORT") > 0
        finally:
            await server.stop(grace=None)


async def test_health_and_reflection_answer_for_the_named_services() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = grpc.aio.server()
    health = add_health_and_reflection(server, ("test.Echo",))
    port = bind_port(server, "127.0.0.1", 0, "MLBUS_TEST_GRPC_PORT")
    await server.start()
    try:
        await health.set("test.Echo", health_pb2.HealthCheckResponse.SERVING)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service="test.Echo"), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(grace=None)


async def test_data_plane_methods_are_traced_by_sampling_others_every_call() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mlbus.telemetry import TracingServerInterceptor, _sampling

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def ok(request: bytes, context: object) -> bytes:
        return b"ok"

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            ok, request_deserializer=_identity, response_serializer=_identity
        )
        for name in ("Hot", "Cold")
    }
    server = grpc.aio.server(
        interceptors=[TracingServerInterceptor(provider, data_plane=lambda m: m.endswith("/Hot"))]
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    address = f"127.0.0.1:{bind_port(server, '127.0.0.1', 0, 'MLBUS_TEST_GRPC_PORT')}"
    await server.start()
    saved = _sampling._data_ratio
    _sampling.set_data_sample_ratio(0.0)  # no new data-plane traces; sampled callers continue
    try:
        await call(address, "Hot")
        await call(address, "Cold")
        sampled = (("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),)
        await call(address, "Hot", sampled)
        spans = exporter.get_finished_spans()
        assert [s.name for s in spans] == [f"{SERVICE}/Cold", f"{SERVICE}/Hot"]
        assert format(spans[1].context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    finally:
        _sampling.set_data_sample_ratio(saved)
        await server.stop(grace=None)
        provider.shutdown()


async def test_undecodable_request_bytes_are_invalid_argument_naming_the_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # grpc alone answers UNKNOWN and logs a traceback per call (found by the soak's fuzzing).
    from grpc_health.v1 import health_pb2

    reached: list[object] = []

    async def check(request: object, context: object) -> health_pb2.HealthCheckResponse:
        reached.append(request)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def watch(request: object, context: object) -> AsyncIterator[object]:
        reached.append(request)
        yield health_pb2.HealthCheckResponse()

    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            check,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            watch,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
    }
    server = grpc.aio.server(interceptors=server_interceptors())
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

            async def garbage(method: str) -> None:
                if method == "Watch":
                    async for _ in channel.unary_stream(f"/{SERVICE}/Watch")(
                        b"\xff\xff", timeout=5
                    ):
                        pass
                else:
                    await channel.unary_unary(f"/{SERVICE}/Check")(b"\xff\xff", timeout=5)

            for method in ("Check", "Watch"):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await garbage(method)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
                assert "not a valid grpc.health.v1.HealthCheckRequest" in (
                    caught.value.details() or ""
                )
            assert await channel.unary_unary(f"/{SERVICE}/Check")(b"", timeout=5)
    finally:
        await server.stop(grace=None)
    assert len(reached) == 1  # only the good call reached the handler
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_timestamps_out_of_protobufs_range_are_invalid_input_naming_the_field() -> None:
    from mlbus.api.inference.v1 import predict_pb2
    from mlbus.rpc import timestamp_ms

    request = predict_pb2.PredictRequest()
    assert timestamp_ms(request, "event_time") is None
    request.event_time.seconds, request.event_time.nanos = 1_700_000_000, 5_000_000
    assert timestamp_ms(request, "event_time") == 1_700_000_000_005
    for seconds, nanos in ((1, -1), ((1 << 63) - 1, 0), (-(1 << 62), 0), (1, 1_000_000_000)):
        request.event_time.seconds, request.event_time.nanos = seconds, nanos
        with pytest.raises(InvalidInput, match="event_time is not a valid timestamp"):
            timestamp_ms(request, "event_time")
