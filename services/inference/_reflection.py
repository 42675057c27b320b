"""gRPC health checking, and server reflection loaded on its first call.

`grpc_reflection` imports protobuf's `descriptor_pb2`, ~4.4 MB of resident
memory in every worker, for a service that only tools such as grpcurl call.
The reflection method is registered at start (so it is listed and answers as
usual); its servicer and that module are loaded when a client first asks.
Otherwise the same as `mlbus.rpc.add_health_and_reflection`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection_pb2

REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"


def add_health_and_lazy_reflection(
    server: grpc.aio.Server, services: Sequence[str]
) -> health_aio.HealthServicer:
    """Health checking and reflection for `services` (full names); returns the health servicer."""
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    names = (*services, health_name, REFLECTION_SERVICE)
    servicer: Any = None

    async def info(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        nonlocal servicer
        if servicer is None:
            from grpc_reflection.v1alpha import reflection

            servicer = reflection.aio.ReflectionServicer(names)
        async for response in servicer.ServerReflectionInfo(requests, context):
            yield response

    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            info,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_SERVICE, handlers),)
    )
    return health
