"""The feature service's batched Redis write against one-by-one processing, on a real Redis:
the same states, online hashes and offline spool rows, whatever the batch holds
(several events per entity, duplicates, out-of-order and too-late events), and
a Redis outage during the batch write loses and double counts nothing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlbus.bus import DeadLetter, Received
from mlbus.errors import RetryableError
from mlbus.events import Event, IngestValidated
from mlbus.example import fraud_spec_path
from mlbus.features._processor import FeatureProcessor, bind_views
from mlbus.featurestore import OfflineRow, OnlineStore
from mlbus.runtime import EmbeddedRedis
from mlbus.runtime._embedded import free_port
from mlbus.spec import ProjectSpec, load_spec

pytestmark = pytest.mark.integration

VIEW = "card_activity"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LATENESS_S = 3600


@pytest.fixture(scope="module")
def spec() -> ProjectSpec:
    return load_spec(fraud_spec_path())


def event(entity: str, minutes: float, amount: float, country: str = "US") -> IngestValidated:
    return IngestValidated(
        event_id=str(uuid.uuid4()),
        source="transactions",
        contract_version=1,
        entity_id=entity,
        event_time=T0 + timedelta(minutes=minutes),
        payload={
            "card_id": entity,
            "amount": amount,
            "merchant_id": f"m_{int(amount) % 7:05d}",
            "merchant_category": "retail",
            "country": country,
            "channel": "pos",
        },
        source_topic="payments.transactions.v1",
        source_partition=0,
        source_offset=0,
    )


def received(events: Sequence[IngestValidated]) -> list[Received[Event]]:
    return [Received(e, "t", 0, i, e.entity_id.encode(), (), 0) for i, e in enumerate(events)]


def mixed_batch() -> tuple[list[IngestValidated], list[IngestValidated]]:
    """(a first batch, a second batch) with several events per entity, replays,
    out-of-order events within the lateness and one too late."""
    a1, a2, a3 = (
        event("card_000001", 0, 10),
        event("card_000001", 5, 20),
        event("card_000001", 3, 5),
    )
    b1, b2 = event("card_000002", 1, 7, "FR"), event("card_000002", 2, 9, "DE")
    first = [a1, b1, a2]
    late_ok = event("card_000001", -30, 3, "GB")  # 35 min behind: within the lateness
    too_late = event("card_000002", -120, 50)  # 2 h behind card_000002's latest event
    c1, c2 = event("card_000003", 10, 1), event("card_000003", 9, 2)
    second = [
        a3,  # out of order (between a1 and a2)
        b2,
        a2,  # a replay of an event written in the first batch
        c1,
        late_ok,
        c2,  # out of order for a new entity
        b2,  # a replay within this batch
        too_late,
        event("card_000001", 70, 4),  # moves the watermark: old buckets roll out
        a3,  # a replay after the watermark moved past its lateness: still a known replay
    ]
    return first, second


class Side:
    """A processor on its own key prefix, with a fixed clock so rows compare exactly."""

    def __init__(self, redis_url: str, spec: ProjectSpec, **options: object) -> None:
        self.prefix = f"test-batch-{uuid.uuid4().hex[:10]}"
        self.store = OnlineStore.from_url(redis_url, key_prefix=self.prefix, timeout_s=1.0)
        self.views = bind_views(spec, LATENESS_S)
        self.processor = FeatureProcessor(
            self.views,
            self.store,
            clock=lambda: 1_700_000_000.0,
            **options,  # type: ignore[arg-type]
        )
        self.dead: list[DeadLetter[Event]] = []
        """What the flushes gave back for the bus to dead-letter."""

    async def one_by_one(self, events: Sequence[IngestValidated]) -> None:
        for record in received(events):
            await self.processor.handle(record)
            self.dead += await self.processor.flush()

    async def batch(self, events: Sequence[IngestValidated]) -> None:
        for record in received(events):
            await self.processor.handle(record)
        self.dead += await self.processor.flush()

    async def snapshot(self) -> dict[str, object]:
        """Every key this side wrote, by its name without the prefix."""
        client = self.store.client
        out: dict[str, object] = {}
        async for key in client.scan_iter(match=f"{self.prefix}:*", count=10_000):
            name = key.decode().removeprefix(self.prefix)
            kind = (await client.type(key)).decode()
            if kind == "hash":
                out[name] = await client.hgetall(key)
            elif kind == "list":
                out[name] = await client.lrange(key, 0, -1)
            else:
                out[name] = await client.get(key)
        return out

    async def spool(self) -> list[OfflineRow]:
        raw = await self.store.client.lrange(self.store.keys.spool(VIEW, 1), 0, -1)
        return [OfflineRow.from_json(r) for r in raw]

    async def close(self) -> None:
        keys = [
            k async for k in self.store.client.scan_iter(match=f"{self.prefix}:*", count=10_000)
        ]
        if keys:
            await self.store.client.delete(*keys)
        await self.store.aclose()


async def test_a_batch_writes_exactly_what_one_by_one_writes(
    redis_url: str, spec: ProjectSpec
) -> None:
    first, second = mixed_batch()
    single, batched = Side(redis_url, spec), Side(redis_url, spec)
    try:
        await single.one_by_one(first)
        await single.one_by_one(second)
        await batched.batch(first)
        await batched.batch(second)
        one, many = await single.snapshot(), await batched.snapshot()
        assert one.keys() == many.keys()
        assert len(one) == 7  # 3 states, 3 online hashes, 1 spool
        for name in one:
            assert many[name] == one[name], name
        rows = await batched.spool()
        # every distinct event counted once except the one too late; replays are not rows
        # (the last replay is older than the lateness horizon by then, but recent events
        # are kept a bucket longer to evaluate late ones exactly: known as a duplicate)
        distinct = {e.event_id for e in first + second}
        assert len(rows) == len(distinct) - 1
        assert len({r.event_id for r in rows}) == len(rows)
        assert batched.processor.stats.skipped_by_reason == {"duplicate": 3, "too_late": 1}
        assert batched.processor.stats.flushes == 2
        assert single.processor.stats.flushes == len(first) + len(second)
        # entity 1 saw its own earlier updates of the batch: all 5 of its events count
        latest_ms = int((T0 + timedelta(minutes=70)).timestamp() * 1000)
        async with OnlineStore.from_url(redis_url, key_prefix=batched.prefix) as store:
            card1 = await store.get(VIEW, 1, "card_000001", at_ms=latest_ms + 1)
        assert card1.values["count_24h"] == 5
        assert card1.values["amount_sum_24h"] == pytest.approx(10 + 20 + 5 + 3 + 4)
        assert card1.values["country_distinct_count_24h"] == 2
        assert card1.event_time_ms == latest_ms
    finally:
        await single.close()
        await batched.close()


async def test_replaying_a_written_batch_changes_nothing(redis_url: str, spec: ProjectSpec) -> None:
    first, second = mixed_batch()
    side = Side(redis_url, spec)
    try:
        await side.batch(first + second)
        before = await side.snapshot()
        await side.batch(first + second)  # a crash after the write, before the commit
        assert await side.snapshot() == before
        assert side.processor.queued == 0
    finally:
        await side.close()


async def test_redis_down_during_the_batch_write_is_retried_and_nothing_is_lost(
    redis_url: str, spec: ProjectSpec, tmp_path: Path
) -> None:
    """Redis down at the commit: `flush` raises and keeps the whole queue (the consumer
    retries it with its backoff, tests/integration/test_bus_batch.py); every failed try
    changes nothing, and the try after Redis is back writes the batch once."""
    first, second = mixed_batch()
    reference = Side(redis_url, spec)
    redis = EmbeddedRedis(tmp_path / "redis-logs", port=free_port()).start()
    side = Side(redis.url, spec)
    try:
        await reference.batch(first + second)
        for record in received(first + second):
            await side.processor.handle(record)  # Redis answered the first ping
        redis.stop()
        for attempt in (1, 2):
            with pytest.raises(RetryableError):
                await side.processor.flush()
            assert side.processor.queued == len(first + second)
            assert side.processor.stats.retries == attempt
        redis.start()
        await side.processor.flush()
        assert side.processor.queued == 0
        got = await side.snapshot()
        want = await reference.snapshot()
        assert {k: got[k] for k in sorted(got)} == {k: want[k] for k in sorted(want)}
    finally:
        await side.close()
        await reference.close()
        redis.stop()


async def test_an_event_a_view_cannot_apply_is_dead_lettered_and_the_others_are_written(
    redis_url: str, spec: ProjectSpec
) -> None:
    good_before, good_after = event("card_000009", 0, 10), event("card_000009", 2, 30)
    broken = event("card_000009", 1, 20)
    # Past the contract by construction (ingestion would reject it): a text amount.
    broken = broken.model_copy(update={"payload": {**broken.payload, "amount": "twenty"}})
    reference, side = Side(redis_url, spec), Side(redis_url, spec)
    try:
        await reference.batch([good_before, good_after])
        await side.batch([good_before, broken, good_after])
        assert await side.snapshot() == await reference.snapshot()  # the others as if alone
        # Handed back to the bus, which dead-letters them (tests/integration/test_bus_batch.py).
        dead = [(d.received.payload.event_id, str(d.error).split(":")[0]) for d in side.dead]
        assert dead == [(broken.event_id, f"view {VIEW}")]
        assert side.dead[0].received.offset == 1  # its own offset, for the dead-letter record
        assert side.processor.stats.skipped_by_reason.get("error") == 1
    finally:
        await reference.close()
        await side.close()
