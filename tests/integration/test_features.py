"""The feature service against the real broker and a real Redis: online/offline
agreement, gRPC reads, restart and replay without double counting, Redis outages,
TTL expiry, and training sets built from what the service wrote."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc.aio
import pyarrow as pa
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpc_health.v1.health_pb2_grpc import HealthStub

from mlbus.api.features.v1 import features_pb2 as pb
from mlbus.api.features.v1 import features_pb2_grpc as pb_grpc
from mlbus.bus import Publisher, ensure_topics
from mlbus.config import KafkaSettings, RedisSettings
from mlbus.events import IngestValidated, Scalar
from mlbus.example import fraud_spec_path, generate
from mlbus.features import FeatureService, FeaturesSettings
from mlbus.featurestore import (
    Applied,
    EntityState,
    OfflineRow,
    OfflineStore,
    OnlineStore,
    ViewAggregator,
    build_training_set,
)
from mlbus.runtime import EmbeddedRedis
from mlbus.runtime._embedded import free_port
from mlbus.spec import ProjectSpec, load_spec, parse_timestamp

pytestmark = pytest.mark.integration

VIEW = "card_activity"


@pytest.fixture(scope="module")
def spec() -> ProjectSpec:
    return load_spec(fraud_spec_path())


def validated_events(spec: ProjectSpec, n: int, seed: int) -> list[IngestValidated]:
    data = generate(spec, n, seed=seed, days=1)
    out = []
    for i, raw in enumerate(data.sources["transactions"].events()):
        payload: dict[str, Scalar] = dict(raw)
        out.append(
            IngestValidated(
                event_id=str(payload["transaction_id"]),
                source="transactions",
                contract_version=1,
                entity_id=str(payload["card_id"]),
                event_time=parse_timestamp(payload["ts"]),
                payload=payload,
                source_topic="payments.transactions.v1",
                source_partition=0,
                source_offset=i,
            )
        )
    return out


class Reference:
    """What the view should hold: the aggregator fed once, in order, in memory — each
    event's own values (its offline row) and each entity's state after all of them."""

    def __init__(self, spec: ProjectSpec, events: Sequence[IngestValidated]) -> None:
        view = spec.features[VIEW]
        self.aggregator = ViewAggregator(view, spec.view_features(VIEW), allowed_lateness_s=3600)
        self.states: dict[str, EntityState] = {}
        self.rows: dict[str, dict[str, Scalar]] = {}
        for event in events:
            state = self.states.setdefault(event.entity_id, EntityState())
            ms = int(event.event_time.timestamp() * 1000)
            if self.aggregator.admit(state, event.event_id, ms) is Applied.APPLIED:
                self.rows[event.event_id] = self.aggregator.event_values(state, ms, event.payload)
            self.aggregator.apply(state, event.event_id, ms, event.payload)

    @property
    def latest_ms(self) -> int:
        return max(s.watermark_ms or 0 for s in self.states.values())

    def at(self, entity: str, at_ms: int) -> dict[str, Scalar]:
        """An entity's online values read at `at_ms` (after its latest event)."""
        state = self.states[entity]
        return {**self.aggregator.last_values(state), **self.aggregator.aggregates_at(state, at_ms)}


class Harness:
    """One feature service in this process, on its own topic, group, key prefix and folder."""

    def __init__(self, kafka: KafkaSettings, redis_url: str, tmp_path: Path, spec: ProjectSpec):
        tag = uuid.uuid4().hex[:10]
        self.topic = f"t.features.{tag}"
        self.prefix = f"test-{tag}"
        self.kafka, self.redis_url, self.spec = kafka, redis_url, spec
        self.offline_dir = tmp_path / "offline"
        self.group = f"features-{tag}"

    def settings(self, **overrides: object) -> FeaturesSettings:
        return FeaturesSettings(
            kafka=self.kafka,
            redis=RedisSettings(url=self.redis_url, key_prefix=self.prefix, socket_timeout_s=1.0),
            data_dir=self.offline_dir.parent,
            offline_url=str(self.offline_dir),
            group_id=self.group,
            grpc_port=0,
            grpc_host="127.0.0.1",
            **overrides,  # type: ignore[arg-type]
        )

    async def publish(self, events: Sequence[IngestValidated]) -> None:
        async with Publisher(self.kafka, source="tests") as publisher:
            for event in events:
                await publisher.send(event, key=event.entity_id, topic=self.topic)
            await publisher.flush()

    async def run_until(
        self,
        done: Callable[[FeatureService], bool],
        *,
        redis_url: str | None = None,
        timeout_s: float = 45,
        while_running: Callable[[FeatureService], object] | None = None,
    ) -> FeatureService:
        settings = self.settings()
        if redis_url is not None:
            settings.redis.url = redis_url
        service = FeatureService(settings, self.spec, topics=(self.topic,))
        task = asyncio.create_task(service.run())
        try:
            async with asyncio.timeout(timeout_s):
                while service.consumer is None or not done(service):
                    if task.done():
                        task.result()
                    if while_running is not None and service.consumer is not None:
                        result = while_running(service)
                        if asyncio.iscoroutine(result):
                            await result
                    await asyncio.sleep(0.05)
        finally:
            service.stop()
            await task
        return service

    def store(self) -> OnlineStore:
        return OnlineStore.from_url(self.redis_url, key_prefix=self.prefix)

    async def cleanup(self) -> None:
        async with self.store() as store:
            keys = [key async for key in store.client.scan_iter(match=f"{self.prefix}:*")]
            if keys:
                await store.client.delete(*keys)


@pytest.fixture
async def harness(
    kafka: KafkaSettings, redis_url: str, tmp_path: Path, spec: ProjectSpec
) -> AsyncIterator[Harness]:
    h = Harness(kafka, redis_url, tmp_path, spec)
    await ensure_topics(kafka, [h.topic])
    yield h
    await h.cleanup()


def processed(n: int) -> Callable[[FeatureService], bool]:
    return lambda service: service.consumer is not None and service.consumer.stats.processed >= n


async def test_offline_rows_hold_each_events_values_and_online_reads_re_age_them(
    harness: Harness, spec: ProjectSpec
) -> None:
    events = validated_events(spec, 400, seed=3)
    replays = events[50:80]  # delivered twice: must not count twice
    await harness.publish(events + replays)
    service = await harness.run_until(processed(len(events) + len(replays)))
    assert service.consumer is not None
    assert service.consumer.stats.dead_lettered == 0

    offline = OfflineStore(harness.offline_dir)
    table = offline.read(offline.files(VIEW, 1))
    assert table.num_rows == len(events)  # one row per distinct event, replays skipped
    expected = Reference(spec, events)
    names = spec.features[VIEW].feature_names()
    for row in table.to_pylist():  # each row: the event's fields, windows before it
        for name in names:
            assert row[name] == pytest.approx(expected.rows[row["event_id"]][name]), name
    watermarks = {}
    for row in table.to_pylist():
        ms = int(row["feature_time"].timestamp() * 1000)
        watermarks[row["entity_id"]] = max(ms, watermarks.get(row["entity_id"], 0))
    async with harness.store() as store:
        # online reads evaluate the windows at the read's time: a day later they fell
        for at_ms in (expected.latest_ms + 1, expected.latest_ms + 86_400_000):
            online = await store.get_many(VIEW, 1, sorted(expected.states), at_ms=at_ms)
            assert len(online) == len(expected.states)
            for row in online:
                assert row.found
                values = expected.at(row.entity_id, at_ms)
                for name in names:
                    assert row.values[name] == pytest.approx(values[name]), name
                assert row.event_time_ms == watermarks[row.entity_id]
        fallen = await store.get_many(VIEW, 1, sorted(expected.states), at_ms=at_ms)
    assert {row.values["count_24h"] for row in fallen} == {0}


async def test_grpc_returns_values_and_ages_for_many_entities(
    harness: Harness, spec: ProjectSpec
) -> None:
    events = validated_events(spec, 60, seed=5)
    await harness.publish(events)
    entities = [*sorted({e.entity_id for e in events})[:5], "card_999999"]
    expected = Reference(spec, events)
    at_ms = expected.latest_ms + 1
    answers: list[pb.GetOnlineFeaturesResponse] = []

    async def ask(service: FeatureService) -> None:
        consumer, processor = service.consumer, service.processor
        assert consumer is not None
        assert processor is not None
        # Handled is not written: the batch reaches Redis at the commit (queued back to 0).
        if answers or service.grpc_port is None or consumer.stats.processed < len(events):
            return
        if processor.queued:
            return
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            stub = pb_grpc.FeatureServiceStub(channel)
            answers.append(
                await stub.GetOnlineFeatures(
                    pb.GetOnlineFeaturesRequest(
                        entities=entities,
                        features=[f"{VIEW}.count_24h", f"{VIEW}.amount"],
                        event_time=Timestamp(seconds=at_ms // 1000, nanos=at_ms % 1000 * 10**6),
                    ),
                    timeout=5,
                )
            )
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.GetOnlineFeatures(
                    pb.GetOnlineFeaturesRequest(entities=["x"], features=["nope.x"]), timeout=5
                )
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            health = await HealthStub(channel).Check(HealthCheckRequest(service=""), timeout=5)
            assert health.status == HealthCheckResponse.SERVING

    await harness.run_until(lambda _: bool(answers), while_running=ask)
    response = answers[0]
    assert list(response.feature_names) == [f"{VIEW}.count_24h", f"{VIEW}.amount"]
    for row in response.entities[:-1]:
        count, amount = row.values
        values = expected.at(row.entity_id, at_ms)
        assert count.status == pb.FeatureValue.PRESENT
        assert count.int_value == values["count_24h"]
        assert amount.double_value == pytest.approx(values["amount"])
        assert count.age_s > 0
    unknown = response.entities[-1]
    assert unknown.entity_id == "card_999999"
    assert all(v.status == pb.FeatureValue.NOT_FOUND for v in unknown.values)


async def test_a_restart_and_a_full_replay_count_nothing_twice(
    harness: Harness, spec: ProjectSpec
) -> None:
    events = validated_events(spec, 300, seed=11)
    first, second = events[:150], events[150:]
    await harness.publish(first)
    await harness.run_until(processed(len(first)))
    # The next instance starts in a new group: it re-reads everything from the start.
    harness.group = f"{harness.group}-again"
    await harness.publish(second)
    await harness.run_until(processed(len(events)))
    expected = Reference(spec, events)
    at_ms = expected.latest_ms + 1
    async with harness.store() as store:
        online = await store.get_many(VIEW, 1, sorted(expected.states), at_ms=at_ms)
    for row in online:
        values = expected.at(row.entity_id, at_ms)
        assert row.values["count_24h"] == values["count_24h"]
        assert row.values["amount_sum_24h"] == pytest.approx(values["amount_sum_24h"])
    offline = OfflineStore(harness.offline_dir)
    raw = offline.read(offline.files(VIEW, 1), dedupe=False)
    assert raw.num_rows == len(events)


async def test_redis_down_at_first_is_retried_and_nothing_is_lost(
    harness: Harness, spec: ProjectSpec, tmp_path: Path
) -> None:
    events = validated_events(spec, 120, seed=17)
    await harness.publish(events)
    redis = EmbeddedRedis(tmp_path / "redis-logs", port=free_port())
    # nothing listens on redis.url until the service has retried: first the check of the
    # state (ADR 0012, Redis loss), before its consumer starts
    settings = harness.settings()
    settings.redis.url = redis.url
    service = FeatureService(settings, spec, topics=(harness.topic,))
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(45):
            while service.state_check_retries == 0:
                assert not task.done()
                await asyncio.sleep(0.05)
            redis.start()
            while service.consumer is None or service.consumer.stats.processed < len(events):
                assert not task.done()
                await asyncio.sleep(0.05)
        service.stop()
        await task
        assert service.consumer is not None
        assert service.consumer.stats.dead_lettered == 0
        expected = Reference(spec, events)
        at_ms = expected.latest_ms + 1
        async with OnlineStore.from_url(redis.url, key_prefix=harness.prefix) as store:
            online = await store.get_many(VIEW, 1, sorted(expected.states), at_ms=at_ms)
        assert [r.values["count_24h"] for r in online] == [
            expected.at(r.entity_id, at_ms)["count_24h"] for r in online
        ]
    finally:
        service.stop()
        await asyncio.gather(task, return_exceptions=True)
        redis.stop()


async def test_online_values_expire_after_the_ttl(redis_url: str, unique: str) -> None:
    async with OnlineStore.from_url(redis_url, key_prefix=f"test-ttl-{unique}") as store:
        pipe = store.client.pipeline(transaction=True)
        store.stage_write(pipe, "v", 1, "e1", {"x": 1}, event_time_ms=1, event_id="a", ttl_s=1)
        await pipe.execute()
        assert (await store.get("v", 1, "e1")).values == {"x": 1}
        for _ in range(100):  # Redis expires within about a second past the TTL
            row = await store.get("v", 1, "e1")
            if not row.found:
                break
            await asyncio.sleep(0.1)
        assert not row.found
        assert row.values == {}
        assert row.age_s is None


async def test_training_set_from_the_service_rows_is_fingerprinted(
    harness: Harness, spec: ProjectSpec
) -> None:
    events = validated_events(spec, 120, seed=23)
    await harness.publish(events)
    await harness.run_until(processed(len(events)))
    offline = OfflineStore(harness.offline_dir)
    labelled = events[10:20]
    labels = pa.table(
        {
            "entity_id": [e.entity_id for e in labelled],
            "event_id": [e.event_id for e in labelled],
            "is_fraud": [i % 2 == 0 for i in range(len(labelled))],
        }
    )
    start = datetime(2024, 12, 31, tzinfo=UTC)
    first = build_training_set(offline, VIEW, 1, labels, start=start)
    again = build_training_set(offline, VIEW, 1, labels, files=first.files)
    assert first.fingerprint == again.fingerprint
    assert first.table.num_rows == len(labelled)
    assert first.labels_without_features == 0
    times = {e.event_id: e.event_time for e in labelled}
    for row in first.table.to_pylist():  # the row of the labelled event itself
        assert row["as_of"] == times[row["event_id"]]
    # one more file: a different dataset, a different fingerprint
    extra_row = offline.read(list(first.files)).slice(0, 1).to_pylist()[0]
    offline.write_rows(
        VIEW,
        1,
        spec.view_features(VIEW),
        [
            OfflineRow(
                extra_row["entity_id"],
                "extra-event",
                int(extra_row["event_time"].timestamp() * 1000),
                int(extra_row["feature_time"].timestamp() * 1000),
                int(extra_row["processed_at"].timestamp() * 1000) + 1,
                {n: extra_row[n] for n in first.feature_columns},
                extra_row["prior_events"],
            )
        ],
    )
    grown = build_training_set(offline, VIEW, 1, labels, start=start)
    assert len(grown.files) == len(first.files) + 1
    assert grown.fingerprint != first.fingerprint
