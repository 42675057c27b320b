"""The soak's invariants fail on deliberately broken facts: a check that cannot fail is
worthless. Each one passes on the clean case and fails on each way of breaking it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from itertools import islice

import pytest

from mlbus.contracts import Accepted, Rejected, SourceContracts
from mlbus.example import fraud_spec_path
from mlbus.featurestore import EntityState, ViewAggregator
from mlbus.soak import (
    OUTSIDE,
    AliasMove,
    FaultWindow,
    Letter,
    RequestOutcome,
    ServerMemory,
    StoredRow,
    TimedEvent,
    alias_history,
    brute_force,
    compare_values,
    dead_letters,
    died_with_inference,
    exactly_once,
    fault_kinds,
    fault_schedule,
    faults_recovered,
    healthy_since,
    hostile_survived,
    malformed_records,
    nothing_left,
    recovery_summary,
    requests_answered,
    window_of,
)
from mlbus.spec import load_spec

# ── exactly once ─────────────────────────────────────────────────────────────


def rows(*pairs: tuple[str, int]) -> list[StoredRow]:
    return [StoredRow(event_id, (value,)) for event_id, value in pairs]


def test_exactly_once_passes_when_each_event_has_its_rows() -> None:
    found = exactly_once("x", ["a", "b"], rows(("a", 1), ("b", 2)))
    assert found.passed
    assert found.detail["lost"] == 0


def test_a_lost_event_fails() -> None:
    found = exactly_once("x", ["a", "b"], rows(("a", 1)))
    assert not found.passed
    assert found.detail["lost"] == 1


def test_an_event_counted_twice_with_other_values_fails() -> None:
    found = exactly_once("x", ["a"], rows(("a", 1), ("a", 2)))
    assert not found.passed
    assert found.detail["duplicated"] == 1


def test_a_row_repeated_identically_is_reported_not_failed() -> None:
    """ADR 0012: a crash between the Parquet write and the spool trim writes the same rows
    again, and every reader de-duplicates by event id."""
    found = exactly_once("x", ["a"], rows(("a", 1), ("a", 1)))
    assert found.passed
    assert found.detail["repeated_rows"] == 1


def test_a_row_for_an_event_never_sent_fails() -> None:
    found = exactly_once("x", ["a"], rows(("a", 1), ("z", 1)))
    assert not found.passed
    assert found.detail["unexpected"] == 1


# ── dead letters ─────────────────────────────────────────────────────────────

P1 = ("payments", 0, 10)
P2 = ("payments", 1, 3)


def test_every_malformed_record_dead_lettered_passes() -> None:
    letters = [Letter(P1, b"bad", ("not_json",)), Letter(P2, b"worse", ("missing",))]
    assert dead_letters({P1: b"bad", P2: b"worse"}, letters).passed


def test_a_malformed_record_missing_from_the_dlq_fails() -> None:
    found = dead_letters({P1: b"bad", P2: b"worse"}, [Letter(P1, b"bad", ("not_json",))])
    assert not found.passed
    assert found.detail["missing"] == 1


def test_a_letter_with_other_bytes_or_no_reason_fails() -> None:
    assert not dead_letters({P1: b"bad"}, [Letter(P1, b"other", ("not_json",))]).passed
    assert not dead_letters({P1: b"bad"}, [Letter(P1, b"bad", ())]).passed


def test_a_valid_event_on_the_dlq_fails_but_a_resent_malformed_one_does_not() -> None:
    valid = Letter(("payments", 2, 7), b'{"fine": 1}', ("too_late",))
    found = dead_letters({P1: b"bad"}, [Letter(P1, b"bad", ("x",)), valid])
    assert not found.passed
    assert found.detail["valid_rejected"] == 1
    resent = Letter(("payments", 2, 8), b"bad", ("x",))  # the producer retried it
    assert dead_letters({P1: b"bad"}, [Letter(P1, b"bad", ("x",)), resent]).passed


# ── requests ─────────────────────────────────────────────────────────────────

WINDOWS = [FaultWindow("kill:inference", 10.0, 20.0)]


def call(sent_s: float, status: str = "OK", elapsed_s: float = 0.01) -> RequestOutcome:
    return RequestOutcome("Predict", sent_s, elapsed_s, status, deadline_s=1.0)


def test_failures_inside_a_fault_window_are_counted_not_failed() -> None:
    found = requests_answered([call(1), call(12, "UNAVAILABLE")], WINDOWS, slack_s=0.5)
    assert found.passed
    assert found.detail["failed_by_window"] == {"kill:inference": {"sent": 1, "UNAVAILABLE": 1}}


def test_a_failure_outside_every_fault_window_fails() -> None:
    found = requests_answered([call(1, "UNAVAILABLE"), call(12)], WINDOWS, slack_s=0.5)
    assert not found.passed
    assert found.detail["failed_outside_faults"] == 1


def test_an_answer_after_the_deadline_fails_even_if_ok() -> None:
    found = requests_answered([call(1, elapsed_s=1.6)], WINDOWS, slack_s=0.5)
    assert not found.passed
    assert found.detail["late"] == 1


def test_a_request_left_hanging_fails() -> None:
    assert not requests_answered([call(1)], WINDOWS, slack_s=0.5, unfinished=1).passed


def test_requests_work_again_only_after_a_run_of_answers() -> None:
    calls = [call(10, "UNAVAILABLE"), call(10.5), call(11, "DEADLINE_EXCEEDED")]
    calls += [call(11.5 + 0.5 * i) for i in range(6)]  # 11.5 … 14.0, all answered
    assert healthy_since(calls, 9.0, complete_s=20.0, span_s=2.0) == 11.5
    assert healthy_since(calls, 9.0, complete_s=13.0, span_s=2.0) is None  # not seen yet
    assert healthy_since([call(11), call(13.5)], 9.0, complete_s=20.0, span_s=2.0) is None


def test_window_of_names_the_window_or_outside() -> None:
    assert window_of(15.0, WINDOWS) == "kill:inference"
    assert window_of(25.0, WINDOWS) == OUTSIDE
    assert window_of(9.95, WINDOWS, ended_s=10.05) == "kill:inference"  # in flight at the kill
    assert window_of(9.0, WINDOWS, ended_s=9.5) == OUTSIDE


def test_a_call_in_flight_when_the_fault_began_fails_inside_it() -> None:
    reset = call(9.95, "UNAVAILABLE", elapsed_s=0.05)  # sent just before the kill, reset by it
    found = requests_answered([reset, call(1)], WINDOWS, slack_s=0.5)
    assert found.passed
    assert found.detail["failed_by_window"] == {"kill:inference": {"sent": 1, "UNAVAILABLE": 1}}
    ended_before = call(9.0, "UNAVAILABLE", elapsed_s=0.5)
    assert not requests_answered([ended_before], WINDOWS, slack_s=0.5).passed


# ── alias history ────────────────────────────────────────────────────────────

A = AliasMove("e1", "champion", 1)
B = AliasMove("e2", "champion", 2)
C = AliasMove("e3", "soak-candidate", 3)


def test_the_same_moves_in_the_same_order_pass_and_a_republication_is_counted() -> None:
    found = alias_history([A, B, C], [A, B, B, C])
    assert found.passed
    assert found.detail["republished"] == 1


@pytest.mark.parametrize(
    "published",
    [
        [A, C, B],
        [A, B],
        [A, B, C, AliasMove("e4", "champion", 1)],
        [A, AliasMove("e2", "champion", 3), C],
    ],
    ids=["reordered", "one missing", "one extra", "another version"],
)
def test_a_history_that_differs_from_the_bus_fails(published: list[AliasMove]) -> None:
    assert not alias_history([A, B, C], published).passed


# ── brute force ──────────────────────────────────────────────────────────────

SPEC = load_spec(fraud_spec_path())
FEATURES = SPEC.view_features("card_activity")
T0 = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp() * 1000)


def payment(i: int, minutes: float, amount: float, country: str) -> TimedEvent:
    fields = {
        "amount": amount,
        "merchant_category": "grocery",
        "country": country,
        "channel": "pos",
        "merchant_id": f"m_{i % 3:05d}",
    }
    return TimedEvent(f"e{i}", T0 + int(minutes * 60_000), fields)


EVENTS = [payment(0, 0, 10.0, "US"), payment(1, 5, 20.0, "GB"), payment(2, 50, 30.0, "US")]


def test_brute_force_counts_the_events_strictly_before_in_each_window() -> None:
    values = brute_force(FEATURES, EVENTS, EVENTS[-1].time_ms + 1)
    assert values["count_10m"] == 1
    assert values["count_1h"] == 3
    assert values["amount_sum_1h"] == pytest.approx(60.0)
    assert values["amount_max_24h"] == 30.0
    assert values["country_distinct_count_24h"] == 2
    assert values["amount"] == 30.0  # raw fields: the latest event's


def test_brute_force_agrees_with_the_feature_service_aggregator() -> None:
    """The recomputation and the service's incremental windows are two computations of one
    definition; they must agree, or the online check would compare against the wrong truth."""
    aggregator = ViewAggregator(SPEC.features["card_activity"], FEATURES, allowed_lateness_s=3600)
    state = EntityState()
    for event in EVENTS:
        aggregator.apply(state, event.event_id, event.time_ms, dict(event.fields))
    at = EVENTS[-1].time_ms + 1
    expected = brute_force(FEATURES, EVENTS, at)
    got = aggregator.aggregates_at(state, at) | aggregator.last_values(state)
    assert compare_values("card", expected, got) == []


def test_a_counted_twice_event_shows_as_a_mismatch() -> None:
    at = EVENTS[-1].time_ms + 1
    expected = brute_force(FEATURES, EVENTS, at)
    twice = brute_force(FEATURES, [*EVENTS, EVENTS[1]], at)
    mismatched = {m.feature for m in compare_values("card", expected, twice)}
    assert {"count_1h", "amount_sum_1h"} <= mismatched
    assert compare_values("card", expected, None) != []  # a missing entity


# ── faults ───────────────────────────────────────────────────────────────────


def test_the_schedule_is_seeded_and_each_round_holds_every_kind_once() -> None:
    kinds = fault_kinds(["ingestion", "features", "inference", "registry"])
    assert "kill:trainer" not in kinds  # a service that does not run is not killed
    first = list(islice(fault_schedule(kinds, 3), 2 * len(kinds)))
    assert first == list(islice(fault_schedule(kinds, 3), 2 * len(kinds)))
    assert sorted(first[: len(kinds)]) == sorted(kinds)
    assert sorted(first[len(kinds) :]) == sorted(kinds)


def test_a_fault_that_did_not_recover_or_a_kind_never_injected_fails() -> None:
    assert faults_recovered({"kill:features": [3.0, 4.0]}, expected=1).passed
    assert not faults_recovered({"kill:features": [3.0, None]}, expected=1).passed
    assert not faults_recovered({"kill:features": [3.0]}, expected=2).passed
    summary = recovery_summary({"kill:features": [3.0, 5.0, None]})
    assert summary["kill:features"] == {"count": 3, "recovered": 2, "median": 4.0, "max": 5.0}


def test_malformed_records_break_the_contract_each_in_its_own_way() -> None:
    source = SPEC.sources["transactions"]
    valid = {
        "transaction_id": "b43145db-2133-4a7d-aafd-9a44ee42a3aa",
        "card_id": "card_069459",
        "merchant_id": "m_00693",
        "amount": 18.51,
        "merchant_category": "restaurants",
        "country": "US",
        "channel": "pos",
        "ts": "2026-11-26T19:26:58.660Z",
    }
    validator = SourceContracts(SPEC).for_source("transactions")
    now = datetime(2026, 11, 27, tzinfo=UTC)
    base = validator.validate(json.dumps(valid).encode(), now_s=now.timestamp())
    assert isinstance(base, Accepted)  # the records below are broken, not the base
    bad = malformed_records(source, valid, now)
    assert len({b.value for b in bad}) == len(bad)
    for record in bad:
        outcome = validator.validate(record.value, now_s=now.timestamp())
        assert isinstance(outcome, Rejected), record.case


def test_leftovers_fail_the_check() -> None:
    assert nothing_left([], []).passed
    assert not nothing_left(["pid 42"], []).passed
    assert not nothing_left([], [8001]).passed


def test_hostile_survived_needs_calls_clear_statuses_no_crash_and_bounded_growth() -> None:
    mb = 1 << 20
    fine = ServerMemory("registry", 10, 100 * mb, 120 * mb, 75 * mb)
    assert hostile_survived(500, 0, [], [fine]).passed
    assert not hostile_survived(0, 0, [], [fine]).passed  # nothing was sent
    assert not hostile_survived(500, 3, [], [fine]).passed  # INTERNAL / UNKNOWN / HUNG
    assert not hostile_survived(500, 0, ["inference pid 11"], [fine]).passed
    leak = ServerMemory("inference", 11, 100 * mb, 200 * mb, 75 * mb)
    broken = hostile_survived(500, 0, [], [fine, leak])
    assert not broken.passed
    assert broken.detail["leaking"] == ["inference"]
    assert broken.as_json()["rss"][1]["growth_mb"] == 100.0  # type: ignore[index]


def test_a_prediction_log_dies_with_inference_only_if_the_call_met_the_kill() -> None:
    kills = [100.0]
    assert died_with_inference(95.0, 95.1, kills)  # answered 4.9 s before the kill
    assert died_with_inference(99.9, 100.02, kills)  # in flight at the kill: sent before it
    assert not died_with_inference(85.0, 85.1, kills)  # answered 14.9 s before: time to log
    assert not died_with_inference(100.5, 100.6, kills)  # sent after: a restarted process
    assert not died_with_inference(95.0, 95.1, [])
