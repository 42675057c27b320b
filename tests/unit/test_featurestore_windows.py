"""Incremental windows against a brute-force recomputation, on random streams with
late, out-of-order and replayed events; the state's round trip through bytes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlbus.events import Scalar
from mlbus.featurestore import (
    Applied,
    EntityState,
    ViewAggregator,
    bucket_geometry,
    in_window,
    value_at,
)
from mlbus.spec import Aggregation, FeatureDef, FeatureView, parse_duration

LATENESS_S = 120

VIEW = FeatureView(
    entity="card_id",
    source="transactions",
    ttl_s=3600,
    fields=("amount", "merchant"),
    aggregations=(
        Aggregation(function="count", windows=("1m", "5m", "30m")),
        Aggregation(field="amount", function="sum", windows=("1m", "10m")),
        Aggregation(field="amount", function="mean", windows=("5m",)),
        Aggregation(field="amount", function="min", windows=("2m",)),
        Aggregation(field="amount", function="max", windows=("10m",)),
        Aggregation(field="merchant", function="last", windows=("3m",)),
        Aggregation(field="merchant", function="distinct_count", windows=("5m", "30m")),
        Aggregation(field="amount", function="count", windows=("5m",)),
    ),
)


def feature_defs(view: FeatureView) -> list[FeatureDef]:
    defs = [
        FeatureDef(view="v", name=name, dtype="float", source_field=name) for name in view.fields
    ]
    for agg in view.aggregations:
        defs.extend(
            FeatureDef(
                view="v",
                name=agg.feature_name(w),
                dtype="float",
                source_field=agg.field,
                function=agg.function,
                window=w,
                window_s=parse_duration(w),
            )
            for w in agg.windows
        )
    return defs


DEFS = feature_defs(VIEW)


@dataclass
class BruteForce:
    """Keeps every accepted event and recomputes each feature from scratch (ADR 0020):
    an aggregate at `at` covers the events strictly before `at` in its window."""

    lateness_ms: int
    events: list[tuple[str, int, dict[str, Scalar]]] = field(default_factory=list)
    ever_seen: set[str] = field(default_factory=set)
    watermark: int | None = None

    def admit(self, event_id: str, t: int) -> Applied:
        if event_id in self.ever_seen:
            return Applied.DUPLICATE
        if self.watermark is not None and t < self.watermark - self.lateness_ms:
            return Applied.TOO_LATE
        return Applied.APPLIED

    def apply(self, event_id: str, t: int, payload: dict[str, Scalar]) -> Applied:
        outcome = self.admit(event_id, t)
        if outcome is Applied.APPLIED:
            self.ever_seen.add(event_id)
            self.events.append((event_id, t, payload))
            self.watermark = t if self.watermark is None else max(self.watermark, t)
        return outcome

    def aggregates(self, at: int, current: dict[str, Scalar] | None = None) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {}
        for agg in VIEW.aggregations:
            for label in agg.windows:
                window_ms = parse_duration(label) * 1000
                width = max(1000, window_ms // 60)
                n = math.ceil(window_ms / width)
                inside = [
                    (t, p) for _, t, p in self.events if t < at and t // width > at // width - n
                ]
                if current is not None:
                    inside.append((at, current))
                values = [p.get(agg.field) for _, p in inside] if agg.field else []
                present = [v for v in values if v is not None]
                name = agg.feature_name(label)
                if agg.function == "count":
                    out[name] = len(inside) if agg.field is None else len(present)
                elif agg.function == "sum":
                    out[name] = math.fsum(float(v) for v in present)  # type: ignore[arg-type]
                elif agg.function == "mean":
                    out[name] = (
                        math.fsum(float(v) for v in present) / len(present)  # type: ignore[arg-type]
                        if present
                        else None
                    )
                elif agg.function == "min":
                    out[name] = min(present) if present else None  # type: ignore[type-var]
                elif agg.function == "max":
                    out[name] = max(present) if present else None  # type: ignore[type-var]
                elif agg.function == "last":
                    with_value = [(t, i, p[agg.field]) for i, (t, p) in enumerate(inside)
                                  if p.get(agg.field) is not None]  # fmt: skip
                    out[name] = max(with_value)[2] if with_value else None
                elif agg.function == "distinct_count":
                    out[name] = len(set(present))
        return out

    def event_values(self, t: int, payload: dict[str, Scalar]) -> dict[str, Scalar]:
        """An event's own fields and the aggregates at its time over the events before it."""
        out: dict[str, Scalar] = {name: payload.get(name) for name in VIEW.fields}
        out.update(self.aggregates(t))
        return out


def assert_same(incremental: dict[str, Scalar], brute: dict[str, Scalar]) -> None:
    assert incremental.keys() == brute.keys()
    for name, expected in brute.items():
        got = incremental[name]
        if isinstance(expected, float):
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-9), name
        else:
            assert got == expected, name


amounts = st.one_of(st.none(), st.floats(0.01, 5000, allow_nan=False).map(lambda x: round(x, 2)))
merchants = st.one_of(st.none(), st.sampled_from(["m1", "m2", "m3", "m4"]))


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[str, int, dict[str, Scalar]]]:
    """Events in a mostly increasing order with jitter beyond the lateness, plus replays."""
    n = draw(st.integers(1, 40))
    clock = 0
    events: list[tuple[str, int, dict[str, Scalar]]] = []
    for i in range(n):
        clock += draw(st.integers(0, 40_000))
        jitter = draw(st.integers(0, 200_000))  # some beyond the 120 s lateness
        t = max(0, clock - jitter)
        events.append((f"e{i}", t, {"amount": draw(amounts), "merchant": draw(merchants)}))
    replays = draw(st.lists(st.integers(0, n - 1), max_size=n // 2))
    for index in replays:
        position = draw(st.integers(index, len(events)))
        events.insert(position, events[index])
    return events


def aggregates_only(values: dict[str, Scalar]) -> dict[str, Scalar]:
    return {k: v for k, v in values.items() if k not in VIEW.fields}


@settings(max_examples=200, deadline=None)
@given(streams(), st.lists(st.integers(-150_000, 4_000_000), min_size=3, max_size=3))
def test_windows_match_brute_force_for_every_event_and_after_it(
    events: list[tuple[str, int, dict[str, Scalar]]], offsets: list[int]
) -> None:
    aggregator = ViewAggregator(VIEW, DEFS, allowed_lateness_s=LATENESS_S)
    # serving does not know the feature service's lateness: the state tells it
    serving = ViewAggregator(VIEW, DEFS, allowed_lateness_s=0)
    brute = BruteForce(lateness_ms=LATENESS_S * 1000)
    state = EntityState()
    for event_id, t, payload in events:
        admitted = aggregator.admit(state, event_id, t)
        # a replay older than the lateness horizon is refused as late rather than as
        # a duplicate: either way it is not counted
        assert (admitted is Applied.APPLIED) == (brute.admit(event_id, t) is Applied.APPLIED)
        if admitted is Applied.APPLIED:
            # the offline row: the event's fields, windows over the events before it
            assert_same(aggregator.event_values(state, t, payload), brute.event_values(t, payload))
        assert aggregator.apply(state, event_id, t, payload) is admitted
        brute.apply(event_id, t, payload)
        wm = brute.watermark
        assert wm is not None
        steps = aggregator.steps(state)
        for offset in offsets:
            at = wm + offset
            expected = brute.aggregates(at)
            if aggregator.covers(state, at):  # any time a late event or a request may name
                assert serving.covers(state, at)
                assert_same(aggregator.aggregates_at(state, at), expected)
                assert_same(serving.aggregates_at(state, at), expected)
            if at > wm:  # what serving reads from the online hash, re-aged at request time
                assert_same({name: value_at(s, at) for name, s in steps.items()}, expected)
        # what the service stores between events: the state survives a round trip
        state = aggregator.load(state.to_bytes())


@settings(max_examples=100, deadline=None)
@given(streams())
def test_an_inclusive_view_counts_the_event_itself(
    events: list[tuple[str, int, dict[str, Scalar]]],
) -> None:
    inclusive = VIEW.model_copy(update={"include_current_event": True})
    aggregator = ViewAggregator(inclusive, DEFS, allowed_lateness_s=LATENESS_S)
    brute = BruteForce(lateness_ms=LATENESS_S * 1000)
    state = EntityState()
    for event_id, t, payload in events:
        if aggregator.apply(state, event_id, t, payload) is Applied.APPLIED:
            pass
        brute.apply(event_id, t, payload)
    # serving folds the request's own fields in at the request's time
    at = (brute.watermark or 0) + 1
    current: dict[str, Scalar] = {"amount": 7.5, "merchant": "m9"}
    assert_same(aggregator.aggregates_at(state, at, current), brute.aggregates(at, current))


def test_a_replayed_event_is_not_counted_twice() -> None:
    aggregator = ViewAggregator(VIEW, DEFS, allowed_lateness_s=LATENESS_S)
    state = EntityState()
    assert aggregator.apply(state, "a", 10_000, {"amount": 5.0}) is Applied.APPLIED
    assert aggregator.apply(state, "a", 10_000, {"amount": 5.0}) is Applied.DUPLICATE
    assert state.counted == 1
    values = aggregator.aggregates_at(state, 10_001)
    assert values["count_1m"] == 1
    assert values["amount_sum_1m"] == 5.0


def test_an_event_does_not_see_itself_or_later_events() -> None:
    aggregator = ViewAggregator(VIEW, DEFS, allowed_lateness_s=LATENESS_S)
    state = EntityState()
    first = {"amount": 5.0, "merchant": "m1"}
    assert aggregator.event_values(state, 10_000, first)["count_1m"] == 0
    assert aggregator.event_values(state, 10_000, first)["amount_mean_5m"] is None
    aggregator.apply(state, "a", 10_000, first)
    aggregator.apply(state, "b", 12_000, {"amount": 1.0, "merchant": "m2"})
    # a late event between them sees only the first; one at the same time sees neither
    late = aggregator.event_values(state, 11_000, {"amount": 2.0, "merchant": "m3"})
    assert late["count_1m"] == 1
    assert late["amount_sum_1m"] == 5.0
    assert late["merchant_last_3m"] == "m1"
    assert late["amount"] == 2.0  # its own raw field
    assert aggregator.event_values(state, 10_000, {"amount": 3.0})["count_1m"] == 0


def test_a_window_falls_as_it_passes_without_new_events() -> None:
    aggregator = ViewAggregator(VIEW, DEFS, allowed_lateness_s=LATENESS_S)
    state = EntityState()
    aggregator.apply(state, "a", 600_000, {"amount": 1.0, "merchant": "m1"})
    aggregator.apply(state, "b", 630_000, {"amount": 2.0, "merchant": "m2"})
    steps = aggregator.steps(state)
    assert value_at(steps["count_1m"], 630_001) == 2
    assert value_at(steps["count_1m"], 665_000) == 1  # "a" left the last minute
    assert value_at(steps["count_1m"], 700_000) == 0
    assert value_at(steps["amount_mean_5m"], 1_000_000) is None
    for at in (630_001, 665_000, 700_000, 1_000_000):
        assert aggregator.aggregates_at(state, at) == {n: value_at(s, at) for n, s in steps.items()}


def test_a_late_event_within_lateness_lands_in_the_windows_that_contain_it() -> None:
    aggregator = ViewAggregator(VIEW, DEFS, allowed_lateness_s=LATENESS_S)
    state = EntityState()
    aggregator.apply(state, "now", 600_000, {"amount": 1.0, "merchant": "m1"})
    aggregator.apply(state, "late", 600_000 - 90_000, {"amount": 2.0, "merchant": "m2"})
    values = aggregator.aggregates_at(state, 600_001)
    assert values["count_1m"] == 1  # 90 s ago: outside the last minute
    assert values["count_5m"] == 2
    assert aggregator.last_values(state)["merchant"] == "m1"  # the latest event's field
    assert values["merchant_distinct_count_5m"] == 2
    too_late = aggregator.apply(state, "too-late", 600_000 - 121_000, {"amount": 3.0})
    assert too_late is Applied.TOO_LATE
    assert aggregator.aggregates_at(state, 600_001)["count_30m"] == 2


def test_a_state_written_before_adr_0020_still_loads() -> None:
    aggregator = ViewAggregator(VIEW, DEFS, allowed_lateness_s=LATENESS_S)
    old = b'{"w":1000,"e":"a","r":{"amount":[1000,5.0]},"s":{"a":1000},"b":{"count_1m":[[1,1]]}}'
    state = aggregator.load(old)
    assert state.recent == {"a": (1000, None)}
    assert aggregator.apply(state, "a", 1000, {"amount": 5.0}) is Applied.DUPLICATE
    assert aggregator.aggregates_at(state, 1001)["count_1m"] == 1


def test_bucket_geometry_and_window_edges() -> None:
    assert bucket_geometry(600) == (10_000, 60)
    assert bucket_geometry(3600) == (60_000, 60)
    assert bucket_geometry(30) == (1000, 30)
    assert in_window(0, 599_999, 600)
    assert not in_window(0, 600_000, 600)
    assert not in_window(1000, 999, 600)
    assert not in_window(1000, 1000, 600)  # strictly before: an event never sees itself
