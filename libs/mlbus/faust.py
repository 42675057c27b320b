"""Typed Faust records for mlbus events, for a user's own Faust app (`pip install mlbus[faust]`).

    import faust
    from mlbus.faust import cloud_event, prediction_logged_topic, trace_context

    app = faust.App("fraud-watch", broker="kafka://127.0.0.1:9092")

    @app.agent(prediction_logged_topic(app))
    async def watch(stream):
        async for event in stream.events():
            prediction = event.value               # a PredictionLoggedRecord
            attributes = cloud_event(event)        # ce_id, ce_type, ce_source, ce_time
            with tracer.start_as_current_span("watch", context=trace_context(event)):
                ...                                # a child of the span that logged it

The value of each record is validated by the event's own pydantic model
(`mlbus.events`, the one contract) before it becomes a Faust record; a record
whose `ce_type` header names another event, or whose value breaks the
contract, is logged and skipped (`MlbusTopic`): the agent never sees it. The Faust records mirror
the pydantic fields one to one, and a test keeps them so.

Faust reads the annotations at class creation, so this module does not use
postponed annotations.
"""

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import faust
from faust.exceptions import ValueDecodeError
from faust.types import AppT, TopicT
from faust.types.tuples import Message
from opentelemetry.context import Context
from pydantic import ValidationError

from mlbus.events import DRIFT_DETECTED, PREDICTION_LOGGED, DriftDetected, Event, PredictionLogged
from mlbus.telemetry import extract_kafka_context

log = logging.getLogger(__name__)

__all__ = [
    "CloudEvent",
    "CloudEventSchema",
    "DriftDetectedRecord",
    "DriftTestResultRecord",
    "MlbusRecord",
    "MlbusTopic",
    "PredictionLoggedRecord",
    "cloud_event",
    "drift_detected_topic",
    "prediction_logged_topic",
    "trace_context",
]


class MlbusRecord(faust.Record, abstract=True, isodates=True):  # type: ignore[call-arg,misc]
    """Base of the records of mlbus events: built from the validated pydantic event."""

    event_id: str
    occurred_at: datetime

    @classmethod
    def from_event(cls, event: Event) -> "MlbusRecord":
        return cls(**_fields(event))


class PredictionLoggedRecord(MlbusRecord, serializer="json"):  # type: ignore[call-arg,misc]
    """`mlbus.prediction.logged.v1`: one served prediction (see `mlbus.events.PredictionLogged`)."""

    model: str
    version: int
    alias: str | None
    entity_id: str | None
    features: dict[str, Any]
    outputs: dict[str, list[float]]
    latency_ms: float
    trace_id: str | None = None
    shadow: bool = False
    scored_event_id: str | None = None
    feature_ages_s: dict[str, float] = faust.models.FieldDescriptor(default_factory=dict)  # type: ignore[assignment]
    defaulted_features: list[str] = faust.models.FieldDescriptor(default_factory=list)  # type: ignore[assignment]
    features_at: datetime | None = None
    view_event_counts: dict[str, int] = faust.models.FieldDescriptor(default_factory=dict)  # type: ignore[assignment]


class DriftTestResultRecord(faust.Record, serializer="json"):  # type: ignore[call-arg,misc]
    """One test's verdict on one feature (see `mlbus.events.DriftTestResult`)."""

    feature: str
    kind: str
    test: str
    statistic: float
    threshold: float
    drifted: bool
    p_value: float | None = None


class DriftDetectedRecord(MlbusRecord, serializer="json"):  # type: ignore[call-arg,misc]
    """`mlbus.drift.detected.v1`: a detection and its evidence (`mlbus.events.DriftDetected`)."""

    model: str
    version: int
    results: list[DriftTestResultRecord]
    window_start: datetime
    window_end: datetime
    n_reference: int
    n_live: int
    offsets: dict[str, list[int]] = faust.models.FieldDescriptor(default_factory=dict)  # type: ignore[assignment]
    correction: str = "bonferroni"

    @classmethod
    def from_event(cls, event: Event) -> "MlbusRecord":
        fields = _fields(event)
        fields["results"] = [DriftTestResultRecord(**r) for r in fields["results"]]
        return cls(**fields)


def _fields(event: Event) -> dict[str, Any]:
    """The event's fields as plain Python values; datetimes stay datetimes, tuples lists."""
    values: dict[str, Any] = {}
    for name in type(event).model_fields:
        values[name] = _plain(getattr(event, name))
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if hasattr(value, "model_dump"):
        return {k: _plain(v) for k, v in dict(value).items()}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# ── CloudEvents headers and trace context ───────────────────────────────────


@dataclasses.dataclass(frozen=True)
class CloudEvent:
    """The CloudEvents attributes of a record (Kafka binding, binary mode)."""

    id: str | None
    type: str | None
    source: str | None
    time: str | None
    specversion: str | None
    traceparent: str | None


def _headers(raw: Any) -> list[tuple[str, bytes]]:
    """Faust hands headers over as a list of pairs or a mapping, depending on the path."""
    if raw is None:
        return []
    items = raw.items() if isinstance(raw, Mapping) else raw
    pairs: list[tuple[str, bytes]] = []
    for key, value in items:
        name = key.decode() if isinstance(key, bytes) else str(key)
        data = value.encode() if isinstance(value, str) else value
        if data is not None:
            pairs.append((name, data))
    return pairs


def _header(pairs: Sequence[tuple[str, bytes]], name: str) -> str | None:
    found = None
    for key, value in pairs:
        if key == name:
            found = value.decode("utf-8", errors="replace")
    return found


def cloud_event(event: Any) -> CloudEvent:
    """The CloudEvents attributes of a Faust event (`async for event in stream.events()`)."""
    pairs = _headers(getattr(event, "headers", None) or event.message.headers)
    return CloudEvent(
        id=_header(pairs, "ce_id"),
        type=_header(pairs, "ce_type"),
        source=_header(pairs, "ce_source"),
        time=_header(pairs, "ce_time"),
        specversion=_header(pairs, "ce_specversion"),
        traceparent=_header(pairs, "traceparent"),
    )


def trace_context(event: Any) -> Context:
    """The OpenTelemetry context of the span that produced this record (W3C `traceparent`).

    Start your span with `context=trace_context(event)` and it joins the trace
    that served the prediction or detected the drift; empty when none was sent.
    """
    pairs = _headers(getattr(event, "headers", None) or event.message.headers)
    return extract_kafka_context(pairs)


class CloudEventSchema(faust.Schema):  # type: ignore[misc,type-arg]
    """Values decoded by the mlbus contract and typed as a Faust record; `ce_type` checked."""

    def __init__(self, record: type[MlbusRecord], event_class: type[Event]) -> None:
        super().__init__(key_type=bytes, value_type=record, key_serializer="raw")
        self.record = record
        self.event_class = event_class

    def loads_value(
        self, app: AppT, message: Message, *, loads: Any = None, serializer: Any = None
    ) -> MlbusRecord:
        event_class = self.event_class
        ce_type = _header(_headers(message.headers), "ce_type")
        if ce_type is not None and ce_type != event_class.event_type:
            raise ValueDecodeError(
                f"record of type {ce_type!r} on a {event_class.event_type} stream: skipped"
            )
        if message.value is None:
            raise ValueDecodeError(f"{event_class.event_type}: record has no value (tombstone)")
        try:
            event = event_class.model_validate_json(message.value)
        except ValidationError as exc:
            raise ValueDecodeError(
                f"{event_class.event_type} failed its contract: {exc.error_count()} error(s), "
                f"first: {exc.errors()[0]['msg']}"
            ) from None
        return self.record.from_event(event)


class MlbusTopic(faust.Topic):  # type: ignore[misc,type-arg]
    """A topic whose undecodable records are logged and skipped, not raised into the agent.

    Faust's default throws a decode error into the agent, which crashes and is
    restarted for each such record; the record is acknowledged either way.
    """

    async def on_value_decode_error(self, exc: Exception, message: Message) -> None:
        log.warning("skipped %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc)


def prediction_logged_topic(app: AppT, **options: Any) -> TopicT:
    """`mlbus.prediction.logged.v1` as a topic of typed `PredictionLoggedRecord`s."""
    schema = CloudEventSchema(PredictionLoggedRecord, PredictionLogged)
    return MlbusTopic(app, topics=[PREDICTION_LOGGED], schema=schema, **options)


def drift_detected_topic(app: AppT, **options: Any) -> TopicT:
    """`mlbus.drift.detected.v1` as a topic of typed `DriftDetectedRecord`s."""
    schema = CloudEventSchema(DriftDetectedRecord, DriftDetected)
    return MlbusTopic(app, topics=[DRIFT_DETECTED], schema=schema, **options)
