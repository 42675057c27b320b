"""The ingestion hot path writes `IngestValidated` JSON without the pydantic model;
these tests hold it to exactly the event the model path builds.

Pure code: no broker, no clock (every validation passes `now_s`).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from mlbus.bus import OutgoingRecord, Received, event_headers
from mlbus.contracts import Accepted, ContractValidator, SourceContracts
from mlbus.events import INGEST_REJECTED, INGEST_VALIDATED, IngestRejected, IngestValidated
from mlbus.example import fraud_spec_path, generate
from mlbus.ingestion import IngestionPipeline, NoDedupe
from mlbus.ingestion._records import (
    ValidatedEncoder,
    _validated,
    validated_headers,
    validated_value,
)
from mlbus.spec import Source, load_spec
from mlbus.telemetry._sampling import set_data_sample_ratio

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NOW_S = NOW.timestamp()
SOURCE = "/mlbus/ingestion"


def make_validator(unknown_fields: str, event_id: str | None) -> ContractValidator:
    fields: dict[str, Any] = {
        "id": {"type": "string", "min_length": 1, "max_length": 200},
        "user": {"type": "int"},
        "amount": {"type": "float", "required": False, "nullable": True},
        "kind": {"type": "enum", "values": ["a", "b", "ü"]},
        "flag": {"type": "bool", "required": False},
        "note": {"type": "string", "required": False, "nullable": True},
        "seen": {"type": "timestamp", "required": False},
        "ts": {"type": "timestamp"},
    }
    return ContractValidator(
        "events",
        Source.model_validate(
            {
                "topic": "t.events",
                "entity": "user",
                "event_time": "ts",
                "event_id": event_id,
                "contract": {
                    "version": 2,
                    "max_bytes": 100_000,
                    "allowed_skew_s": 10**9,
                    "max_lateness_s": 10**10,
                    "unknown_fields": unknown_fields,
                    "fields": fields,
                },
            }
        ),
    )


VALIDATORS = [
    make_validator("keep", "id"),
    make_validator("keep", None),  # derived ids
    make_validator("drop", "id"),
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # beyond int64 too, for kept unknown fields
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
times = (
    st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, __import__("datetime").timezone(timedelta(hours=-7))]),
    ).map(datetime.isoformat)
    | st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)).map(
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%S") + "Z"
    )
    | st.floats(-(10**10), 10**10, allow_nan=False)
    | st.integers(-(10**10), 10**10)
)
events = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=40),
        "user": st.integers(-(2**63), 2**63 - 1) | st.floats(-(2**52), 2**52).map(float.__floor__),
        "kind": st.sampled_from(["a", "b", "ü"]),
        "ts": times,
    },
    optional={
        "amount": st.none() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
        "flag": st.booleans(),
        "note": st.none() | st.text(max_size=30),
        "seen": times,
        "extra": scalars,
        "ünïcode key": scalars,
    },
)
where = st.tuples(
    st.text(min_size=1, max_size=30), st.integers(0, 2**31 - 1), st.integers(0, 2**62)
)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    event=events,
    validator=st.sampled_from(VALIDATORS),
    at=where,
    occurred_at=moments,
    source=st.sampled_from([SOURCE, "/mlbus/ingestion-ü"]),
)
def test_the_hot_path_bytes_decode_to_the_event_the_model_path_builds(
    event: dict[str, Any],
    validator: ContractValidator,
    at: tuple[str, int, int],
    occurred_at: datetime,
    source: str,
) -> None:
    outcome = validator.validate(json.dumps(event).encode(), now_s=NOW_S)
    if not isinstance(outcome, Accepted):
        return
    topic, partition, offset = at
    record = Received(b"", topic, partition, offset, None, (), 0)
    model = _validated(outcome, record, occurred_at)
    value = validated_value(outcome, record, occurred_at)

    decoded = IngestValidated.model_validate_json(value)
    assert decoded == model
    assert decoded.model_dump(mode="json") == model.model_dump(mode="json")
    assert json.loads(value) == json.loads(model.model_dump_json())
    assert validated_headers(
        outcome.event_id, source.encode(), occurred_at.isoformat().encode()
    ) == event_headers(model, source)


def test_the_fraud_examples_events_are_byte_for_byte_what_the_model_writes() -> None:
    spec = load_spec(fraud_spec_path())
    validator = SourceContracts(spec).for_source("transactions")
    data = generate(spec, 300, start=NOW - timedelta(days=2), days=1)
    for offset, event in enumerate(data.sources["transactions"].events()):
        outcome = validator.validate(json.dumps(event).encode(), now_s=NOW_S)
        assert isinstance(outcome, Accepted)
        record = Received(b"", "payments.transactions.v1", 2, offset, None, (), 0)
        model = _validated(outcome, record, NOW)
        assert validated_value(outcome, record, NOW) == model.model_dump_json().encode()


class RecordingPublisher:
    """Stands in for `Publisher`: keeps what each path sent (no broker in unit tests)."""

    source = SOURCE

    def __init__(self) -> None:
        self.modelled: list[IngestValidated | IngestRejected] = []
        self.raw: list[tuple[str, bytes | None, Any, list[tuple[str, bytes]]]] = []

    def record(self, event: Any, key: Any = None, *, topic: str | None = None) -> OutgoingRecord:
        self.modelled.append(event)
        return OutgoingRecord(topic or event.topic, None, key, [])

    async def send_batch(self, records: list[OutgoingRecord]) -> list[asyncio.Future[None]]:
        # Model-path records were counted by `record`; the hot path's bytes are kept here.
        self.raw.extend(
            (r.topic, r.value, r.key, list(r.headers)) for r in records if r.value is not None
        )
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return [future]


def fraud_records(n: int, *, broken: int = 0) -> list[Received[bytes | None]]:
    """`n` recent transactions of the fraud example; every `broken`-th one lacks its amount."""
    spec = load_spec(fraud_spec_path())
    start = datetime.now(UTC) - timedelta(days=2)
    events = list(generate(spec, n, start=start, days=1).sources["transactions"].events())[:n]
    if broken:
        events = [
            {k: v for k, v in e.items() if k != "amount"} if i % broken == 0 else e
            for i, e in enumerate(events)
        ]
    return [
        Received(json.dumps(e).encode(), "payments.transactions.v1", 0, i, None, (), 0)
        for i, e in enumerate(events)
    ]


def fraud_pipeline(publisher: RecordingPublisher) -> IngestionPipeline:
    contracts = SourceContracts(load_spec(fraud_spec_path()))
    return IngestionPipeline(contracts, publisher, NoDedupe())  # type: ignore[arg-type]


@pytest.mark.parametrize("ratio", [0.0, 1.0])
async def test_records_the_consumer_did_not_trace_take_the_hot_path_whatever_the_ratio(
    ratio: float,
) -> None:
    """The consumer rolled for these records already (its `batch_handler` only gets the
    ones it chose not to trace): the pipeline does not roll a second time."""
    records = fraud_records(50, broken=7)
    publisher = RecordingPublisher()
    pipeline = fraud_pipeline(publisher)
    set_data_sample_ratio(ratio)
    try:
        await pipeline.handle_batch(records)
        await pipeline.flush()
    finally:
        set_data_sample_ratio(None)
    broken = [i for i in range(50) if i % 7 == 0]
    assert (pipeline.stats.accepted, pipeline.stats.rejected) == (50 - len(broken), len(broken))
    assert not publisher.modelled  # nothing went through Publisher.record: no span, no roll
    assert [topic for topic, *_ in publisher.raw] == [
        INGEST_REJECTED if i in broken else INGEST_VALIDATED for i in range(50)
    ]
    for i, (_, value, key, headers) in enumerate(publisher.raw):
        assert value is not None
        assert not any(name == "traceparent" for name, _ in headers)
        source = json.loads(records[i].payload or b"")
        if i in broken:
            rejected = IngestRejected.model_validate_json(value)
            assert (rejected.source_offset, rejected.reasons[0].code) == (i, "missing_field")
            assert headers == event_headers(rejected, SOURCE)
            continue
        event = IngestValidated.model_validate_json(value)
        assert event.source_offset == i
        assert event.event_id == source["transaction_id"]
        assert key == event.entity_id.encode() == source["card_id"].encode()
        assert headers == event_headers(event, SOURCE)


async def test_records_handled_inside_a_span_go_through_the_model_and_the_publisher() -> None:
    records = fraud_records(20, broken=5)
    publisher = RecordingPublisher()
    pipeline = fraud_pipeline(publisher)
    consumer_span = NonRecordingSpan(
        SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    )
    for record in records:  # as the consumer hands over a traced record: inside its span
        token = otel_context.attach(trace.set_span_in_context(consumer_span))
        try:
            await pipeline.handle(record)
        finally:
            otel_context.detach(token)
    await pipeline.flush()
    assert not publisher.raw
    assert [e.source_offset for e in publisher.modelled] == list(range(20))
    assert [type(e) for e in publisher.modelled] == [
        IngestRejected if i % 5 == 0 else IngestValidated for i in range(20)
    ]


async def test_rejections_are_counted_per_source_and_reason_once_per_flush() -> None:
    publisher = RecordingPublisher()
    pipeline = fraud_pipeline(publisher)
    await pipeline.handle_batch(fraud_records(30, broken=3))
    await pipeline.flush()
    assert (pipeline.stats.accepted, pipeline.stats.rejected) == (20, 10)
    assert pipeline.stats.rejected_by_reason == {"missing_field": 10}
    assert pipeline.stats.flushes == 1


def test_one_encoder_writes_each_record_as_the_model_would_across_sources_and_partitions() -> None:
    """The encoder keeps the parts that repeat per source and per topic partition:
    records of several of each, interleaved, still get exactly their own event's bytes."""
    spec = load_spec(fraud_spec_path())
    contracts = SourceContracts(spec)
    data = generate(spec, 200, start=NOW - timedelta(days=2), days=1)
    outcomes = [
        contracts.for_source("transactions").validate(json.dumps(e).encode(), now_s=NOW_S)
        for e in list(data.sources["transactions"].events())[:20]
    ] + [
        contracts.for_source("chargebacks").validate(json.dumps(e).encode(), now_s=NOW_S)
        for e in list(data.sources["chargebacks"].events())[:20]
    ]
    encoder = ValidatedEncoder(NOW, SOURCE.encode())
    for i, outcome in enumerate(outcomes * 2):
        assert isinstance(outcome, Accepted)
        record = Received(b"", ("t.a", "t.ü")[i % 2], i % 3, 10**12 + i, None, (), 0)
        model = _validated(outcome, record, NOW)
        assert encoder.value(outcome, record) == model.model_dump_json().encode()
        out = encoder.record(outcome, record)
        assert (out.topic, out.key) == (INGEST_VALIDATED, outcome.entity_id.encode())
        assert out.headers == event_headers(model, SOURCE)
