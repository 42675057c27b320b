"""Head sampling that keeps every control-plane trace and a share of the data plane.

Data-plane records (source events, validated events, predictions) flow at
thousands per second; a recorded span costs tens of microseconds, so tracing
each would cost more than the work. Control-plane events (training requests,
registrations, alias moves, drift detections) are rare and are the trace an
SRE follows when a model changes: they are always recorded. A trace a
producer already sampled is always continued (parent-based).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

PLANE_ATTRIBUTE = "mlbus.plane"
PRESAMPLED_ATTRIBUTE = "mlbus.presampled"
DATA_PLANE = "data"

# Set by `setup_telemetry` when the SDK is installed; None means spans are no-ops.
_data_ratio: float | None = None


def set_data_sample_ratio(ratio: float | None) -> None:
    global _data_ratio
    _data_ratio = ratio


def presample_data_record(parent_sampled: bool) -> bool:
    """Decide, before any span exists, whether a data-plane record gets one.

    Opening even a non-recording SDK span costs microseconds per record, so
    the bus asks this first: a sampled parent is always continued; otherwise a
    new trace is started for `data_sample_ratio` of the records. Spans opened
    after a yes carry `mlbus.presampled` so the SDK sampler does not roll again.
    """
    if parent_sampled:
        return True
    ratio = _data_ratio
    if ratio is None:  # no SDK: spans are no-ops and cheap; keep propagating as before
        return True
    return ratio >= 1.0 or (ratio > 0.0 and random.random() < ratio)


class PlaneSampler(Sampler):
    """Root sampler: `data_ratio` for spans marked `mlbus.plane=data`, `ratio` for the rest."""

    def __init__(self, ratio: float, data_ratio: float) -> None:
        self._default = TraceIdRatioBased(ratio)
        self._data = TraceIdRatioBased(data_ratio)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if attributes is not None and attributes.get(PRESAMPLED_ATTRIBUTE):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, None)
        data = attributes is not None and attributes.get(PLANE_ATTRIBUTE) == DATA_PLANE
        sampler = self._data if data else self._default
        return sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return (
            f"PlaneSampler(control={self._default.get_description()}, "
            f"data={self._data.get_description()})"
        )


def mlbus_sampler(ratio: float, data_ratio: float) -> Sampler:
    return ParentBased(PlaneSampler(ratio, data_ratio))
