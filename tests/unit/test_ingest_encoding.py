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

from mlbus.bus import OutgoingRecord, Received, event_headers
from mlbus.contracts import Accepted, ContractValidator, SourceContracts
from mlbus.events import INGEST_VALIDATED, IngestValidated
from mlbus.example import fraud_spec_path, generate
from mlbus.ingestion import IngestionPipeline, NoDedupe
from mlbus.ingestion._pipeline import _validated, validated_headers, validated_value
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
        self.modelled: list[IngestValidated] = []
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


@pytest.mark.parametrize(("ratio", "hot"), [(0.0, True), (1.0, False)])
async def test_flush_takes_the_hot_path_only_for_events_the_publisher_would_not_trace(
    ratio: float, hot: bool
) -> None:
    spec = load_spec(fraud_spec_path())
    now = datetime.now(UTC)
    events = list(
        generate(spec, 50, start=now - timedelta(days=2), days=1).sources["transactions"].events()
    )
    publisher = RecordingPublisher()
    pipeline = IngestionPipeline(SourceContracts(spec), publisher, NoDedupe())  # type: ignore[arg-type]
    records = [
        Received(json.dumps(e).encode(), "payments.transactions.v1", 0, i, None, (), 0)
        for i, e in enumerate(events)
    ]
    set_data_sample_ratio(ratio)
    try:
        await pipeline.handle_batch(records)
        await pipeline.flush()
    finally:
        set_data_sample_ratio(None)
    assert pipeline.stats.accepted == len(events)
    if not hot:
        assert not publisher.raw
        assert [m.source_offset for m in publisher.modelled] == list(range(len(events)))
        return
    assert not publisher.modelled
    assert [topic for topic, *_ in publisher.raw] == [INGEST_VALIDATED] * len(events)
    for i, (_, value, key, headers) in enumerate(publisher.raw):
        assert value is not None
        event = IngestValidated.model_validate_json(value)
        assert event.source_offset == i
        assert event.event_id == events[i]["transaction_id"]
        assert key == event.entity_id.encode() == events[i]["card_id"].encode()
        assert headers == event_headers(event, SOURCE)
