"""Served values against the offline row of the same event (ADR 0020): the rules and the monitor."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from services.features._consistency import ConsistencyMonitor

from mlbus.events import PredictionLogged, Scalar
from mlbus.example import fraud_spec_path
from mlbus.featurestore import OfflineRow, OnlineStore, compare, same_value
from mlbus.spec import load_spec

VIEW = "card_activity"


def test_equal_means_exact_for_counts_and_strings_and_relative_1e6_for_floats() -> None:
    assert same_value(3, 3)
    assert not same_value(3, 4)
    assert same_value("FR", "FR")
    assert not same_value("FR", "DE")
    assert same_value(100.0, 100.0 * (1 + 5e-7))
    assert not same_value(100.0, 100.0 * (1 + 5e-6))
    assert same_value(float("nan"), float("nan"))
    assert not same_value(float("nan"), 1.0)
    assert same_value(None, None)
    assert not same_value(None, 0.0)
    assert not same_value(True, 1)  # a bool is not a count


def test_a_difference_is_lag_only_when_the_state_had_counted_fewer_events() -> None:
    served: dict[str, Scalar] = {"count_1h": 2, "amount_sum_1h": 10.0, "country": "FR"}
    offline: dict[str, Scalar] = {"count_1h": 3, "amount_sum_1h": 10.0, "country": "FR"}
    outcomes, diffs = compare(served, 4, 1_000, "card_1", "tx9", offline, 1_000, 5)
    assert outcomes == {"count_1h": "lag", "amount_sum_1h": "match", "country": "match"}
    assert [(d.feature, d.served, d.offline, d.outcome) for d in diffs] == [
        ("count_1h", 2, 3, "lag")
    ]
    # Same difference with every prior event counted: a real skew, never hidden as lag.
    outcomes, diffs = compare(served, 5, 1_000, "card_1", "tx9", offline, 1_000, 5)
    assert outcomes["count_1h"] == "mismatch"
    assert diffs[0].outcome == "mismatch"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _monitor(clock: Clock) -> ConsistencyMonitor:
    spec = load_spec(fraud_spec_path())
    # Never connected: the unit tests stop before `flush`.
    return ConsistencyMonitor(
        spec, OnlineStore.from_url("redis://127.0.0.1:1"), wait_s=60.0, clock=clock
    )


def _prediction(event_id: str, counted: int, **values: Scalar) -> PredictionLogged:
    return PredictionLogged(
        model="fraud_detector",
        version=1,
        alias="champion",
        entity_id="card_1",
        scored_event_id=event_id,
        features={f"{VIEW}.{k}": v for k, v in values.items()},
        outputs={"probabilities": [0.9, 0.1]},
        latency_ms=1.0,
        features_at=datetime(2025, 6, 1, tzinfo=UTC),
        view_event_counts={VIEW: counted},
    )


def _row(event_id: str, prior: int, **values: Scalar) -> OfflineRow:
    return OfflineRow("card_1", event_id, 1_000, 900, 1_100, dict(values), prior)


def test_the_monitor_pairs_served_and_offline_in_either_order() -> None:
    clock = Clock()
    monitor = _monitor(clock)
    monitor.observe(_prediction("tx1", 3, count_1h=3, amount=9.5))
    monitor.rows_written(
        {VIEW: [_row("tx1", 3, count_1h=3, amount=9.5), _row("tx2", 4, count_1h=1)]}
    )
    monitor.observe(_prediction("tx2", 4, count_1h=2))  # its row came first
    monitor.rows_written({VIEW: [_row("tx3", 5, count_1h=2)]})
    monitor.observe(_prediction("tx3", 4, count_1h=1))  # counted 4 of 5 prior events: lag
    counts = monitor._counts[VIEW]
    assert counts[("count_1h", "match")] == 1
    assert counts[("count_1h", "mismatch")] == 1
    assert counts[("count_1h", "lag")] == 1
    assert counts[("amount", "match")] == 1
    assert monitor.compared == 3
    assert [(d.event_id, d.outcome) for d in monitor._examples[VIEW]] == [
        ("tx2", "mismatch"),
        ("tx3", "lag"),
    ]


def test_shadows_unnamed_events_and_other_models_are_not_compared() -> None:
    monitor = _monitor(Clock())
    shadow = _prediction("tx1", 0, count_1h=1).model_copy(update={"shadow": True})
    unnamed = _prediction("tx2", 0, count_1h=1).model_copy(update={"scored_event_id": None})
    other = _prediction("tx3", 0, count_1h=1).model_copy(update={"model": "other"})
    for event in (shadow, unnamed, other):
        monitor.observe(event)
    monitor.rows_written({VIEW: [_row(e, 0, count_1h=1) for e in ("tx1", "tx2", "tx3")]})
    assert monitor.compared == 0


@pytest.mark.parametrize("served_first", [True, False])
def test_what_waited_longer_than_wait_s_is_dropped_not_compared(served_first: bool) -> None:
    clock = Clock()
    monitor = _monitor(clock)
    if served_first:
        monitor.observe(_prediction("tx1", 0, count_1h=1))
    else:
        monitor.rows_written({VIEW: [_row("tx1", 0, count_1h=1)]})
    clock.now = 61.0
    # Anything held later expires what waited too long.
    monitor.observe(_prediction("tx9", 0, count_1h=1))
    monitor.rows_written({VIEW: [_row("tx8", 0, count_1h=1)]})
    if served_first:
        monitor.rows_written({VIEW: [_row("tx1", 0, count_1h=1)]})
    else:
        monitor.observe(_prediction("tx1", 0, count_1h=1))
    assert monitor.compared == 0
