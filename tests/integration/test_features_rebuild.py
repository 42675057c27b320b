"""Redis loss (ADR 0012): the feature service finds its state gone from Redis — at
start, at its next batch, or at its next look at the marker when no event comes —
and rebuilds it from the validated topic's earliest offset, equal to what it was;
`mlbus features rebuild` asks for the same replay and shows it. On the real broker
and a Redis of its own (flushed here; never the machine's shared Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from mlbus.bus import topic_retention_ms
from mlbus.cli import _features
from mlbus.config import KafkaSettings
from mlbus.example import fraud_spec_path
from mlbus.features import FeatureService
from mlbus.featurestore import OnlineStore
from mlbus.runtime import EmbeddedRedis
from mlbus.runtime._embedded import free_port
from mlbus.spec import ProjectSpec

from .test_features import VIEW, Harness, Reference, spec, validated_events

pytestmark = pytest.mark.integration
__all__ = ["spec"]  # the module fixture, shared with test_features

Snapshot = dict[bytes, Any]
"""Key → its hash (an online hash) or its bytes (a window state)."""


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis only this test uses, so flushing it harms nobody."""
    redis = EmbeddedRedis(tmp_path / "redis-logs", port=free_port())
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture
def harness(
    kafka: KafkaSettings, own_redis: EmbeddedRedis, tmp_path: Path, spec: ProjectSpec
) -> Harness:
    # The topic is left to the service to create, with the retention it computes.
    return Harness(kafka, own_redis.url, tmp_path, spec)


async def snapshot(harness: Harness) -> Snapshot:
    """Every online hash and window state of the view, byte for byte."""
    out: Snapshot = {}
    async with harness.store() as store:
        client = store.client
        async for key in client.scan_iter(match=f"{harness.prefix}:fv:*"):
            out[key] = await client.hgetall(key)  # type: ignore[misc]  # redis-py's stubs
        async for key in client.scan_iter(match=f"{harness.prefix}:fs:*"):
            out[key] = await client.get(key)
    return out


async def flush_redis(harness: Harness) -> None:
    async with harness.store() as store:
        await store.client.flushall()  # the test's own Redis (own_redis)


def rebuilt(service: FeatureService) -> bool:
    return service.consumer is not None


async def test_a_restart_on_an_emptied_redis_rebuilds_the_state_equal_to_before(
    harness: Harness, spec: ProjectSpec
) -> None:
    await harness.run_until(rebuilt)  # the service creates the topic, with its retention
    # the validated topic reaches back far enough: the longest TTL + window + a day
    retention = await topic_retention_ms(harness.kafka, harness.topic)
    assert retention == spec.replay_horizon_s() * 1000
    assert retention >= (7 + 7 + 1) * 86_400_000  # fraud: ttl 7d, count_7d

    events = validated_events(spec, 300, seed=23)
    await harness.publish(events)
    first = await harness.run_until(
        lambda s: s.consumer is not None and s.consumer.stats.processed >= len(events)
    )
    assert first.rebuilt_records == 0  # a new group on an empty store: nothing to rebuild
    before = await snapshot(harness)
    entities = {e.entity_id for e in events}
    assert len([k for k in before if b":fv:" in k]) == len(entities)

    await flush_redis(harness)  # Redis restarted empty: the group's offsets stay
    assert await snapshot(harness) == {}
    second = await harness.run_until(rebuilt)

    assert second.rebuilt_records == len(events)
    assert await snapshot(harness) == before  # values, windows, __n, event ids: all equal
    expected = Reference(spec, events)
    at_ms = expected.latest_ms + 1
    async with harness.store() as store:
        online = await store.get_many(VIEW, 1, sorted(entities), at_ms=at_ms)
    for row in online:
        assert row.values["count_24h"] == expected.at(row.entity_id, at_ms)["count_24h"]


async def test_a_redis_emptied_while_running_is_noticed_and_rebuilt(
    harness: Harness, spec: ProjectSpec
) -> None:
    events = validated_events(spec, 400, seed=29)
    first, second = events[:250], events[250:]
    await harness.publish(first)
    sent_second = False
    all_counted = False

    async def empty_redis_then_publish(service: FeatureService) -> None:
        nonlocal sent_second, all_counted
        assert service.consumer is not None
        if not sent_second and service.consumer.stats.processed >= len(first):
            sent_second = True
            await flush_redis(harness)
            await harness.publish(second)
        elif sent_second and service.state_losses > 0:
            async with harness.store() as store:
                all_counted = await counted(store) == len(events)

    service = await harness.run_until(
        lambda _: all_counted, while_running=empty_redis_then_publish, timeout_s=60
    )
    assert service.state_losses == 1
    assert service.rebuilt_records >= len(first)  # replayed from the earliest offset

    # Whatever the rebuild and the resumed consumer each took, every event counts once.
    expected = Reference(spec, events)
    at_ms = expected.latest_ms + 1
    names = spec.features[VIEW].feature_names()
    async with harness.store() as store:
        online = await store.get_many(VIEW, 1, sorted(expected.states), at_ms=at_ms)
    assert len(online) == len(expected.states)
    for row in online:
        values = expected.at(row.entity_id, at_ms)
        for name in names:
            assert row.values[name] == pytest.approx(values[name]), name
        assert row.counted == expected.states[row.entity_id].counted


async def counted(store: OnlineStore) -> int:
    """The events the online hashes say were counted, over every entity."""
    total = 0
    async for key in store.client.scan_iter(match=f"{store.keys.prefix}:fv:*"):
        total += int(await store.client.hget(key, "__n") or 0)  # type: ignore[misc]
    return total


async def run_service(
    harness: Harness, until: Callable[[FeatureService], Awaitable[bool]], timeout_s: float = 45
) -> FeatureService:
    """The service, checking its state marker every 0.2 s, until `until` says so."""
    service = FeatureService(
        harness.settings(state_check_s=0.2), harness.spec, topics=(harness.topic,)
    )
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(timeout_s):
            while service.consumer is None or not await until(service):
                assert not task.done() or task.result() is None
                await asyncio.sleep(0.1)
    finally:
        service.stop()
        await task
    return service


async def test_a_redis_emptied_while_no_event_comes_is_rebuilt_all_the_same(
    harness: Harness, spec: ProjectSpec
) -> None:
    events = validated_events(spec, 200, seed=31)
    await harness.publish(events)
    before: Snapshot = {}

    async def filled_emptied_and_rebuilt(service: FeatureService) -> bool:
        assert service.consumer is not None
        if not before:
            if service.consumer.stats.processed < len(events) or service.processor.queued:  # type: ignore[union-attr]
                return False
            before.update(await snapshot(harness))
            await flush_redis(harness)  # and no event follows to find it out
            return False
        return service.state_losses == 1 and await snapshot(harness) == before

    service = await run_service(harness, filled_emptied_and_rebuilt)
    assert service.rebuilt_records == len(events)


def test_rebuild_command_replays_into_the_running_service_and_shows_it(
    harness: Harness, spec: ProjectSpec
) -> None:
    events = validated_events(spec, 200, seed=37)
    answers: list[Result] = []

    async def scenario() -> FeatureService:
        await harness.publish(events)
        before: Snapshot = {}

        async def asked_and_rebuilt(service: FeatureService) -> bool:
            assert service.consumer is not None
            if not before:
                if service.consumer.stats.processed < len(events) or service.processor.queued:  # type: ignore[union-attr]
                    return False
                before.update(await snapshot(harness))
                answers.append(await asyncio.to_thread(invoke_rebuild, harness))
            return await snapshot(harness) == before  # replayed onto itself: unchanged

        return await run_service(harness, asked_and_rebuilt)

    service = asyncio.run(scenario())
    (result,) = answers
    assert result.exit_code == 0, result.output
    assert f"feature state rebuilt: {len(events)} records replayed" in result.output
    assert service.state_losses == 1
    assert service.rebuilt_records == len(events)


def invoke_rebuild(harness: Harness) -> Result:
    app = typer.Typer()
    _features.register(app)

    @app.callback()
    def root() -> None: ...

    return CliRunner().invoke(
        app,
        ["features", "rebuild", "--timeout-s", "40"],
        env={
            "MLBUS_REDIS_URL": harness.redis_url,
            "MLBUS_REDIS_KEY_PREFIX": harness.prefix,
            "MLBUS_SPEC": str(fraud_spec_path()),
        },
    )
