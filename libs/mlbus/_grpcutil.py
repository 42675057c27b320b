"""gRPC plumbing shared by the server interceptors (errors, metrics, tracing, auth)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behavior = Callable[..., Any]


def rewrap_handler(handler: Any, wrap: Callable[[Behavior], Behavior]) -> Any:
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

    A grpc.aio interceptor runs on every call; re-wrapping there (inspecting the
    behaviour, building closures and a new handler) cost ~5 µs per interceptor
    per call. The handler a lookup returns is the same object call after call,
    unless an interceptor further down wrapped it for this call only (a traced
    call): then the entry is rebuilt. Only found methods are kept, so the cache
    is bounded by the methods the server serves.
    """

    def __init__(self, wrapper_for: Callable[[str], Callable[[Behavior], Behavior]]) -> None:
        self._wrapper_for = wrapper_for
        self._by_method: dict[str, tuple[Any, Any]] = {}

    def get(self, method: str, handler: Any) -> Any:
        cached = self._by_method.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = rewrap_handler(handler, self._wrapper_for(method))
        self._by_method[method] = (handler, wrapped)
        return wrapped
