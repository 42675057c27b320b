"""The ingestion service waits out a Redis outage in place, against a real Redis it stops.

While the de-duplication store is down the service neither exits nor publishes
unchecked events: it retries with backoff, holds the batch uncommitted, and
catches up when Redis is back. Every event ends up published exactly once and
every producer retry is still recognised (this Redis keeps an append-only file,
so the horizon survives its restart as it would in production).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from mlbus.bus import RetryPolicy
from mlbus.config import KafkaSettings
from mlbus.events import INGEST_VALIDATED
from mlbus.ingestion import IngestionService
from mlbus.runtime import EmbeddedRedis, free_port
from mlbus.spec import load_spec

from .test_ingestion import (
    TopicReader,
    encode,
    produce,
    recent_events,
    service_settings,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.integration


@dataclass
class PersistentRedis(EmbeddedRedis):
    """The embedded Redis, writing an append-only file so its keys survive a restart."""

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("--appendonly") + 1] = "yes"
        return [*argv, "--appendfsync", "always"]


@pytest.fixture
async def producer(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=1)
    await client.start()
    yield client
    await client.stop()


async def test_a_redis_outage_is_retried_in_place_and_nothing_is_lost_or_doubled(
    kafka: KafkaSettings, unique: str, tmp_path: Path, producer: AIOKafkaProducer
) -> None:
    spec_path, tx, _ = write_spec(tmp_path, unique)
    transactions = recent_events(load_spec(spec_path), 400, seed=7)["transactions"][:300]
    before, during = transactions[:100], transactions[100:]
    retried = before[:30]  # producer retries of events accepted before the outage
    keys = lambda events: [str(e["card_id"]).encode() for e in events]  # noqa: E731

    port = free_port()
    redis = PersistentRedis(tmp_path / "redis-logs", port=port).start()
    settings = service_settings(spec_path, kafka, redis.url, unique, tmp_path, max_batch=50)
    service = IngestionService(
        settings, retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.4)
    )
    task = asyncio.create_task(service.run())
    try:
        async with TopicReader(kafka, INGEST_VALIDATED, {tx}) as validated:
            await service.wait_started()
            await produce(producer, tx, [encode(e) for e in before], keys(before))
            await wait_for(lambda: len(validated.records) >= len(before), [validated], task=task)

            redis.stop()
            await produce(producer, tx, [encode(e) for e in during], keys(during))
            await produce(producer, tx, [encode(e) for e in retried], keys(retried))
            # Retrying, not exiting, and publishing nothing it could not check: after three
            # retries the batch it holds has waited on Redis all along; whatever the topic
            # holds now is all the service published.
            await wait_for(
                lambda: service.stats.retries.get("redis", 0) >= 3, [validated], task=task
            )
            await validated.read_to_end()
            assert not task.done()
            assert len(validated.records) == len(before)

            redis = PersistentRedis(tmp_path / "redis-logs", port=port).start()
            ids = {e["transaction_id"] for e in transactions}
            await wait_for(
                lambda: (
                    {b["event_id"] for _, b in validated.records} >= ids
                    and service.stats.duplicates >= len(retried)
                ),
                [validated],
                task=task,
            )
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)
        redis.stop()
    async with TopicReader(kafka, INGEST_VALIDATED, {tx}) as validated:
        await validated.read_to_end()  # stopped: anything published twice shows up now

    published = [b["event_id"] for _, b in validated.records]
    assert sorted(published) == sorted(ids)  # each exactly once
    assert service.stats.duplicates == len(retried)
    assert service.stats.accepted == len(transactions)
    assert service.consumer_restarts == 0  # waited in place: same consumer, same place
