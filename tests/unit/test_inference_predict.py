"""Predict by entity without I/O: the missing/stale policy, and how features become model inputs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import yaml

from mlbus.errors import RetryableError
from mlbus.example import fraud_spec_path
from mlbus.featurestore import FeatureVector
from mlbus.inference import (
    FeatureLayout,
    FeaturesUnavailable,
    MissingFeatures,
    PredictionServicer,
    load_model,
    resolve_features,
)
from mlbus.spec import ProjectSpec, ServingSpec, parse_spec
from tests.unit.test_inference_model import linear_model, sha

NUMERIC = ("card_activity.count_10m", "card_activity.amount_sum_1h", "card_activity.amount")


def numeric_spec(**serving: object) -> ProjectSpec:
    """The fraud example with three numeric model features and the given serving section."""
    data = yaml.safe_load(Path(fraud_spec_path()).read_text())
    data["model"]["features"] = list(NUMERIC)
    data["drift"]["features"] = {}
    data["serving"] = {
        "missing_features": "default",
        "defaults": {"card_activity.amount": 0},
        "max_feature_age_s": 3600,
        **serving,
    }
    return parse_spec(yaml.safe_dump(data))


def serving(policy: str, max_age: int | None = 3600) -> ServingSpec:
    return ServingSpec(
        model="m",
        missing_features=policy,  # type: ignore[arg-type]
        defaults={"v.a": 1.5, "v.b": 7},
        max_feature_age_s=max_age,
    )


REFS = ("v.a", "v.b")


def test_fresh_values_are_used_with_their_ages() -> None:
    vectors = [FeatureVector("e1", {"v.a": 2.0, "v.b": 3}, {"v.a": 5.0, "v.b": 5.0})]
    (row,) = resolve_features(vectors, REFS, serving("fail"))
    assert row.values == (2.0, 3)
    assert row.ages_s == {"v.a": 5.0, "v.b": 5.0}
    assert row.defaulted == ()


def test_fail_names_each_entity_its_missing_features_and_why() -> None:
    vectors = [
        FeatureVector("e1", {"v.a": 2.0, "v.b": 3}, {"v.a": 1.0, "v.b": 1.0}),
        FeatureVector("e2", {}, {}),
        FeatureVector("e3", {"v.a": 2.0, "v.b": None}, {"v.a": 7200.0, "v.b": 7200.0}),
    ]
    with pytest.raises(MissingFeatures) as failed:
        resolve_features(vectors, REFS, serving("fail"))
    message = str(failed.value)
    assert "2 of 3 entities" in message
    assert "'e2': v.a (no online value), v.b (no online value)" in message
    assert "'e3': v.a (7200s old > max_feature_age_s 3600s), v.b (null)" in message
    assert "'e1'" not in message
    assert failed.value.grpc_status.name == "FAILED_PRECONDITION"


def test_default_replaces_missing_and_stale_values_and_says_so() -> None:
    vectors = [
        FeatureVector("e1", {"v.a": 2.0}, {"v.a": 10.0}),
        FeatureVector("e2", {"v.a": 2.0, "v.b": 4}, {"v.a": 4000.0, "v.b": 4000.0}),
    ]
    first, second = resolve_features(vectors, REFS, serving("default"))
    assert (first.values, first.ages_s, first.defaulted) == ((2.0, 7), {"v.a": 10.0}, ("v.b",))
    assert (second.values, second.ages_s, second.defaulted) == ((1.5, 7), {}, ("v.a", "v.b"))


def test_without_a_max_age_old_values_are_fresh() -> None:
    vectors = [FeatureVector("e1", {"v.a": 2.0, "v.b": 3}, {"v.a": 1e9, "v.b": 1e9})]
    (row,) = resolve_features(vectors, REFS, serving("fail", max_age=None))
    assert row.defaulted == ()


def test_request_fields_win_over_online_values_and_have_no_age() -> None:
    vectors = [FeatureVector("e1", {}, {})]
    (row,) = resolve_features(vectors, REFS, serving("fail"), {"v.a": 9.0, "v.b": 1})
    assert row.values == (9.0, 1)
    assert row.ages_s == {}


def test_aggregates_are_never_missing_an_entity_without_events_has_empty_windows() -> None:
    """As its offline row would: count 0, no mean (NaN to the model) — not a default,
    and not stale however long ago the entity's last event was (ADR 0020)."""
    aggregates = {"v.n": 0, "v.mean": None}
    refs = ("v.a", "v.n", "v.mean")
    vectors = [
        FeatureVector("new", {}, {}),
        FeatureVector("idle", {"v.a": 2.0, "v.n": 0, "v.mean": 4.5}, dict.fromkeys(refs, 1e6)),
    ]
    new, idle = resolve_features(vectors, refs, serving("default"), {}, aggregates)
    assert (new.values, new.defaulted, new.ages_s) == ((1.5, 0, None), ("v.a",), {})
    assert idle.values == (1.5, 0, 4.5)  # the stale raw field is defaulted, the windows are not
    assert idle.defaulted == ("v.a",)
    assert idle.ages_s == {"v.n": 1e6, "v.mean": 1e6}
    with pytest.raises(MissingFeatures, match=r"'new': v\.a \(no online value\)$"):
        resolve_features(vectors[:1], refs, serving("fail"), {}, aggregates)


def test_many_failing_entities_are_summarised() -> None:
    vectors = [FeatureVector(f"e{i}", {}, {}) for i in range(25)]
    with pytest.raises(MissingFeatures, match=r"25 of 25 entities.*and 15 more"):
        resolve_features(vectors, REFS, serving("fail"))


def test_a_numeric_matrix_model_takes_the_features_in_spec_order() -> None:
    spec = numeric_spec()
    data = linear_model(1, width=3)
    model = load_model("m", 1, data, expected_sha256=sha(data))
    features = spec.model_features()
    layout = FeatureLayout.of(model, features)
    assert layout.kind == "matrix"
    assert layout.feature_names == NUMERIC
    vectors = [
        FeatureVector(
            "e", {r: float(i) for i, r in enumerate(NUMERIC)}, dict.fromkeys(NUMERIC, 1.0)
        )
    ]
    rows = resolve_features(vectors, NUMERIC, spec.serving)
    inputs = layout.build(rows, features)
    assert inputs["x"].dtype == np.float32
    assert inputs["x"].tolist() == [[0.0, 1.0, 2.0]]


def test_a_string_feature_cannot_feed_a_numeric_matrix_and_is_named() -> None:
    spec = ProjectSpec.model_validate(yaml.safe_load(Path(fraud_spec_path()).read_text()))
    features = spec.model_features()
    data = linear_model(1, width=len(features))
    model = load_model("m", 1, data, expected_sha256=sha(data))
    with pytest.raises(FeaturesUnavailable) as failed:
        FeatureLayout.of(model, features)
    assert "card_activity.merchant_category" in str(failed.value)
    assert "card_activity.country" in str(failed.value)
    assert failed.value.grpc_status.name == "FAILED_PRECONDITION"


def test_a_model_of_another_width_is_refused_with_both_counts() -> None:
    spec = numeric_spec()
    data = linear_model(1, width=5)
    model = load_model("m", 1, data, expected_sha256=sha(data))
    with pytest.raises(FeaturesUnavailable, match=r"5 columns.*3 features"):
        FeatureLayout.of(model, spec.model_features())


def test_one_input_per_feature_is_fed_column_by_column() -> None:
    spec = numeric_spec()
    data = linear_model(1, width=1, input_name="amount")
    model = load_model("m", 1, data, expected_sha256=sha(data))
    features = spec.model_features()
    layout = FeatureLayout.of(model, features)
    assert layout.kind == "columns"
    vectors = [FeatureVector("e", dict.fromkeys(NUMERIC, 3.0), dict.fromkeys(NUMERIC, 1.0))]
    inputs = layout.build(resolve_features(vectors, NUMERIC, spec.serving), features)
    assert list(inputs) == ["amount"]
    assert inputs["amount"].shape == (1, 1)


class _SlowStore:
    """An online store that answers after `delay_s`; `slow_reads` of them, then at once."""

    def __init__(self, delay_s: float, slow_reads: int | None = None) -> None:
        self.delay_s = delay_s
        self.slow_reads = slow_reads
        self.reads = 0

    async def get_features(self, *args: object, **kwargs: object) -> list[FeatureVector]:
        self.reads += 1
        if self.slow_reads is None or self.reads <= self.slow_reads:
            await asyncio.sleep(self.delay_s)
        return [FeatureVector("e1", {}, {})]


class _Call:
    """The servicer context as `_read` uses it: the call's remaining deadline."""

    def __init__(self, remaining_s: float | None) -> None:
        self.deadline = None if remaining_s is None else time.monotonic() + remaining_s

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


def _servicer(store: _SlowStore) -> Any:
    return PredictionServicer(
        cast(Any, None), spec=numeric_spec(timeout_ms=50), store=cast(Any, store)
    )


async def test_a_read_cut_short_by_the_callers_deadline_is_deadline_exceeded() -> None:
    """A late call is not a slow store: the status an SRE reads must say which it was
    (the soak saw 'the online store did not answer within 1 ms (serving.timeout_ms)')."""
    store = _SlowStore(delay_s=5.0)
    servicer = _servicer(store)
    read = servicer._read

    with pytest.raises(RetryableError) as slow:  # the budget came first: the store was slow
        await read(["e1"], 0, {}, _Call(remaining_s=10.0))
    assert slow.value.grpc_status.name == "UNAVAILABLE"
    assert "did not answer within 50 ms (serving.timeout_ms) twice" in str(slow.value)
    assert store.reads == 2

    with pytest.raises(RetryableError) as late:  # the deadline came first
        await read(["e1"], 0, {}, _Call(remaining_s=0.02))
    assert late.value.grpc_status.name == "DEADLINE_EXCEEDED"
    assert "deadline passed while reading the online store (20 ms were left)" in str(late.value)

    reads = store.reads
    with pytest.raises(RetryableError) as expired:  # nothing left: the store is not asked
        await read(["e1"], 0, {}, _Call(remaining_s=0.0))
    assert expired.value.grpc_status.name == "DEADLINE_EXCEEDED"
    assert store.reads == reads


async def test_a_read_that_misses_the_budget_once_is_tried_again_within_the_deadline() -> None:
    """One miss on a busy host is usually scheduling, not the store: the second try
    serves the call. A deadline with no room for a whole second try fails at once,
    saying so, and a store that misses every budget fails after two."""
    budget_s = numeric_spec(timeout_ms=50).serving.timeout_ms / 1000
    once = _SlowStore(delay_s=10 * budget_s, slow_reads=1)
    served = await _servicer(once)._read(["e1"], 0, {}, _Call(remaining_s=None))
    assert [v.entity_id for v in served] == ["e1"]
    assert once.reads == 2

    tight = _SlowStore(delay_s=10 * budget_s, slow_reads=1)
    with pytest.raises(RetryableError) as no_room:
        await _servicer(tight)._read(["e1"], 0, {}, _Call(remaining_s=1.5 * budget_s))
    assert no_room.value.grpc_status.name == "UNAVAILABLE"
    assert "once, and the deadline left no room for more" in str(no_room.value)
    assert tight.reads == 1


class _ReplyDuringAStall:
    """A store whose reply arrives a moment after the read, while this process is busy
    (the loop blocked) until after the budget: both are due when the loop wakes."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.reads = 0

    async def get_features(self, *args: object, **kwargs: object) -> list[FeatureVector]:
        self.reads += 1
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[list[FeatureVector]] = loop.create_future()
        loop.call_soon(time.sleep, self.stall_s)  # the busy process, from the next pass
        # The reply, in time: due when the loop wakes, with the budget, and before it.
        loop.call_later(self.stall_s / 100, reply.set_result, [FeatureVector("e1", {}, {})])
        return await reply


async def test_a_reply_received_in_time_wins_over_a_budget_that_ran_out_meanwhile() -> None:
    """asyncio.timeout alone cancels this read: its expiry runs in the pass that sees
    the reply, before the read resumes. The store answered in time; one read serves."""
    budget_s = numeric_spec(timeout_ms=50).serving.timeout_ms / 1000
    store = _ReplyDuringAStall(stall_s=2 * budget_s)
    served = await _servicer(cast(Any, store))._read(["e1"], 0, {}, _Call(remaining_s=None))
    assert [v.entity_id for v in served] == ["e1"]
    assert store.reads == 1
