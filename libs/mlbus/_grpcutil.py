"""gRPC plumbing shared by the server interceptors (errors, metrics, tracing, auth).

Each of them only wraps a method's behaviour, the same way on every call, so
each is a `HandlerWrapping`: its `wrapper_for(method)` is applied once per
method and the wrapped handler is reused. `InterceptorChain` runs several as
one interceptor: one grpc.aio interceptor hop per call instead of one each,
and their wrappers composed once per method.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio

Behavior = Callable[..., Any]
Wrapper = Callable[[Behavior], Behavior]


def rewrap_handler(handler: Any, wrap: Wrapper) -> Any:
    """The same method handler with its behaviour wrapped, whatever its call shape."""
    common = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **common)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **common)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **common)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **common)
    return handler


class WrappedHandlers:
    """Each method's wrapped handler, built once and rebuilt when the handler underneath changes.

    Re-wrapping on every call (inspecting the behaviour, building closures and
    a new handler) cost ~5 µs per interceptor per call. The handler a lookup
    returns is the same object call after call, unless an interceptor further
    down wrapped it for this call only: then the entry is rebuilt. Only found
    methods are kept, so the cache is bounded by the methods the server serves.
    """

    def __init__(self, wrapper_for: Callable[[str], Wrapper]) -> None:
        self._wrapper_for = wrapper_for
        self._by_method: dict[str, tuple[Any, Any]] = {}

    def get(self, method: str, handler: Any) -> Any:
        cached = self._by_method.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = rewrap_handler(handler, self._wrapper_for(method))
        self._by_method[method] = (handler, wrapped)
        return wrapped


class HandlerWrapping(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A server interceptor that wraps each method's behaviour with `wrapper_for(method)`.

    Decisions that depend on the call (its metadata, a sampling roll) are made
    inside the wrapper, from the call's context, never by returning another
    handler: that keeps the wrapped handler reusable.
    """

    def __init__(self) -> None:
        self._handlers = WrappedHandlers(self.wrapper_for)

    def wrapper_for(self, method: str) -> Wrapper:
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        return self._handlers.get(details.method, handler)


class InterceptorChain(HandlerWrapping):
    """Several `HandlerWrapping`s as one interceptor; the first given is the outermost.

    Same behaviour as listing them in `grpc.aio.server(interceptors=…)`, at one
    interceptor hop per call: each hop is a coroutine and a continuation, and
    on a loaded server the three hops of metrics, tracing and errors cost ~9%
    of ModelInfer's throughput.
    """

    def __init__(self, links: Sequence[HandlerWrapping]) -> None:
        self._links = tuple(links)
        super().__init__()

    def wrapper_for(self, method: str) -> Wrapper:
        wrappers = [link.wrapper_for(method) for link in reversed(self._links)]

        def wrap(behavior: Behavior) -> Behavior:
            for wrapper in wrappers:  # innermost first
                behavior = wrapper(behavior)
            return behavior

        return wrap
