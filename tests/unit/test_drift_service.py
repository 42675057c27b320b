"""The drift service's pure parts and its processor, with in-memory fakes of Redis and registry."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlbus.bus import PredictionsAndLabelsDecoder, Received
from mlbus.drift import DriftProcessor, Retraining, _retraining, detection_id
from mlbus.drift._labels import Pending, PendingPredictions, label_outcome
from mlbus.drift._predictions import DriftPrediction
from mlbus.drift._store import (
    ArmedTrigger,
    Claim,
    FireDecision,
    PartitionSnapshot,
    StoredPartition,
    advance_trigger,
    decide_claim,
)
from mlbus.drift._versions import CategoryDecoder, ServedVersion
from mlbus.driftstats import ABSENT, PolicyState, RetrainPolicy, outcome_error, outcome_group
from mlbus.errors import InvalidInput, RetryableError
from mlbus.events import IngestValidated, PredictionLogged
from mlbus.model_metadata import positive_class_of
from mlbus.outcomestats import prediction_score
from mlbus.profiles import ReferenceProfile
from mlbus.spec import DriftSpec, parse_spec

CHANNELS = ["pos", "contactless", "online"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)

SPEC = {
    "project": "unit",
    "sources": {
        "tx": {
            "topic": "unit.tx.v1",
            "entity": "card_id",
            "event_time": "ts",
            "event_id": "tx_id",
            "contract": {
                "version": 1,
                "fields": {
                    "tx_id": {"type": "string"},
                    "card_id": {"type": "string"},
                    "amount": {"type": "float"},
                    "channel": {"type": "enum", "values": CHANNELS},
                    "abroad": {"type": "bool"},
                    "ts": {"type": "timestamp"},
                },
            },
        },
        "labels": {
            "topic": "unit.labels.v1",
            "kind": "labels",
            "entity": "card_id",
            "event_time": "ts",
            "labels": {"source": "tx", "event_id_field": "tx_id", "label_field": "is_fraud"},
            "contract": {
                "version": 1,
                "fields": {
                    "tx_id": {"type": "string"},
                    "card_id": {"type": "string"},
                    "is_fraud": {"type": "bool"},
                    "ts": {"type": "timestamp"},
                },
            },
        },
    },
    "features": {
        "v": {
            "entity": "card_id",
            "source": "tx",
            "version": 1,
            "ttl_s": "1d",
            "fields": ["amount", "channel", "abroad"],
        }
    },
    "model": {
        "name": "m",
        "task": "classification",
        "label": {"source": "labels", "field": "is_fraud"},
        "features": ["v"],
        "metric": "auc",
        "threshold": 0.5,
    },
    "drift": {"window_size": 50, "min_samples": 20, "persistence": 1, "cooldown_s": 600},
}


def spec(**drift: Any) -> Any:
    doc = json.loads(json.dumps(SPEC))
    doc["drift"].update(drift)
    return parse_spec(json.dumps(doc))


# ── decoding the prediction log ─────────────────────────────────────────────


def test_codes_decode_to_the_profile_categories_from_the_model_metadata() -> None:
    metadata = {
        "mlbus.encoding": json.dumps({"refs": ["v.channel"], "categories": {"v.channel": CHANNELS}})
    }
    decoder = CategoryDecoder.from_metadata(metadata, spec().model_features())
    decoded = decoder.decode({"v.channel": 2.0, "v.amount": 3.0})
    assert decoded == {"v.channel": "online", "v.amount": 3.0}  # numbers untouched
    assert decoder.decode({"v.channel": None})["v.channel"] is None  # NaN was logged as null
    assert decoder.decode({"v.channel": 7.0})["v.channel"] is None  # no such code
    assert decoder.decode({"v.channel": 1.5})["v.channel"] is None
    assert decoder.decode({"v.channel": "contactless"})["v.channel"] == "contactless"


def test_without_metadata_the_specs_convention_decodes_enums_and_booleans() -> None:
    decoder = CategoryDecoder.from_metadata({}, spec().model_features())
    assert decoder.decode({"v.channel": 0.0, "v.abroad": 1.0}) == {
        "v.channel": "pos",
        "v.abroad": "true",
    }


def test_columns_lay_rows_out_alike_whether_or_not_every_row_holds_every_feature() -> None:
    decoder = CategoryDecoder.from_metadata({}, spec().model_features())
    refs = ["v.amount", "v.channel", "v.abroad"]
    whole = [
        {"v.amount": 1.0, "v.channel": 0.0, "v.abroad": 1.0},
        {"v.amount": 2.0, "v.channel": 1.0, "v.abroad": 0.0, "v.other": 5.0},
    ]
    expected = {
        "v.amount": [1.0, 2.0],
        "v.channel": ["pos", "contactless"],
        "v.abroad": ["true", "false"],
    }
    assert {ref: list(values) for ref, values in decoder.columns(whole, refs).items()} == expected
    gappy = [whole[0], {"v.amount": 2.0, "v.channel": 1.0}]  # a row without v.abroad
    laid = decoder.columns(gappy, refs)
    assert list(laid["v.channel"]) == ["pos", "contactless"]
    assert list(laid["v.abroad"]) == ["true", ABSENT]
    assert {ref: list(v) for ref, v in decoder.columns(whole, ["v.amount"]).items()} == {
        "v.amount": [1.0, 2.0]
    }
    assert decoder.columns([], refs) == {ref: [] for ref in refs}


def test_malformed_encoding_metadata_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"malformed mlbus\.encoding"):
        CategoryDecoder.from_metadata({"mlbus.encoding": "{not json"}, spec().model_features())
    with pytest.raises(ValueError, match=r"malformed mlbus\.encoding"):
        CategoryDecoder.from_metadata({"mlbus.encoding": '{"refs": []}'}, spec().model_features())


def test_positive_class_comes_from_the_classes_metadata() -> None:
    assert positive_class_of({"mlbus.classes": "no,yes"}) == "yes"
    assert positive_class_of({}) == "true"


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ({"label": [1.0], "probabilities": [0.3, 0.7]}, 0.7),
        ({"prediction": [12.5]}, 12.5),
        ({"y": [4.0]}, 4.0),
        ({"label": [1.0]}, None),
        ({"probabilities": [0.5, math.nan]}, None),
        ({}, None),
    ],
)
def test_prediction_score(outputs: dict[str, list[float]], expected: float | None) -> None:
    assert prediction_score(outputs) == expected


# ── the label join ───────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("label", "score", "expected"),
    [
        (True, 0.9, ("positive", 0.01)),
        (True, 0.2, ("positive", 0.64)),
        (False, 0.2, ("negative", 0.04)),
        (False, 0.5, ("negative", 0.25)),
        ("true", 1.0, ("positive", 0.0)),
        (None, 0.9, None),
    ],
)
def test_a_classifier_s_outcome_is_the_squared_error_in_the_group_of_its_label(
    label: Any, score: float, expected: tuple[str, float] | None
) -> None:
    got = label_outcome(label, score, metric="brier", positive="true")
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.group, got.error) == (expected[0], pytest.approx(expected[1]))


def test_a_classifier_s_outcome_reads_the_models_positive_class() -> None:
    assert label_outcome("1", 0.8, metric="brier", positive="1") == (
        "positive",
        pytest.approx(0.04),
    )
    assert label_outcome("0", 0.8, metric="brier", positive="1") == (
        "negative",
        pytest.approx(0.64),
    )


def test_a_regressor_s_outcome_is_the_absolute_error() -> None:
    assert label_outcome(10, 12.5, metric="absolute", positive="") == ("all", 2.5)
    assert label_outcome("ten", 12.5, metric="absolute", positive="") is None
    assert label_outcome(True, 1.0, metric="absolute", positive="") is None
    assert label_outcome(math.inf, 1.0, metric="absolute", positive="") is None


def test_a_joined_label_s_outcome_is_the_trainer_s_holdout_outcome() -> None:
    """One definition: the live join and the trainer's arrays give the same numbers."""
    scores = np.asarray([0.05, 0.7, 0.3, 0.99])
    labels = [False, True, True, False]
    actual = np.asarray(labels, dtype=float)
    trainer = outcome_error("brier", actual, scores)
    live = [
        label_outcome(y, float(s), metric="brier", positive="true")
        for y, s in zip(labels, scores, strict=True)
    ]
    assert [o.error for o in live if o] == pytest.approx(trainer.tolist())
    assert [o.group for o in live if o] == [outcome_group("brier", a) for a in actual]


class NoRedis:
    """Enough of a client for what PendingPredictions does before a flush."""

    def register_script(self, script: str) -> None:
        return None


async def test_kept_predictions_round_trip_through_their_encoding() -> None:
    pending = PendingPredictions(NoRedis(), prefix="t", ttl_s=60, max_entries=10)  # type: ignore[arg-type]
    pending.keep("m", 3, [("a", 0.123456789, 1_767_225_600.25), ("b", 1e-17, 0.0)])
    assert await pending.lookup("m", ["a", "b"]) == {  # buffered: read back as Redis holds them
        "a": Pending(3, 0.123456789, 1_767_225_600.25),
        "b": Pending(3, 1e-17, 0.0),
    }
    assert Pending.decode(b"3|0.5") == Pending(3, 0.5, None)  # written before `at` existed


# ── decisions: one alarm per cooldown, retraining by the RetrainPolicy ──────


def test_first_detection_fires_and_asks_for_retraining() -> None:
    drift = DriftSpec(cooldown_s=600, max_retrains_per_hour=2)
    claim, doc = decide_claim(policy_doc={}, now=T0, cooldown_s=600, retrain=RetrainPolicy(drift))
    assert (claim.alarm, claim.trigger) == (True, True)
    assert doc["last_alarm"] == T0.isoformat()
    assert PolicyState.model_validate(doc["retrain"]).last_trigger == T0


def test_a_detection_inside_the_cooldown_is_suppressed_with_its_reason() -> None:
    retrain = RetrainPolicy(DriftSpec(cooldown_s=600))
    _, doc = decide_claim(policy_doc={}, now=T0, cooldown_s=600, retrain=retrain)
    claim, after = decide_claim(
        policy_doc=doc, now=T0 + timedelta(seconds=30), cooldown_s=600, retrain=retrain
    )
    assert (claim.alarm, claim.trigger) == (False, False)
    assert claim.reason.startswith("cooldown")
    assert after == doc  # a suppressed detection changes nothing
    later, _ = decide_claim(
        policy_doc=doc, now=T0 + timedelta(seconds=601), cooldown_s=600, retrain=retrain
    )
    assert (later.alarm, later.trigger) == (True, True)


def test_the_hourly_cap_stops_retraining_but_not_the_alarm() -> None:
    retrain = RetrainPolicy(DriftSpec(cooldown_s=60, max_retrains_per_hour=1))
    _, doc = decide_claim(policy_doc={}, now=T0, cooldown_s=60, retrain=retrain)
    claim, _ = decide_claim(
        policy_doc=doc, now=T0 + timedelta(minutes=5), cooldown_s=60, retrain=retrain
    )
    assert claim.alarm
    assert not claim.trigger
    assert claim.reason.startswith("hourly cap")


def test_alert_only_specs_alarm_without_retraining() -> None:
    claim, _ = decide_claim(policy_doc={}, now=T0, cooldown_s=60, retrain=None)
    assert (claim.alarm, claim.trigger) == (True, False)


def test_claims_round_trip() -> None:
    claim = Claim(alarm=True, trigger=False, reason="hourly cap: …", published=True)
    assert Claim.from_json(claim.to_json()) == claim


def test_detection_ids_are_deterministic_and_distinct() -> None:
    first = detection_id("m", 1, "t:0", "window", 3)
    assert first == detection_id("m", 1, "t:0", "window", 3)
    others = {
        detection_id("m", 1, "t:1", "window", 3),
        detection_id("m", 1, "t:0", "performance", 3),
        detection_id("m", 2, "t:0", "window", 3),
        detection_id("m", 1, "t:0", "window", 4),
    }
    assert first not in others
    assert len(others) == 4


# ── the record decoder ───────────────────────────────────────────────────────


def _headers(event_type: str) -> list[tuple[str, bytes]]:
    return [("ce_type", event_type.encode())]


def validated(source: str, payload: dict[str, Any], event_time: datetime = T0) -> IngestValidated:
    return IngestValidated(
        source=source,
        contract_version=1,
        entity_id="c",
        event_time=event_time,
        payload=payload,
        source_topic="x",
        source_partition=0,
        source_offset=0,
    )


DRIFT_DECODER = PredictionsAndLabelsDecoder(None, reader="drift", predictions=DriftPrediction)


def test_the_decoder_builds_only_label_events_of_the_validated_stream() -> None:
    decode = PredictionsAndLabelsDecoder(
        "labels", reader="drift service", predictions=DriftPrediction
    )
    other = validated("tx", {"amount": 1.0}).model_dump_json().encode()
    label = validated("labels", {"tx_id": "a", "is_fraud": True}).model_dump_json().encode()
    assert decode(other, _headers(IngestValidated.event_type)) is None
    assert isinstance(decode(label, _headers(IngestValidated.event_type)), IngestValidated)
    with pytest.raises(InvalidInput, match="failed its schema"):
        decode(b'{"model": 1}', _headers(PredictionLogged.event_type))
    with pytest.raises(InvalidInput, match="unexpected event type"):
        decode(b"{}", _headers("mlbus.model.published.v1"))
    with pytest.raises(InvalidInput, match="tombstone"):
        decode(None, _headers(PredictionLogged.event_type))


def test_the_drift_service_reads_the_fields_it_uses_as_logged_predictions_declare_them() -> None:
    logged = PredictionLogged.model_fields
    for name, read in DriftPrediction.model_fields.items():
        assert name in logged, name
        if name != "features":  # declared for speed: compared on what it accepts below
            assert read.annotation == logged[name].annotation, name
        assert read.default == logged[name].default, name
        assert read.default_factory == logged[name].default_factory, name
        assert read.is_required() == logged[name].is_required(), name


@pytest.mark.parametrize(
    "literal",
    [
        "1",
        "1.0",
        "-0.0",
        "12345678901234567890123",
        "1e400",
        "NaN",
        "true",
        "false",
        "null",
        '""',
        '"3"',
        "[1]",
        "[]",
        '{"a": 1}',
        "{}",
    ],
)
def test_the_projection_reads_a_feature_value_exactly_as_the_contract_does(literal: str) -> None:
    event = PredictionLogged(
        model="m",
        version=1,
        alias="champion",
        entity_id="c",
        features={},
        outputs={"probabilities": [0.4, 0.6]},
        latency_ms=1.0,
    ).model_dump(mode="json")
    text = json.dumps({**event, "features": {"v.amount": "<value>"}})
    raw = text.replace('"<value>"', literal).encode()
    try:
        expected: Any = PredictionLogged.model_validate_json(raw).features["v.amount"]
    except ValueError:
        with pytest.raises(ValueError, match="features"):
            DriftPrediction.model_validate_json(raw)
        return
    read = DriftPrediction.model_validate_json(raw).features["v.amount"]
    assert type(read) is type(expected)
    assert repr(read) == repr(expected)


def test_a_prediction_is_read_whatever_its_unused_fields_hold_but_not_a_malformed_used_one() -> (
    None
):
    event = predictions(1)[0].payload.model_dump(mode="json")
    logged = {**event, "alias": None, "latency_ms": -1.0, "feature_ages_s": {"v.amount": "?"}}
    headers = _headers(PredictionLogged.event_type)
    with pytest.raises(ValueError, match="latency_ms"):
        PredictionLogged.model_validate(logged)
    read = DRIFT_DECODER(json.dumps(logged).encode(), headers)
    assert isinstance(read, DriftPrediction)
    assert read.features == event["features"]
    with pytest.raises(InvalidInput, match="features"):
        DRIFT_DECODER(json.dumps({**logged, "features": None}).encode(), headers)


# ── the processor, with fakes ────────────────────────────────────────────────


@dataclass
class FakeStore:
    """DriftStore in memory: the same forward-only save, claims decided once."""

    partitions: dict[tuple[str, int], StoredPartition] = field(default_factory=dict)
    claims: dict[str, Claim] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    recorded: list[dict[str, Any]] = field(default_factory=list)
    armed_triggers: dict[str, str] = field(default_factory=dict)
    """model → ArmedTrigger JSON, as Redis keeps it (so a restart reads it back)."""
    down: bool = False

    async def load_partition(self, topic: str, partition: int) -> StoredPartition:
        return self.partitions.get((topic, partition), StoredPartition())

    async def stored_offset(self, topic: str, partition: int) -> int:
        return self.partitions.get((topic, partition), StoredPartition()).offset

    async def save(self, snapshots: list[PartitionSnapshot]) -> list[bool]:
        if self.down:
            raise RetryableError("redis down")
        written = []
        for snap in snapshots:
            key = (snap.topic, snap.partition)
            if self.partitions.get(key, StoredPartition()).offset > snap.offset:
                written.append(False)
                continue
            self.partitions[key] = StoredPartition(snap.offset, dict(snap.monitors))
            written.append(True)
        return written

    async def claim(
        self,
        detection_id: str,
        model: str,
        *,
        now: datetime,
        cooldown_s: float,
        retrain: Any,
        arm: bool = False,
    ) -> Claim:
        if detection_id not in self.claims:
            claim, self.policy = decide_claim(
                policy_doc=self.policy, now=now, cooldown_s=cooldown_s, retrain=retrain, arm=arm
            )
            self.claims[detection_id] = claim
        return self.claims[detection_id]

    async def mark_published(self, detection_id: str, claim: Claim) -> None:
        self.claims[detection_id] = Claim(claim.alarm, claim.trigger, claim.reason, True)

    async def record_detection(self, summary: dict[str, Any]) -> None:
        self.recorded.append(summary)

    async def arm(self, trigger: ArmedTrigger) -> ArmedTrigger:
        self.armed_triggers.setdefault(trigger.model, trigger.to_json())
        return ArmedTrigger.from_json(self.armed_triggers[trigger.model])

    async def armed(self, model: str) -> ArmedTrigger | None:
        if self.down:
            raise RetryableError("redis down")
        raw = self.armed_triggers.get(model)
        return None if raw is None else ArmedTrigger.from_json(raw)

    async def advance(
        self, model: str, *, joined: Any, clock: Any, **kw: Any
    ) -> tuple[ArmedTrigger, FireDecision | None] | None:
        armed = await self.armed(model)
        if armed is None:
            return None
        labels, first_label_time = armed.evidence(joined)
        armed, self.policy, decision = advance_trigger(
            armed, self.policy, labels=labels, first_label_time=first_label_time, now=clock(), **kw
        )
        self.armed_triggers[model] = armed.to_json()
        return armed, decision

    async def disarm(self, model: str, detection_id: str) -> None:
        armed = await self.armed(model)
        if armed is not None and armed.detection_id == detection_id:
            del self.armed_triggers[model]


@dataclass
class FakePending:
    entries: dict[str, Pending] = field(default_factory=dict)
    forgotten: list[str] = field(default_factory=list)

    def keep(self, model: str, version: int, kept: Iterable[tuple[str, float, float]]) -> None:
        self.entries.update((i, Pending(version, score, at)) for i, score, at in kept)

    async def lookup(self, model: str, event_ids: list[str]) -> dict[str, Pending]:
        return {i: self.entries[i] for i in event_ids if i in self.entries}

    def joined(self, model: str, event_id: str) -> None:
        self.forgotten.append(event_id)

    async def flush(self) -> int:
        return 0

    async def forget_joined(self) -> None:
        return None


@dataclass
class FakeCatalog:
    served: dict[tuple[str, int], ServedVersion]
    unreachable: bool = False

    async def get(self, model: str, version: int) -> ServedVersion | None:
        if self.unreachable:
            raise RetryableError("registry down")
        return self.served.get((model, version))


@dataclass
class FakePublisher:
    events: list[Any] = field(default_factory=list)
    traces: list[int] = field(default_factory=list)
    """The trace each event was published in (the real Publisher puts it in the headers)."""

    async def publish(self, event: Any, key: Any = None) -> None:
        self.events.append(event)
        self.traces.append(trace.get_current_span().get_span_context().trace_id)


def served_version(project: Any) -> ServedVersion:
    rng = np.random.default_rng(1)
    profile = ReferenceProfile.from_samples(
        {
            "v.amount": rng.normal(100, 10, 2000),
            "v.channel": list(rng.choice(CHANNELS, 2000)),
            "v.abroad": list(rng.choice([True, False], 2000)),
        },
        predictions=rng.uniform(0, 1, 2000),
    )
    return ServedVersion(
        "m", 1, profile, CategoryDecoder.from_spec(project.model_features()), "true", "brier"
    )


RETRAINING_OPTIONS = ("retrain_lookback_s", "retrain_min_labels", "retrain_max_wait_s")


def processor_for(
    project: Any, store: FakeStore, **kw: Any
) -> tuple[DriftProcessor, FakePublisher, FakePending]:
    publisher, pending = FakePublisher(), kw.pop("pending", None) or FakePending()
    catalog = kw.pop("catalog", None) or FakeCatalog({("m", 1): served_version(project)})
    retraining = Retraining(
        project,
        store,  # type: ignore[arg-type]
        publisher=publisher,  # type: ignore[arg-type]
        clock=kw.pop("clock", lambda: T0),
        **{k: kw.pop(k) for k in RETRAINING_OPTIONS if k in kw},
    )
    processor = DriftProcessor(
        project,
        catalog,
        store,
        pending,
        retraining,
        **kw,  # type: ignore[arg-type]
    )
    return processor, publisher, pending


def predictions(
    n: int, *, start: int = 0, amount: float = 100.0, partition: int = 0, **kw: Any
) -> list[Received[Any]]:
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        event = PredictionLogged(
            model=kw.get("model", "m"),
            version=kw.get("version", 1),
            alias="champion",
            entity_id="c",
            features={
                "v.amount": float(rng.normal(amount, 10)),
                "v.channel": float(i % 3),
                "v.abroad": float(i % 2),
            },
            outputs={"probabilities": [0.4, 0.6]},
            latency_ms=1.0,
            shadow=kw.get("shadow", False),
            scored_event_id=f"tx-{i}",
            occurred_at=T0 + timedelta(seconds=i),
        )
        read = DRIFT_DECODER(event.model_dump_json().encode(), _headers(event.event_type))
        out.append(Received(read, "mlbus.prediction.logged.v1", partition, i, b"c", (), 0))
    return out


def monitor_counts(processor: DriftProcessor) -> dict[tuple[str, int], tuple[int, int]]:
    return {
        key: (m.status().window_index, m.status().n_in_window)
        for state in processor.partitions.values()
        for key, m in state.monitors.items()
    }


async def test_a_restarted_processor_skips_what_was_saved_and_counts_the_rest_once() -> None:
    project, store = spec(), FakeStore()
    uninterrupted, _, _ = processor_for(project, FakeStore())
    await uninterrupted.handle_batch(predictions(130))
    await uninterrupted.flush()

    first, _, _ = processor_for(project, store)
    await first.handle_batch(predictions(75))
    await first.flush()
    await first.handle_batch(predictions(10, start=75))  # applied but never saved: "crash"
    second, _, _ = processor_for(project, store)
    await second.handle_batch(predictions(130))  # the group restarts from offset 0
    await second.flush()
    assert second.replayed == 75
    assert monitor_counts(second) == monitor_counts(uninterrupted) == {("m", 1): (2, 30)}


async def test_a_batch_that_fails_halfway_counts_nothing_twice() -> None:
    project = spec()
    store = FakeStore()
    catalog = FakeCatalog({("m", 1): served_version(project)})
    processor, _, _ = processor_for(project, store, catalog=catalog)
    await processor.handle_batch(predictions(20))
    batch = predictions(20, start=20) + predictions(5, start=40, version=2)
    catalog.unreachable = True
    with pytest.raises(RetryableError):
        await processor.handle_batch(batch)
    assert processor.partitions[("mlbus.prediction.logged.v1", 0)].offset == 19
    catalog.unreachable = False
    for received in batch:  # the consumer's record-by-record fallback
        await processor.handle(received)
    assert monitor_counts(processor) == {("m", 1): (0, 40)}  # v2 has no profile: skipped


async def test_shadow_and_other_models_are_not_monitored() -> None:
    project = spec()
    processor, _, pending = processor_for(project, FakeStore())
    await processor.handle_batch(
        predictions(5, shadow=True) + predictions(5, start=5, model="other")
    )
    assert monitor_counts(processor) == {}
    assert pending.entries == {}
    assert processor.partitions[("mlbus.prediction.logged.v1", 0)].offset == 9


async def test_labels_join_their_predictions_and_feed_the_performance_detector() -> None:
    project = spec()
    processor, _, pending = processor_for(project, FakeStore())
    await processor.handle_batch(predictions(3))  # scores 0.6: the model says fraud
    assert set(pending.entries) == {"tx-0", "tx-1", "tx-2"}
    labels = [
        Received(
            validated("labels", {"tx_id": "tx-0", "is_fraud": True}),
            "mlbus.ingest.validated.v1",
            1,
            0,
            None,
            (),
            0,
        ),
        Received(
            validated("labels", {"tx_id": "tx-1", "is_fraud": False}),
            "mlbus.ingest.validated.v1",
            1,
            1,
            None,
            (),
            0,
        ),
        Received(
            validated("labels", {"tx_id": "nope", "is_fraud": False}),
            "mlbus.ingest.validated.v1",
            1,
            2,
            None,
            (),
            0,
        ),
        Received(None, "mlbus.ingest.validated.v1", 1, 3, None, (), 0),  # another source's event
    ]
    await processor.handle_batch(labels)
    state = processor.partitions[("mlbus.ingest.validated.v1", 1)]
    performance = state.monitors[("m", 1)].status().performance
    assert performance is not None
    assert performance.outcomes == 2
    assert performance.mean_error == pytest.approx((0.4**2 + 0.6**2) / 2)  # Brier of 0.6
    assert pending.forgotten == ["tx-0", "tx-1"]
    assert state.offset == 3


async def test_a_detection_is_published_once_with_its_training_request(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_retraining, "_tracer", provider.get_tracer("mlbus.drift"))
    # Without labels joined there is no evidence to wait for: the request goes at once.
    project = spec(persistence=1, window_size=50, min_samples=20, performance_drift=False)
    store = FakeStore()
    processor, publisher, _ = processor_for(project, store)
    await processor.handle_batch(predictions(50, amount=300.0))  # far off the reference
    await processor.handle_batch(predictions(50, start=50, amount=300.0, partition=1))
    await processor.flush()
    kinds = [type(e).__name__ for e in publisher.events]
    assert kinds == ["DriftDetected", "TrainingRequested"]  # the second partition: cooldown
    detected, request = publisher.events
    assert request.cause_event_id == detected.event_id
    assert request.reason == "drift"
    (span,) = exporter.get_finished_spans()  # both in one new trace the trainer continues
    assert span.name == "drift.detected"
    assert span.parent is None
    assert publisher.traces == [span.context.trace_id] * 2
    assert [r["alarm"] for r in store.recorded] == [True, False]
    # the log lines carry each drifted test's numbers, read after the event is gone
    drifted = [r for r in detected.results if r.drifted]
    assert drifted
    alarm, suppressed = (r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "in mlbus.prediction.logged.v1:0 window 0 (50 live values)" in alarm
    for result in drifted:
        shown = f"{result.feature}/{result.test} {result.statistic:.4g} vs {result.threshold:.4g}"
        assert shown in alarm
        assert shown in suppressed  # the second partition's window holds the same values
    assert "p=" in alarm
    assert "retraining not requested: cooldown" in suppressed

    replay, again, _ = processor_for(
        project, FakeStore(claims=dict(store.claims), policy=store.policy)
    )
    await replay.handle_batch(predictions(50, amount=300.0))  # same records, same window, same id
    await replay.flush()
    assert again.events == []


async def test_state_is_kept_until_redis_is_back(monkeypatch: pytest.MonkeyPatch) -> None:
    project = spec()
    store = FakeStore(down=True)
    processor, _, _ = processor_for(project, store)
    await processor.handle_batch(predictions(10))
    # Redis down: the commit-time work fails loudly (the consumer retries it) and keeps
    # the state to save; once Redis is back, the next attempt saves it.
    with pytest.raises(RetryableError):
        await processor.flush()
    assert processor.partitions[("mlbus.prediction.logged.v1", 0)].dirty
    store.down = False
    await processor.flush()
    assert store.partitions[("mlbus.prediction.logged.v1", 0)].offset == 9


async def test_a_partition_that_comes_back_continues_from_where_the_other_replica_left_it() -> None:
    project, store = spec(), FakeStore()
    replica_a, _, _ = processor_for(project, store)
    replica_b, _, _ = processor_for(project, store)
    await replica_a.handle_batch(predictions(10))
    await replica_a.flush()  # the partition is revoked from A (commit), assigned to B
    await replica_b.handle_batch(predictions(20, start=10))
    await replica_b.flush()  # and back to A, which must not continue from its stale copy
    await replica_a.handle_batch(predictions(10, start=30))
    await replica_a.flush()
    assert monitor_counts(replica_a) == {("m", 1): (0, 40)}
    assert store.partitions[("mlbus.prediction.logged.v1", 0)].offset == 39


async def test_a_replica_behind_the_saved_state_is_fenced_off() -> None:
    project, store = spec(), FakeStore()
    ahead, _, _ = processor_for(project, store)
    await ahead.handle_batch(predictions(30))
    await ahead.flush()
    behind, _, _ = processor_for(project, FakeStore())
    await behind.handle_batch(predictions(10))
    behind.store = store  # same Redis, older view of the partition
    await behind.flush()
    assert store.partitions[("mlbus.prediction.logged.v1", 0)].offset == 29
    assert behind.partitions == {}  # it dropped its stale copy


# ── the armed retraining: the request waits for labels of the drift ─────────

LABEL_TIME = datetime(2025, 12, 20, tzinfo=UTC)
"""Labels' event times: another clock than the predictions' (the trainer filters on it)."""


def labels_for(indexes: range, *, partition: int = 0, offset: int = 0) -> list[Received[Any]]:
    return [
        Received(
            validated(
                "labels",
                {"tx_id": f"tx-{i}", "is_fraud": False},
                event_time=LABEL_TIME + timedelta(minutes=i),
            ),
            "mlbus.ingest.validated.v1",
            partition,
            offset + n,
            None,
            (),
            0,
        )
        for n, i in enumerate(indexes)
    ]


def traced(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_retraining, "_tracer", provider.get_tracer("mlbus.drift"))
    return exporter


async def detect(processor: DriftProcessor) -> None:
    """50 drifted predictions (tx-0..tx-49 at T0 + i s) whose window detects."""
    await processor.handle_batch(predictions(50, amount=300.0))
    await processor.flush()


ARMING = {"persistence": 1, "window_size": 50, "min_samples": 20}


async def test_a_detection_alarms_at_once_and_fires_the_retraining_at_the_label_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = traced(monkeypatch)
    store = FakeStore()
    processor, publisher, pending = processor_for(spec(**ARMING), store, retrain_min_labels=5)
    for i in range(1000, 1020):  # predictions made an hour before the drift window
        pending.keep("m", 1, [(f"tx-{i}", 0.6, (T0 - timedelta(hours=1)).timestamp())])
    for i in range(60, 62):  # predictions made after the detection (window end: T0 + 49 s)
        pending.keep("m", 1, [(f"tx-{i}", 0.6, (T0 + timedelta(seconds=i)).timestamp())])
    await detect(processor)
    (detected,) = publisher.events  # the alarm, no request yet
    assert type(detected).__name__ == "DriftDetected"
    assert detected.window_start == T0
    assert store.recorded[-1]["retraining_armed"] is True
    assert "retrain" not in store.policy  # the cooldown counts from the firing

    # Labels of predictions made before the drift window are no evidence of the drift.
    await processor.handle_batch(labels_for(range(1000, 1020)))
    await processor.handle_batch(labels_for(range(10, 14), offset=20))
    await processor.flush()
    assert len(publisher.events) == 1
    armed = await store.armed("m")
    assert armed is not None
    assert armed.labels == 4

    await processor.handle_batch(labels_for(range(60, 62), offset=24))
    await processor.flush()
    assert [type(e).__name__ for e in publisher.events] == ["DriftDetected", "TrainingRequested"]
    request = publisher.events[1]
    assert request.cause_event_id == detected.event_id
    assert request.reason == "drift"
    # Labels in the detection window counted, but the training window starts at the first
    # label of a prediction made after the detection, in the labels' own clock.
    assert request.window_start == LABEL_TIME + timedelta(minutes=60)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    detected_span, retrain_span = spans["drift.detected"], spans["drift.retrain"]
    assert retrain_span.parent is not None
    assert retrain_span.parent.span_id == detected_span.context.span_id
    assert publisher.traces == [detected_span.context.trace_id] * 2  # one trace, drift → run
    assert await store.armed("m") is None
    assert PolicyState.model_validate(store.policy["retrain"]).last_trigger == T0

    await processor.handle_batch(labels_for(range(16, 40), offset=26))
    await processor.flush()
    assert len(publisher.events) == 2  # fired once


async def test_the_maximum_wait_fires_without_enough_labels_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [T0]
    store = FakeStore()
    processor, publisher, _ = processor_for(
        spec(**ARMING), store, retrain_min_labels=1000, retrain_max_wait_s=600, clock=lambda: now[0]
    )
    await detect(processor)
    await processor.handle_batch(labels_for(range(20, 23)))
    await processor.flush()
    now[0] = T0 + timedelta(seconds=599)
    await processor.retraining.advance_armed()  # the periodic check, no records
    assert len(publisher.events) == 1
    now[0] = T0 + timedelta(seconds=600)
    await processor.retraining.advance_armed()
    request = publisher.events[-1]
    assert type(request).__name__ == "TrainingRequested"
    # Only labels of the detection window itself (no lookback set): all history.
    assert request.window_start is None
    assert "fired at the maximum wait" in caplog.text
    assert "3 of 1000 labels" in caplog.text
    assert PolicyState.model_validate(store.policy["retrain"]).last_trigger == now[0]


async def test_an_armed_trigger_survives_a_restart() -> None:
    store = FakeStore()
    first, first_publisher, _ = processor_for(spec(**ARMING), store, retrain_min_labels=5)
    await detect(first)
    await first.handle_batch(labels_for(range(0, 3)))
    await first.flush()
    # A new process on the same Redis: no detection of its own, the evidence goes on.
    second, second_publisher, pending = processor_for(spec(**ARMING), store, retrain_min_labels=5)
    for i in range(3, 10):
        pending.keep("m", 1, [(f"tx-{i}", 0.6, (T0 + timedelta(seconds=i)).timestamp())])
    await second.handle_batch(labels_for(range(3, 5), offset=3))
    await second.flush()
    assert [type(e).__name__ for e in first_publisher.events] == ["DriftDetected"]
    (request,) = second_publisher.events
    assert request.cause_event_id == first_publisher.events[0].event_id


async def test_two_replicas_fire_the_armed_retraining_once() -> None:
    store = FakeStore()
    a, a_publisher, a_pending = processor_for(spec(**ARMING), store, retrain_min_labels=6)
    b, b_publisher, b_pending = processor_for(spec(**ARMING), store, retrain_min_labels=6)
    await detect(a)
    b_pending.entries.update(a_pending.entries)  # the pending predictions are shared in Redis
    await a.handle_batch(labels_for(range(0, 5)))
    await b.handle_batch(labels_for(range(5, 10), partition=1))
    await a.flush()
    await b.flush()
    await a.handle_batch(labels_for(range(10, 20), offset=5))
    await b.handle_batch(labels_for(range(20, 30), partition=1, offset=5))
    await a.flush()
    await b.flush()
    requests = [
        e
        for e in a_publisher.events + b_publisher.events
        if type(e).__name__ == "TrainingRequested"
    ]
    assert len(requests) == 1
    assert requests[0] in b_publisher.events  # b's labels completed the evidence


async def test_a_replica_that_took_the_firing_and_died_is_replaced_after_its_lease() -> None:
    now = [T0]
    store = FakeStore()
    a, _, _ = processor_for(spec(**ARMING), store, retrain_min_labels=1, clock=lambda: now[0])
    await detect(a)
    # A decides to fire, then dies before publishing: the lease holds others off meanwhile.
    taken = await store.advance(
        "m",
        joined=[((T0 + timedelta(minutes=1)).timestamp(), LABEL_TIME)],  # after the window
        clock=lambda: T0,
        lease_s=60,
        retrain=a.retraining.retrain,
    )
    assert taken is not None
    assert taken[1] is not None
    b, b_publisher, _ = processor_for(
        spec(**ARMING), store, retrain_min_labels=1, clock=lambda: now[0]
    )
    now[0] = T0 + timedelta(seconds=30)
    await b.retraining.advance_armed()
    assert b_publisher.events == []
    now[0] = T0 + timedelta(seconds=61)
    await b.retraining.advance_armed()
    (request,) = b_publisher.events  # the decision taken by A, published by B
    assert request.window_start == LABEL_TIME
    assert PolicyState.model_validate(store.policy["retrain"]).last_trigger == T0
    await b.retraining.advance_armed()
    assert len(b_publisher.events) == 1


async def test_without_performance_drift_the_request_goes_with_the_alarm() -> None:
    store = FakeStore()
    processor, publisher, _ = processor_for(
        spec(**ARMING, performance_drift=False), store, retrain_min_labels=5
    )
    await detect(processor)
    assert [type(e).__name__ for e in publisher.events] == ["DriftDetected", "TrainingRequested"]
    assert store.armed_triggers == {}


def test_an_armed_trigger_round_trips() -> None:
    armed = ArmedTrigger(
        detection_id="d",
        model="m",
        version=1,
        since=T0,
        window_end=T0 + timedelta(minutes=1),
        armed_at=T0,
        deadline=T0 + timedelta(hours=1),
        min_labels=10,
        traceparent=[("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")],
        labels=3,
        first_label_time=LABEL_TIME,
        decision=FireDecision(allowed=True, reason="allowed", by_deadline=False),
        firing_until=T0,
    )
    assert ArmedTrigger.from_json(armed.to_json()) == armed


async def test_a_prediction_counts_at_the_moment_it_was_scored_not_when_it_was_logged() -> None:
    """A replay scores days-old events in minutes: their hour of the day, which a seasonal
    reference keys on (ADR 0022), is the scored moment (`features_at`)."""
    project = spec()
    processor, _, _ = processor_for(project, FakeStore())
    scored = T0 - timedelta(days=3, hours=5)
    replayed = [
        replace(
            r, payload=r.payload.model_copy(update={"features_at": scored + timedelta(seconds=i)})
        )
        for i, r in enumerate(predictions(10))
    ]
    await processor.handle_batch(replayed)
    (monitor,) = processor.partitions[("mlbus.prediction.logged.v1", 0)].monitors.values()
    status = monitor.status()
    assert status.window_start == scored
    assert status.window_end == scored + timedelta(seconds=9)


async def test_the_catalog_monitors_by_the_profile_s_clock_and_says_when_the_spec_differs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ADR 0032: a profile's phases mean what they meant when it was built."""
    import onnx
    from onnx import helper

    from mlbus.drift._versions import RegistryReader, VersionCatalog
    from mlbus.registry_types import ModelVersionInfo

    rng = np.random.default_rng(2)
    seconds = T0.timestamp() - 3 * 86_400 + np.sort(rng.uniform(0, 3 * 86_400, 500))
    profiles = {
        zone: ReferenceProfile.from_samples(
            {"v.amount": rng.normal(100, 10, 500)}, times=seconds, timezone=zone
        )
        for zone in ("UTC", "Europe/Berlin")
    }
    artifact = helper.make_model(helper.make_graph([], "empty", [], [])).SerializeToString()
    onnx.load_model_from_string(artifact)  # a valid (empty) model: no metadata

    async def get_version(model: str, version: int) -> ModelVersionInfo:
        zone = "UTC" if version == 1 else "Europe/Berlin"
        return ModelVersionInfo.model_construct(reference_profile=profiles[zone])

    async def download(model: str, version: int) -> bytes:
        return artifact

    catalog = VersionCatalog(RegistryReader(get_version, download), spec(timezone="Europe/Berlin"))
    with caplog.at_level("WARNING", logger="mlbus.drift"):
        utc = await catalog.get("m", 1)
        berlin = await catalog.get("m", 2)
    assert utc is not None
    assert berlin is not None
    assert (utc.profile.timezone, berlin.profile.timezone) == ("UTC", "Europe/Berlin")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    expected = (
        "m v1's profile keys its phases by UTC hours, the spec says drift.timezone "
        "Europe/Berlin: monitoring by the profile's until a retrained version replaces it"
    )
    assert warnings == [expected]
