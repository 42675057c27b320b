"""The data-contract validator: every reason code, normalisation, ids, and fuzzing.

Pure code: no broker, no clock (every call passes `now_s`).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlbus.contracts import (
    REASON_CODES,
    Accepted,
    ContractValidator,
    Rejected,
    SourceContracts,
    _validator,
    derive_event_id,
    validate_lines,
)
from mlbus.example import fraud_spec_path
from mlbus.spec import Source, load_spec

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NOW_S = NOW.timestamp()


def make_source(**contract: Any) -> Source:
    fields = {
        "id": {"type": "string", "min_length": 3, "max_length": 40, "pattern": "^ev-[0-9]+$"},
        "user": {"type": "int", "min": 1, "max": 1_000_000},
        "amount": {"type": "float", "min": 0, "max": 100},
        "kind": {"type": "enum", "values": ["a", "b"]},
        "flag": {"type": "bool", "required": False},
        "note": {"type": "string", "required": False, "nullable": True},
        "ts": {"type": "timestamp"},
    }
    body = {
        "version": 3,
        "max_bytes": 1024,
        "allowed_skew_s": 60,
        "max_lateness_s": 3600,
        "fields": fields,
        **contract,
    }
    return Source.model_validate(
        {
            "topic": "t.events",
            "entity": "user",
            "event_time": "ts",
            "event_id": "id",
            "contract": body,
        }
    )


VALIDATOR = ContractValidator("events", make_source())
BIG = ContractValidator("events", make_source(max_bytes=1_000_000))


def good(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "ev-1",
        "user": 42,
        "amount": 12.5,
        "kind": "a",
        "flag": True,
        "note": None,
        "ts": "2026-06-01T13:59:00+02:00",
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not ...}


def check(event: object, validator: ContractValidator = VALIDATOR) -> Accepted | Rejected:
    raw = event if isinstance(event, bytes) else json.dumps(event).encode()
    return validator.validate(raw, now_s=NOW_S)


def codes(event: object, validator: ContractValidator = VALIDATOR) -> list[str]:
    outcome = check(event, validator)
    assert isinstance(outcome, Rejected), outcome
    return sorted(outcome.codes)


def test_a_valid_event_is_normalised() -> None:
    outcome = check(good())
    assert isinstance(outcome, Accepted)
    assert outcome.source == "events"
    assert outcome.contract_version == 3
    assert outcome.event_id == "ev-1"
    assert outcome.id_derived is False
    assert outcome.entity_id == "42"
    assert outcome.event_time == datetime(2026, 6, 1, 11, 59, tzinfo=UTC)
    assert outcome.event_time.utcoffset() is not None
    assert outcome.payload["ts"] == "2026-06-01T11:59:00Z"
    assert outcome.payload["note"] is None
    assert outcome.payload["amount"] == 12.5


def test_epoch_seconds_and_integral_floats_are_accepted() -> None:
    outcome = check(good(ts=NOW_S - 30, user=42.0, amount=3))
    assert isinstance(outcome, Accepted)
    assert outcome.payload["ts"] == "2026-06-01T11:59:30Z"
    assert outcome.payload["user"] == 42
    assert type(outcome.payload["user"]) is int
    assert type(outcome.payload["amount"]) is float


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "empty"),
        (b"\xff\xfe{}", "not_json"),
        (b"{'id': 1}", "not_json"),
        (b'{"id": "ev-1"} trailing', "not_json"),
        (b"[1, 2]", "not_object"),
        (b'"just a string"', "not_object"),
        (b'{"amount": NaN}', "non_finite_number"),
        (b'{"amount": -Infinity}', "non_finite_number"),
        (b"[" * 5000 + b"]" * 5000, "too_deep"),
        (b'{"a":' * 3000 + b"1" + b"}" * 3000, "too_deep"),
        (b'{"id": "a", "id": "b"}', "duplicate_field"),
        (b'{"note": "\\ud800"}', "not_json"),
        (b'{"user": ' + b"9" * 5000 + b"}", "not_json"),
    ],
)
def test_payload_level_problems_have_one_reason(raw: bytes, code: str) -> None:
    assert codes(raw, BIG) == [code]


def test_size_is_checked_before_parsing() -> None:
    assert codes(b"[" * 1025) == ["too_large"]
    assert isinstance(check(b" " * 900 + json.dumps(good()).encode()), Accepted)


def test_deep_nesting_inside_a_field_is_too_deep() -> None:
    nested: Any = 1
    for _ in range(40):
        nested = [nested]
    assert codes(good(note=nested)) == ["too_deep"]
    assert codes(good(note={"a": 1})) == ["wrong_type"]


def test_none_as_absent_means_missing() -> None:
    assert codes(good(id=..., amount=...)) == ["missing_field", "missing_field"]


def test_optional_fields_may_be_absent() -> None:
    outcome = check(good(flag=..., note=...))
    assert isinstance(outcome, Accepted)
    assert "flag" not in outcome.payload


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"user": "42"}, ["wrong_type"]),
        ({"user": 4.5}, ["wrong_type"]),
        ({"user": True}, ["wrong_type"]),
        ({"user": 0}, ["out_of_range"]),
        ({"user": 2**70}, ["out_of_range"]),
        ({"amount": "1"}, ["wrong_type"]),
        ({"amount": 100.5}, ["out_of_range"]),
        ({"amount": -1}, ["out_of_range"]),
        ({"amount": 10**400}, ["out_of_range"]),
        ({"kind": "c"}, ["not_in_enum"]),
        ({"kind": 1}, ["wrong_type"]),
        ({"flag": 1}, ["wrong_type"]),
        ({"flag": None}, ["null_not_allowed"]),
        ({"id": "ev"}, ["too_short"]),
        ({"id": "ev-" + "1" * 50}, ["too_long"]),
        ({"id": "xx-12"}, ["pattern_mismatch"]),
        ({"ts": "2026-06-01T12:00:00"}, ["bad_timestamp"]),
        ({"ts": "yesterday"}, ["bad_timestamp"]),
        ({"ts": NOW_S * 1000}, ["bad_timestamp"]),
        ({"ts": True}, ["wrong_type"]),
        ({"ts": "2026-06-01T12:02:00Z"}, ["future_event_time"]),
        ({"ts": "2026-06-01T10:59:00Z"}, ["too_late"]),
        ({"extra": 1}, ["unknown_field"]),
    ],
)
def test_each_field_rule_has_its_code(changes: dict[str, Any], expected: list[str]) -> None:
    outcome = check(good(**changes))
    assert isinstance(outcome, Rejected)
    assert sorted(outcome.codes) == expected
    assert all(r.field for r in outcome.reasons)


def test_every_reason_is_reported_not_only_the_first() -> None:
    outcome = check(
        good(user="x", amount=500, kind="z", id=..., extra=1, ts="2030-01-01T00:00:00Z")
    )
    assert isinstance(outcome, Rejected)
    assert sorted(outcome.codes) == [
        "future_event_time",
        "missing_field",
        "not_in_enum",
        "out_of_range",
        "unknown_field",
        "wrong_type",
    ]
    assert {r.field for r in outcome.reasons} == {"user", "amount", "kind", "id", "extra", "ts"}


def test_clock_skew_and_lateness_bounds_are_inclusive() -> None:
    assert isinstance(check(good(ts=NOW_S + 60)), Accepted)
    assert isinstance(check(good(ts=NOW_S - 3600)), Accepted)
    assert codes(good(ts=NOW_S + 61)) == ["future_event_time"]
    assert codes(good(ts=NOW_S - 3601)) == ["too_late"]


def test_unknown_fields_drop_and_keep() -> None:
    drop = ContractValidator("events", make_source(unknown_fields="drop"))
    keep = ContractValidator("events", make_source(unknown_fields="keep"))
    dropped = check(good(extra=1), drop)
    kept = check(good(extra=1), keep)
    assert isinstance(dropped, Accepted)
    assert "extra" not in dropped.payload
    assert isinstance(kept, Accepted)
    assert kept.payload["extra"] == 1
    assert codes(good(extra=[1]), keep) == ["wrong_type"]
    assert codes(good(extra=float("inf")), keep) == ["non_finite_number"]


def test_many_unknown_fields_are_summed_up() -> None:
    event = good(**{f"x{i}": i for i in range(30)})
    outcome = check(event, ContractValidator("events", make_source(max_bytes=65536)))
    assert isinstance(outcome, Rejected)
    assert len(outcome.reasons) == 21
    assert "and 10 more" in outcome.reasons[-1].message


def test_ids_longer_than_an_event_id_can_hold_are_refused() -> None:
    source = make_source(
        max_bytes=65536,
        fields={"id": {"type": "string"}, "user": {"type": "int"}, "ts": {"type": "timestamp"}},
    )
    validator = ContractValidator("events", source)
    assert codes({"id": "a" * 201, "user": 1, "ts": NOW_S}, validator) == ["too_long"]
    assert codes({"id": "", "user": 1, "ts": NOW_S}, validator) == ["too_short"]


def test_derived_ids_are_deterministic_and_ignore_key_order() -> None:
    source = make_source()
    no_id = Source.model_validate({**source.model_dump(), "event_id": None})
    validator = ContractValidator("events", no_id)
    first = check(good(), validator)
    reordered = check(dict(reversed(list(good().items()))), validator)
    other = check(good(amount=12.6), validator)
    assert isinstance(first, Accepted)
    assert isinstance(reordered, Accepted)
    assert isinstance(other, Accepted)
    assert first.id_derived is True
    assert first.event_id == reordered.event_id
    assert first.event_id != other.event_id
    assert first.event_id == derive_event_id("events", good())
    assert derive_event_id("other", good()) != first.event_id


def test_the_fraud_example_validates_its_own_generated_events() -> None:
    from mlbus.example import generate

    spec = load_spec(fraud_spec_path())
    contracts = SourceContracts(spec)
    data = generate(spec, 300)
    for name, events in data.sources.items():
        lines = [json.dumps(e).encode() for e in events.events()]
        report = validate_lines(
            contracts.for_source(name), lines, now_s=datetime(2025, 1, 20, tzinfo=UTC).timestamp()
        )
        assert report.rejected == 0, report.as_json()
        assert report.accepted == len(lines)


def test_report_counts_reasons_duplicates_and_examples() -> None:
    lines = [
        json.dumps(good()).encode(),
        json.dumps(good()).encode() + b"\n",
        b"\n",
        b"not json",
        json.dumps(good(id="ev-2", kind="z", amount=-1)).encode(),
        json.dumps(good(id="ev-3", kind="z")).encode(),
    ]
    report = validate_lines(VALIDATOR, lines, now_s=NOW_S)
    assert (report.lines, report.accepted, report.duplicates, report.rejected) == (5, 1, 1, 3)
    assert report.by_reason == {"not_json": 1, "not_in_enum": 2, "out_of_range": 1}
    assert [e.line for e in report.examples["not_in_enum"]] == [5, 6]
    as_json = report.as_json()
    assert as_json["reasons"][0] == {  # type: ignore[index]
        "code": "not_in_enum",
        "count": 2,
        "fields": {"kind": 2},
        "examples": [
            {"line": 5, "message": "kind: expected one of 'a', 'b', got 'z'"},
            {"line": 6, "message": "kind: expected one of 'a', 'b', got 'z'"},
        ],
    }


# ── fuzzing: never raises, every rejection explains itself ───────────────────
# (deadline=None: the machine running CI is shared; these assert outcomes, not speed)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
field_values = {
    "id": st.text(max_size=45) | json_values,
    "user": st.integers() | st.floats() | json_values,
    "amount": st.floats() | st.integers() | json_values,
    "kind": st.sampled_from(["a", "b", "c"]) | json_values,
    "flag": st.booleans() | json_values,
    "note": st.none() | st.text() | json_values,
    "ts": st.floats(NOW_S - 7200, NOW_S + 7200)
    | st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat)
    | json_values,
    "extra": json_values,
}
events = st.fixed_dictionaries({}, optional=field_values)


def assert_explained(outcome: Accepted | Rejected) -> None:
    if isinstance(outcome, Rejected):
        assert outcome.reasons
        for reason in outcome.reasons:
            assert reason.code in REASON_CODES
            assert reason.message
            json.dumps(reason.model_dump())  # always encodable
    else:
        assert outcome.event_id
        assert outcome.entity_id
        for value in outcome.payload.values():
            assert value is None or isinstance(value, str | int | float | bool)
            assert not (isinstance(value, float) and not math.isfinite(value))
        json.dumps(outcome.payload, allow_nan=False).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1500))
def test_fuzz_any_bytes(raw: bytes) -> None:
    assert_explained(VALIDATOR.validate(raw, now_s=NOW_S))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet='{}[]":,0123456789.eE-+ntrufalsNIy\\', max_size=200))
def test_fuzz_json_looking_text(text: str) -> None:
    assert_explained(VALIDATOR.validate(text.encode(), now_s=NOW_S))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_fuzz_field_values(event: dict[str, Any]) -> None:
    raw = json.dumps(event, allow_nan=True).encode()
    outcome = VALIDATOR.validate(raw, now_s=NOW_S)
    assert_explained(outcome)
    if isinstance(outcome, Accepted):  # an accepted event is accepted again as published
        again = VALIDATOR.validate(json.dumps(outcome.payload).encode(), now_s=NOW_S)
        assert isinstance(again, Accepted)
        assert again.payload == outcome.payload


# ── the jiter fast path answers exactly as the reference path ────────────────

KEEP = ContractValidator("events", make_source(unknown_fields="keep", max_bytes=100_000))
DERIVED = ContractValidator(
    "events",
    Source.model_validate(
        {**make_source().model_dump(), "event_id": None, "contract": make_source().contract}
    ),
)
PARITY_VALIDATORS = [VALIDATOR, BIG, KEEP, DERIVED]


def reference(validator: ContractValidator, raw: bytes) -> Accepted | Rejected:
    """The outcome without jiter: the json-module parse and nothing else."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_validator, "_fast_json", None)
        return validator.validate(raw, now_s=NOW_S)


def assert_same_as_reference(raw: bytes, validator: ContractValidator = VALIDATOR) -> None:
    fast = validator.validate(raw, now_s=NOW_S)
    # repr, not ==: -0.0 == 0.0 and 1 == 1.0, yet their JSON differs.
    assert repr(fast) == repr(reference(validator, raw))


def test_the_fast_path_is_taken_for_valid_events_and_only_for_them() -> None:
    raw = json.dumps(good()).encode()
    assert isinstance(VALIDATOR._accept_fast(raw, NOW_S), Accepted)
    assert VALIDATOR._accept_fast(raw[:-1] + b',"id":"ev-2"}', NOW_S) is None  # duplicate key
    assert VALIDATOR._accept_fast(json.dumps(good(kind="z")).encode(), NOW_S) is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id":"ev-1","id":"ev-2"}',
        b'{"id":"ev-1","\\u0069d":"ev-2"}',  # the same key, escaped
        b'{"note":"\\ud800"}',
        b'{"note":"\\udc00x"}',
        b'{"note":"\\ud83d\\ude00"}',
        b'{"amount":NaN}',
        b'{"amount":-Infinity}',
        b'{"amount":1e400}',
        b'{"amount":-0.0}',
        b'{"user":1' + b"0" * 30 + b"}",
        b'{"user":' + b"9" * 5000 + b"}",
        b'{"note":' + b"[" * 300 + b"]" * 300 + b"}",
        b"\xef\xbb\xbf{}",
        b' \n{"user":1}\t\r\n',
        b'{"user":1}\x0c',
        b'{"note":"\x01"}',
        b'{"note":"\xff"}',
        b"[]",
        b'"text"',
    ],
)
def test_fast_and_reference_paths_agree_on_edge_cases(raw: bytes) -> None:
    event = good()
    for validator in PARITY_VALIDATORS:
        assert_same_as_reference(raw, validator)
        if raw.startswith(b'{"') and raw.endswith(b"}"):  # the same trouble inside a good event
            assert_same_as_reference(json.dumps(event).encode()[:-1] + b"," + raw[1:], validator)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.sampled_from(PARITY_VALIDATORS))
def test_fast_and_reference_paths_agree_on_any_bytes(
    raw: bytes, validator: ContractValidator
) -> None:
    assert_same_as_reference(raw, validator)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.text(alphabet='{}[]":,0123456789.eE-+ntrufalsNIyud\\', max_size=120),
    st.sampled_from(PARITY_VALIDATORS),
)
def test_fast_and_reference_paths_agree_on_json_looking_text(
    text: str, validator: ContractValidator
) -> None:
    assert_same_as_reference(text.encode(), validator)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.sampled_from(PARITY_VALIDATORS), st.booleans())
def test_fast_and_reference_paths_agree_on_field_values(
    event: dict[str, Any], validator: ContractValidator, duplicate: bool
) -> None:
    raw = json.dumps(event, allow_nan=True).encode()
    if duplicate and event:  # a producer bug: one key twice
        first = json.dumps(dict([next(iter(event.items()))]))
        raw = raw[:-1] + b"," + first[1:].encode()
    assert_same_as_reference(raw, validator)
    if not duplicate:  # mostly valid events too, so the fast path is exercised
        assert_same_as_reference(json.dumps({**good(), **event}).encode(), validator)


valid_events = st.fixed_dictionaries(
    {
        "id": st.integers(0, 10**30).map(lambda n: f"ev-{n}"),
        "user": st.integers(1, 1_000_000) | st.integers(1, 1_000_000).map(float),
        "amount": st.floats(0, 100) | st.integers(0, 100),
        "kind": st.sampled_from(["a", "b"]),
        "ts": st.floats(NOW_S - 3000, NOW_S + 50)
        | st.datetimes(
            min_value=datetime(2026, 6, 1, 11, 10),
            max_value=datetime(2026, 6, 1, 12, 0),
            timezones=st.sampled_from([UTC, timezone(timedelta(hours=2))]),
        ).flatmap(
            lambda d: st.sampled_from(
                [d.isoformat(), d.astimezone(UTC).isoformat().replace("+00:00", "Z")]
            )
        ),
    },
    optional={
        "flag": st.booleans(),
        "note": st.none() | st.text(max_size=30),
        "extra": st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    },
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_events, st.sampled_from(PARITY_VALIDATORS))
def test_fast_and_reference_paths_agree_on_valid_events(
    event: dict[str, Any], validator: ContractValidator
) -> None:
    assert_same_as_reference(json.dumps(event).encode(), validator)
    assert_same_as_reference(json.dumps(event, ensure_ascii=False, indent=1).encode(), validator)
