"""Trace context through gRPC metadata, one span per call (grpc.aio).

Server side, `TracingServerInterceptor` continues the caller's trace from the
`traceparent` metadata and wraps the handler in a SERVER span that is
current while the handler runs (so its logs, Kafka sends and outgoing calls
join the trace). It records the final status code and re-raises whatever
the handler raised: turning exceptions into status codes is the job of the
error interceptor. Put the tracing interceptor *first* in the server's list
so it sees the status that interceptor chose.

Client side, `tracing_client_interceptors()` returns one interceptor per
call shape (grpc.aio sorts interceptors by shape); each opens a CLIENT span
as a child of the current span and injects it into the call's metadata.

    server = grpc.aio.server(interceptors=[TracingServerInterceptor(), ErrorInterceptor()])
    channel = grpc.aio.insecure_channel(addr, interceptors=tracing_client_interceptors())

Spans follow the OpenTelemetry RPC conventions: name `pkg.Service/Method`,
attributes `rpc.system=grpc`, `rpc.service`, `rpc.method`,
`rpc.grpc.status_code`. Synchronous handlers (run by grpc in a thread pool)
are passed through untraced.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
import grpc.aio
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import SpanKind, Status, StatusCode

import mlbus
from mlbus._grpcutil import HandlerWrapping
from mlbus.telemetry._sampling import presample_data_record

_SCOPE = "mlbus.telemetry.grpc"

# Server spans are errors only for codes that mean the server failed
# (OpenTelemetry RPC conventions); a client span is an error for any non-OK.
_SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

Metadatum = tuple[str, str | bytes]


class _MetadataGetter(Getter[Iterable[Metadatum]]):
    def get(self, carrier: Iterable[Metadatum], key: str) -> list[str] | None:
        values = [
            v.decode("latin-1") if isinstance(v, bytes) else str(v)
            for k, v in carrier
            if k.lower() == key
        ]
        return values or None

    def keys(self, carrier: Iterable[Metadatum]) -> list[str]:
        return [k for k, _ in carrier]


class _MetadataSetter(Setter[Any]):
    def set(self, carrier: Any, key: str, value: str) -> None:
        carrier[key] = value  # grpc.aio.Metadata: replaces any previous value


_GETTER = _MetadataGetter()
_SETTER = _MetadataSetter()


def extract_grpc_context(metadata: Iterable[Metadatum] | None) -> Context:
    """The trace context a caller put in this call's metadata (empty if none)."""
    return propagate.extract(tuple(metadata or ()), getter=_GETTER)


def inject_grpc_metadata(metadata: Any, context: Context | None = None) -> Any:
    """A `grpc.aio.Metadata` with `metadata`'s entries plus the current trace context."""
    result = grpc.aio.Metadata(*tuple(metadata or ()))
    propagate.inject(result, context=context, setter=_SETTER)
    return result


def _rpc_names(method: str | bytes) -> tuple[str, str, str]:
    """`/pkg.Service/Method` → (span name, service, method)."""
    text = method.decode() if isinstance(method, bytes) else str(method)
    service, _, name = text.lstrip("/").rpartition("/")
    return (f"{service}/{name}" if service else name or "grpc"), service, name


def _attributes(service: str, method: str) -> dict[str, str]:
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def _as_status_code(value: object) -> Any:
    if isinstance(value, grpc.StatusCode):
        return value
    for code in grpc.StatusCode:  # some grpc versions keep the int or (int, str)
        if value == code.value[0] or value == code.value:
            return code
    return grpc.StatusCode.UNKNOWN


def _get_tracer(tracer_provider: trace.TracerProvider | None) -> trace.Tracer:
    if tracer_provider is not None:
        return tracer_provider.get_tracer(_SCOPE, mlbus.__version__)
    from mlbus.telemetry._setup import tracer

    return tracer(_SCOPE)


def _end_span(span: trace.Span, code: Any, details: str | None, *, server: bool) -> None:
    span.set_attribute("rpc.grpc.status_code", int(code.value[0]))
    failed = code in _SERVER_ERROR_CODES if server else code != grpc.StatusCode.OK
    if failed:
        description = f"{code.name}: {details}" if details else code.name
        span.set_status(Status(StatusCode.ERROR, description))
    span.end()


# ── server ──────────────────────────────────────────────────────────────────

Behavior = Callable[[Any, Any], Any]


class TracingServerInterceptor(HandlerWrapping):
    """A SERVER span per call, continuing the trace from the caller's metadata.

    Methods `data_plane` says yes to (e.g. ModelInfer) are sampled like bus records
    (docs/adr/0004): a call whose caller sampled its trace is traced; otherwise
    only `data_sample_ratio` of them start a trace and the rest get no span at all.
    Probes (health checks, reflection) are traced only inside a caller's sampled
    trace: a kubelet or `mlbus up` asking every few seconds would otherwise start
    thousands of one-span traces a day that say nothing.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        data_plane: Callable[[str], bool] | None = None,
    ) -> None:
        self._tracer = _get_tracer(tracer_provider)
        self._data_plane = data_plane
        super().__init__()

    def wrapper_for(self, method: str) -> Callable[[Behavior], Behavior]:
        span_name, service, name = _rpc_names(method)
        attributes = _attributes(service, name)
        sampled_only = self._data_plane is not None and self._data_plane(method)
        if method.startswith(PROBE_METHODS):
            parent_of = _caller_sampled_parent
        else:
            parent_of = _sampled_parent if sampled_only else _parent
        tracer = self._tracer

        def start(parent: Context) -> Any:
            return tracer.start_as_current_span(
                span_name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
                end_on_exit=False,
            )

        def wrap(behavior: Behavior) -> Behavior:
            if inspect.isasyncgenfunction(behavior):

                async def traced_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                    parent = parent_of(context.invocation_metadata())
                    if parent is None:
                        async for response in behavior(request, context):
                            yield response
                        return
                    with start(parent) as span:
                        try:
                            async for response in behavior(request, context):
                                yield response
                        except BaseException as exc:
                            _end_server_span(span, context, exc)
                            raise
                        _end_server_span(span, context, None)

                return traced_stream

            if inspect.iscoroutinefunction(behavior):

                async def traced(request: Any, context: Any) -> Any:
                    parent = parent_of(context.invocation_metadata())
                    if parent is None:
                        return await behavior(request, context)
                    with start(parent) as span:
                        try:
                            response = await behavior(request, context)
                        except BaseException as exc:
                            _end_server_span(span, context, exc)
                            raise
                        _end_server_span(span, context, None)
                        return response

                return traced

            return behavior

        return wrap


PROBE_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Method prefixes of probes: traced only as part of a caller's sampled trace."""


def _parent(metadata: Iterable[Metadatum] | None) -> Context:
    return extract_grpc_context(metadata)


def _caller_sampled_parent(metadata: Iterable[Metadatum] | None) -> Context | None:
    """The caller's context when its trace is sampled; None: this call gets no span."""
    metadata = metadata or ()
    if not any(key == "traceparent" for key, _ in metadata):
        return None
    parent = extract_grpc_context(metadata)
    sampled = trace.get_current_span(parent).get_span_context().trace_flags.sampled
    return parent if sampled else None


def _sampled_parent(metadata: Iterable[Metadatum] | None) -> Context | None:
    """The parent of a data-plane call's span; None: this call gets no span."""
    metadata = metadata or ()
    parent: Context | None = None
    sampled = False
    if any(key == "traceparent" for key, _ in metadata):  # extracting costs ~20 µs
        parent = extract_grpc_context(metadata)
        sampled = trace.get_current_span(parent).get_span_context().trace_flags.sampled
    if not presample_data_record(bool(sampled)):
        return None
    return parent if parent is not None else extract_grpc_context(metadata)


def _end_server_span(span: trace.Span, context: Any, exc: BaseException | None) -> None:
    code: Any = _context_code(context)
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        code = grpc.StatusCode.CANCELLED
    elif exc is not None and not isinstance(exc, grpc.aio.AbortError):
        span.record_exception(exc)
        if code is None or code == grpc.StatusCode.OK:
            code = grpc.StatusCode.UNKNOWN  # what grpc answers for an unhandled exception
    code = grpc.StatusCode.OK if code is None else _as_status_code(code)
    details = _context_details(context) if code != grpc.StatusCode.OK else None
    _end_span(span, code, details, server=True)


def _context_code(context: Any) -> Any:
    try:
        return context.code()
    except (AttributeError, NotImplementedError):
        return None


def _context_details(context: Any) -> str | None:
    try:
        details = context.details()
    except (AttributeError, NotImplementedError):
        return None
    if isinstance(details, bytes):
        return details.decode("utf-8", "replace")
    return str(details) if details else None


# ── client ──────────────────────────────────────────────────────────────────


class _ClientTracing:
    def __init__(self, tracer_provider: trace.TracerProvider | None) -> None:
        self._tracer = _get_tracer(tracer_provider)
        self._finishing: set[asyncio.Task[None]] = set()

    def _start(self, details: Any) -> tuple[trace.Span, Any]:
        span_name, service, method = _rpc_names(details.method)
        span = self._tracer.start_span(
            span_name, kind=SpanKind.CLIENT, attributes=_attributes(service, method)
        )
        metadata = inject_grpc_metadata(details.metadata, trace.set_span_in_context(span))
        new_details = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return span, new_details

    @staticmethod
    def _fail(span: trace.Span, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            _end_span(span, grpc.StatusCode.CANCELLED, None, server=False)
            return
        span.record_exception(exc)
        _end_span(span, grpc.StatusCode.UNKNOWN, repr(exc), server=False)

    async def _finish(self, span: trace.Span, call: Any) -> None:
        try:
            code, details = await call.code(), await call.details()
        except asyncio.CancelledError:
            code, details = grpc.StatusCode.CANCELLED, None
        _end_span(span, _as_status_code(code), details, server=False)

    def _finish_when_done(self, span: trace.Span, call: Any) -> None:
        """End a streaming call's span when the call ends, however it is consumed."""

        def on_done(done_call: Any) -> None:
            task = asyncio.get_running_loop().create_task(self._finish(span, done_call))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)

        call.add_done_callback(on_done)

    async def _unary_response(self, continuation: Any, details: Any, request: Any) -> Any:
        span, details = self._start(details)
        call = None
        try:
            call = await continuation(details, request)
            code, message = await call.code(), await call.details()
        except BaseException as exc:
            if call is not None and isinstance(exc, asyncio.CancelledError):
                call.cancel()
            self._fail(span, exc)
            raise
        _end_span(span, _as_status_code(code), message, server=False)
        return call  # awaiting it raises AioRpcError for a non-OK status, as without us

    async def _stream_response(self, continuation: Any, details: Any, request: Any) -> Any:
        span, details = self._start(details)
        try:
            call = await continuation(details, request)
        except BaseException as exc:
            self._fail(span, exc)
            raise
        self._finish_when_done(span, call)
        return call


class TracingUnaryUnaryInterceptor(_ClientTracing, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """CLIENT span for unary calls; the span ends when the response (or error) arrives."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._unary_response(continuation, details, request)


class TracingStreamUnaryInterceptor(_ClientTracing, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        # Not awaited here: the caller may still be writing requests.
        return await self._stream_response(continuation, details, request_iterator)


class TracingUnaryStreamInterceptor(_ClientTracing, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._stream_response(continuation, details, request)


class TracingStreamStreamInterceptor(_ClientTracing, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await self._stream_response(continuation, details, request_iterator)


def tracing_client_interceptors(
    tracer_provider: trace.TracerProvider | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """One tracing interceptor per call shape, for `grpc.aio.*_channel(interceptors=…)`."""
    return [
        TracingUnaryUnaryInterceptor(tracer_provider),
        TracingUnaryStreamInterceptor(tracer_provider),
        TracingStreamUnaryInterceptor(tracer_provider),
        TracingStreamStreamInterceptor(tracer_provider),
    ]
