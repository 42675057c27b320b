"""ModelInfer is data plane: traced like the bus traces records, not like control calls.

`mlbus.rpc.server_interceptors` puts a `TracingServerInterceptor` first, which
records a span for every call (control-plane sampling). At thousands of
predictions per second that costs more than the prediction (docs/adr/0004),
so this subclass decides first, for ModelInfer and Predict only, with the bus's
data-plane rule: a call whose caller sampled its trace is always traced,
otherwise `data_sample_ratio` of calls start one; the rest get no span at
all. The other RPCs are traced as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import trace

from mlbus.telemetry import TracingServerInterceptor, extract_grpc_context
from mlbus.telemetry._sampling import presample_data_record

from ._predict import PREDICT_SERVICE_NAME
from ._servicer import SERVICE_NAME

DATA_PLANE_METHODS = frozenset({f"/{SERVICE_NAME}/ModelInfer", f"/{PREDICT_SERVICE_NAME}/Predict"})


class InferenceTracingInterceptor(TracingServerInterceptor):
    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        if handler_call_details.method in DATA_PLANE_METHODS:
            metadata = handler_call_details.invocation_metadata or ()
            sampled = False
            if any(key == "traceparent" for key, _ in metadata):  # extracting costs ~20 µs
                parent = extract_grpc_context(metadata)
                sampled = trace.get_current_span(parent).get_span_context().trace_flags.sampled
            if not presample_data_record(bool(sampled)):
                return await continuation(handler_call_details)
        return await super().intercept_service(continuation, handler_call_details)
