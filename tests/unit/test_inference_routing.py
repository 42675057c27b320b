"""Canary split (share within binomial bounds, sticky per entity) and shadow scoring off-path."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlbus.inference import (
    CANARY,
    SHADOW,
    ModelRepository,
    PredictionRecord,
    ShadowRunner,
    canary_point,
    goes_to_canary,
    load_model,
)
from tests.unit.test_inference_model import linear_model, sha


def model(version: int, name: str = "m"):  # type: ignore[no-untyped-def]
    data = linear_model(version)
    return load_model(name, version, data, expected_sha256=sha(data))


@pytest.mark.parametrize("weight", [0.05, 0.1, 0.5, 0.9])
def test_the_canary_share_is_within_binomial_bounds(weight: float) -> None:
    n = 2000
    hits = sum(goes_to_canary("fraud", f"card_{i:06d}", weight) for i in range(n))
    sigma = math.sqrt(n * weight * (1 - weight))
    assert abs(hits - n * weight) <= 4 * sigma  # false alarm ~6e-5 per case


def test_weights_zero_and_one_are_exact() -> None:
    ids = [f"e{i}" for i in range(500)]
    assert not any(goes_to_canary("m", e, 0.0) for e in ids)
    assert all(goes_to_canary("m", e, 1.0) for e in ids)


@given(st.text(max_size=40), st.floats(0.0, 1.0))
def test_routing_is_sticky_and_monotone_in_the_weight(entity: str, weight: float) -> None:
    first = goes_to_canary("m", entity, weight)
    assert goes_to_canary("m", entity, weight) == first
    assert 0.0 <= canary_point("m", entity) < 1.0
    if first:  # raising the weight never moves an entity back off the canary
        assert goes_to_canary("m", entity, min(1.0, weight + 0.1))


def test_the_repository_keeps_canary_and_shadow_beside_the_main_version() -> None:
    repository = ModelRepository()
    repository.swap(model(1))
    repository.swap(model(2), CANARY)
    repository.swap(model(3), SHADOW)
    assert repository.get("m").version == 1
    assert repository.get("m", "2").version == 2
    assert repository.get("m", "3").version == 3
    assert repository.canary("m").version == 2  # type: ignore[union-attr]
    assert len(repository) == 1
    with pytest.raises(ValueError, match="alias"):
        repository.swap(model(4), "staging")


class Sink:
    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []

    def offer(self, record: PredictionRecord) -> None:
        self.records.append(record)


async def test_shadow_outputs_are_logged_as_shadow() -> None:
    sink = Sink()
    runner = ShadowRunner(sink, None)
    x = np.ones((2, 20), dtype=np.float32)
    runner.submit(model(7), {"x": x}, entity_ids=("a", "b"))
    await runner.drain()
    (record,) = sink.records
    assert record.shadow
    assert record.alias == SHADOW
    assert record.entity_ids == ("a", "b")
    expected = x @ np.linspace(-1, 1, 20, dtype=np.float32) + 7
    np.testing.assert_allclose(record.outputs["y"].ravel(), expected, rtol=1e-5)
    assert runner.scored == 1


async def test_a_failing_shadow_is_counted_and_a_full_runner_drops() -> None:
    runner = ShadowRunner(Sink(), None, max_in_flight=1)
    bad = {"x": np.ones((1, 3), dtype=np.float32)}
    runner.submit(model(1), bad)
    runner.submit(model(1), bad)  # the first is still pending
    assert runner.dropped == 1
    await runner.drain()
    await asyncio.sleep(0)
    assert runner.failed == 1


def test_shadow_records_become_events_marked_shadow() -> None:
    from mlbus.inference._predlog import to_events

    record = PredictionRecord(
        model(2),
        SHADOW,
        {"x": np.zeros((1, 20), np.float32)},
        {"y": np.ones((1, 1))},
        1.0,
        None,
        ("e",),
        shadow=True,
    )
    (event,) = to_events(record)
    assert event.shadow
    assert event.entity_id == "e"


def test_each_row_carries_the_business_event_it_scored() -> None:
    from mlbus.events import PredictionLogged
    from mlbus.inference._predlog import to_events

    outputs = {"y": np.array([[1.0], [2.0]])}
    inputs = {"x": np.zeros((2, 20), np.float32)}
    record = PredictionRecord(
        model(1), "champion", inputs, outputs, 1.0, None, ("a", "b"), event_ids=("tx-1", "tx-2")
    )
    events = to_events(record)
    assert [(e.entity_id, e.scored_event_id) for e in events] == [("a", "tx-1"), ("b", "tx-2")]
    # survives the wire, and an event without one (older producers) still parses
    assert PredictionLogged.model_validate_json(events[0].model_dump_json()) == events[0]
    plain = to_events(PredictionRecord(model(1), None, inputs, outputs, 1.0, None, ("a", "b")))
    assert [e.scored_event_id for e in plain] == [None, None]
    legacy = events[0].model_dump(mode="json")
    del legacy["scored_event_id"]
    assert PredictionLogged.model_validate(legacy).scored_event_id is None


async def test_shadow_records_keep_the_event_ids() -> None:
    sink = Sink()
    runner = ShadowRunner(sink, None)
    runner.submit(
        model(3), {"x": np.ones((2, 20), np.float32)}, entity_ids=("a", "b"), event_ids=("t1", "t2")
    )
    await runner.drain()
    (record,) = sink.records
    assert record.event_ids == ("t1", "t2")
