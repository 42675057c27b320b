"""Traces, metrics and logs for every mlbus process.

    telemetry = setup_telemetry("ingestion", settings)   # once, early in run()
    try:
        with tracer(__name__).start_as_current_span("validate"):
            ...
    finally:
        telemetry.shutdown()                               # flushes pending spans

Trace context travels in Kafka headers (`inject_kafka_headers`,
`extract_kafka_context`) and gRPC metadata (`TracingServerInterceptor`,
`tracing_client_interceptors`). Without an OTLP endpoint, spans land in the
data folder and `mlbus.telemetry.spans` / `mlbus trace` read them back.

The gRPC names load on first use: a stream worker that neither serves nor
calls gRPC never imports grpc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlbus._lazy import lazy_attributes
from mlbus.telemetry._logging import (
    JsonLogFormatter,
    TextLogFormatter,
    TraceContextFilter,
    setup_logging,
)
from mlbus.telemetry._propagation import (
    extract_kafka_context,
    inject_kafka_headers,
    traceparent_of,
)
from mlbus.telemetry._sampling import (
    PLANE_ATTRIBUTE,
    PRESAMPLED_ATTRIBUTE,
    presample_data_record,
)
from mlbus.telemetry._setup import (
    Telemetry,
    active_telemetry,
    meter,
    setup_telemetry,
    tracer,
)
from mlbus.telemetry._spanfile import SpanFileExporter
from mlbus.telemetry.spans import SpanRecord, Trace, build_traces, find_trace, read_spans

if TYPE_CHECKING:
    from mlbus.telemetry._grpc import (
        TracingServerInterceptor,
        extract_grpc_context,
        inject_grpc_metadata,
        tracing_client_interceptors,
    )
    from mlbus.telemetry._grpc_metrics import MetricsServerInterceptor

__getattr__ = lazy_attributes(
    __name__,
    {
        "TracingServerInterceptor": "_grpc",
        "extract_grpc_context": "_grpc",
        "inject_grpc_metadata": "_grpc",
        "tracing_client_interceptors": "_grpc",
        "MetricsServerInterceptor": "_grpc_metrics",
    },
)

__all__ = [
    "PLANE_ATTRIBUTE",
    "PRESAMPLED_ATTRIBUTE",
    "JsonLogFormatter",
    "MetricsServerInterceptor",
    "SpanFileExporter",
    "SpanRecord",
    "Telemetry",
    "TextLogFormatter",
    "Trace",
    "TraceContextFilter",
    "TracingServerInterceptor",
    "active_telemetry",
    "build_traces",
    "extract_grpc_context",
    "extract_kafka_context",
    "find_trace",
    "inject_grpc_metadata",
    "inject_kafka_headers",
    "meter",
    "presample_data_record",
    "read_spans",
    "setup_logging",
    "setup_telemetry",
    "traceparent_of",
    "tracer",
    "tracing_client_interceptors",
]
