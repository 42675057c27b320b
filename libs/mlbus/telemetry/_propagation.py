"""W3C trace context in Kafka headers (`traceparent`, `tracestate`).

Written and parsed directly rather than through the global propagator: this
runs for every record on the bus, and the W3C format is fixed (version 00),
so a format string and a split cost a fraction of the generic path.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

KafkaHeaders = list[tuple[str, bytes]]
_TRACE_HEADERS = ("traceparent", "tracestate")
_EMPTY = Context()


def traceparent_of(span_context: SpanContext) -> str:
    ids = f"{span_context.trace_id:032x}-{span_context.span_id:016x}"
    return f"00-{ids}-{span_context.trace_flags:02x}"


def inject_kafka_headers(headers: KafkaHeaders, context: Context | None = None) -> None:
    """Add the current (or given) trace context to a Kafka header list, in place."""
    span_context = trace.get_current_span(context).get_span_context()
    if not span_context.is_valid:
        return
    if any(key in _TRACE_HEADERS for key, _ in headers):
        headers[:] = [(k, v) for k, v in headers if k not in _TRACE_HEADERS]
    headers.append(("traceparent", traceparent_of(span_context).encode()))
    if span_context.trace_state:
        headers.append(("tracestate", span_context.trace_state.to_header().encode()))


def extract_kafka_context(headers: Sequence[tuple[str, bytes]] | None) -> Context:
    """The trace context a producer put in these headers (empty if none or malformed)."""
    parent: bytes | None = None
    state: bytes | None = None
    for key, value in headers or ():
        if key == "traceparent":
            parent = value
        elif key == "tracestate":
            state = value
    span_context = _parse_traceparent(parent, state) if parent else None
    if span_context is None:
        return _EMPTY
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def _parse_traceparent(parent: bytes, state: bytes | None) -> SpanContext | None:
    parts = parent.split(b"-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == b"ff":
        return None
    version, trace_hex, span_hex, flags_hex = parts[:4]
    if len(trace_hex) != 32 or len(span_hex) != 16 or len(flags_hex) != 2:
        return None
    if version == b"00" and len(parts) != 4:
        return None
    try:
        trace_id, span_id, flags = int(trace_hex, 16), int(span_hex, 16), int(flags_hex, 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    trace_state = None
    if state:
        try:
            trace_state = TraceState.from_header([state.decode("latin-1")])
        except ValueError:
            trace_state = None
    return SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags), trace_state=trace_state
    )
