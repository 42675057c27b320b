"""`mlbus.faust`: the Faust records mirror the event contract field for field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from mlbus.events import DriftDetected, DriftTestResult, PredictionLogged
from mlbus.faust import (
    CloudEvent,
    DriftDetectedRecord,
    DriftTestResultRecord,
    PredictionLoggedRecord,
    cloud_event,
    trace_context,
)

PAIRS: list[tuple[type[BaseModel], type]] = [
    (PredictionLogged, PredictionLoggedRecord),
    (DriftDetected, DriftDetectedRecord),
    (DriftTestResult, DriftTestResultRecord),
]


@pytest.mark.parametrize(("model", "record"), PAIRS)
def test_a_record_has_exactly_the_fields_of_its_event(model: type[BaseModel], record: type) -> None:
    fields = record._options.fields  # type: ignore[attr-defined]
    assert set(fields) == set(model.model_fields)


def test_records_are_built_from_the_validated_event() -> None:
    result = DriftTestResult(
        feature="amount", kind="covariate", test="ks", statistic=0.3, threshold=0.1, drifted=True
    )
    now = datetime.now(UTC)
    event = DriftDetected(
        model="m",
        version=2,
        results=(result,),
        window_start=now,
        window_end=now,
        n_reference=10,
        n_live=5,
        offsets={"0": (1, 9)},
    )
    record = DriftDetectedRecord.from_event(event)
    assert isinstance(record, DriftDetectedRecord)
    assert isinstance(record.results[0], DriftTestResultRecord)
    assert record.results[0].statistic == 0.3
    assert record.offsets == {"0": [1, 9]}
    assert record.window_end == now
    assert record.event_id == event.event_id


class FakeEvent:
    """What Faust hands an agent: `event.headers` (a list of pairs, or a mapping)."""

    def __init__(self, headers: object) -> None:
        self.headers = headers


@pytest.mark.parametrize("as_mapping", [False, True])
def test_cloud_event_attributes_and_trace_context_come_from_the_headers(as_mapping: bool) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    pairs = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"e-1"),
        ("ce_type", b"mlbus.prediction.logged.v1"),
        ("ce_source", b"/mlbus/inference"),
        ("ce_time", b"2026-01-01T00:00:00+00:00"),
        ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01".encode()),
    ]
    event = FakeEvent(dict(pairs) if as_mapping else pairs)
    assert cloud_event(event) == CloudEvent(
        id="e-1",
        type="mlbus.prediction.logged.v1",
        source="/mlbus/inference",
        time="2026-01-01T00:00:00+00:00",
        specversion="1.0",
        traceparent=f"00-{trace_id}-00f067aa0ba902b7-01",
    )
    from opentelemetry import trace

    span_context = trace.get_current_span(trace_context(event)).get_span_context()
    assert f"{span_context.trace_id:032x}" == trace_id
    assert span_context.is_remote
