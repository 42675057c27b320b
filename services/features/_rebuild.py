"""Rebuilding the window state after Redis lost it (ADR 0012, "Redis loss").

The window state, the online hashes and the offline spool live only in Redis;
the consumer group's offsets live in Kafka. When Redis comes back empty (the
embedded one keeps nothing on disk), the offsets still say "done up to here",
and the service would go on counting new events on empty windows.

So the store carries a marker (`FeatureKeys.state_marker`): written once the
state is known complete, never by a batch. Its absence while the group has
committed offsets means the state was lost:

- at start, `ensure_state` checks it before the group consumer runs;
- while running, every batch reads it with the states (`FeatureProcessor`,
  `detect_loss=True`) and raises `FeatureStateLost` instead of writing on an
  empty store, and the service looks at it every `state_check_s` when no batch
  comes; either way it stops its consumer (nothing is committed) and calls
  `ensure_state` again.

The rebuild replays the validated topic from its earliest offset up to the
group's committed offsets, through a `FeatureProcessor` of its own, then
writes the marker. The group's offsets are not touched: the group
consumer resumes where it committed, and the events replayed twice are
skipped as duplicates (the state keeps every id it could still count).
Replicas rebuild under one Redis lock; the one that waited finds the marker
back and rebuilds nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio.lock import Lock

from mlbus.bus import Consumer, Publisher, Received
from mlbus.config import KafkaSettings
from mlbus.errors import RetryableError
from mlbus.events import Event, IngestValidated
from mlbus.featurestore import OnlineStore
from mlbus.redis_failures import REDIS_DOWN
from mlbus.telemetry import meter

from ._processor import BoundView, FeatureProcessor

log = logging.getLogger(__name__)
_rebuilds = meter("mlbus.features").create_counter(
    "mlbus.features.rebuilds", description="window state rebuilt from the validated topic"
)

LOCK_LEASE_S = 60.0
"""How long the rebuild lock outlives a rebuilder that died; renewed after every batch."""


async def committed_offsets(
    kafka: KafkaSettings, group_id: str, topics: Sequence[str]
) -> dict[TopicPartition, int]:
    """The group's committed offsets on `topics` (empty: the group never committed)."""
    # A consumer that never subscribes only fetches offsets; it does not join the group.
    reader = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=group_id, enable_auto_commit=False)
    await reader.start()
    try:
        out = {}
        for tp in await _partitions(reader, topics):
            offset = await reader.committed(tp)
            if offset is not None:
                out[tp] = offset
        return out
    finally:
        await reader.stop()


async def _partitions(reader: AIOKafkaConsumer, topics: Sequence[str]) -> list[TopicPartition]:
    await reader.topics()  # loads the metadata
    return [
        TopicPartition(topic, partition)
        for topic in topics
        for partition in sorted(reader.partitions_for_topic(topic) or ())
    ]


async def ensure_state(
    *,
    kafka: KafkaSettings,
    group_id: str,
    topics: Sequence[str],
    views: Sequence[BoundView],
    online: OnlineStore,
    publisher: Publisher,
) -> int:
    """Make the online store's state complete before the group consumer writes to it.

    Marker present: nothing to do. Missing, and the group has committed offsets: the
    state was lost, so it is rebuilt from the earliest offset. Missing on a group that
    never committed: a new deployment, the marker is written. Returns the records
    replayed. Replaying onto a state that is still there counts nothing twice, so
    `mlbus features rebuild` (which deletes the marker) only fills in what is missing."""
    marker = online.keys.state_marker()
    if await _marker_present(online, marker):
        return 0
    done = await committed_offsets(kafka, group_id, topics)
    if not done:
        await _set_marker(online, marker)
        return 0
    lock = online.client.lock(online.keys.state_rebuild_lock(), timeout=LOCK_LEASE_S)
    await lock.acquire()  # blocks while another replica rebuilds
    try:
        if await _marker_present(online, marker):
            return 0  # rebuilt by the replica that held the lock
        log.warning(
            "feature state missing in Redis while group %s has committed offsets: "
            "rebuilding it from the earliest offset of %s",
            group_id,
            ", ".join(topics),
        )
        started = time.monotonic()
        replayed = await _replay(kafka, topics, done, views, online, publisher, lock)
        await _set_marker(online, marker)
    finally:
        try:
            await lock.release()
        except Exception:  # expired or Redis gone: the lease ends it anyway
            log.warning("rebuild lock not released", exc_info=True)
    _rebuilds.add(1)
    log.warning(
        "feature state rebuilt: %d records replayed in %.1f s",
        replayed,
        time.monotonic() - started,
    )
    return replayed


async def _marker_present(online: OnlineStore, marker: str) -> bool:
    try:
        return bool(await online.client.exists(marker))
    except REDIS_DOWN as exc:
        raise RetryableError(f"Redis unavailable checking the feature state: {exc}") from exc


async def _set_marker(online: OnlineStore, marker: str) -> None:
    await online.client.set(marker, uuid.uuid4().hex)


async def _replay(
    kafka: KafkaSettings,
    topics: Sequence[str],
    done: Mapping[TopicPartition, int],
    views: Sequence[BoundView],
    online: OnlineStore,
    publisher: Publisher,
    lock: Lock,
) -> int:
    """Every record of `topics` from the earliest offset up to the group's committed
    offsets (`done`), applied through a processor of its own (no dead letters: they
    were sent the first time). The group consumer goes on from there."""
    ends = await _ranges(kafka, done)
    total = sum(end - start for start, end in ends.values())
    if total == 0:
        return 0
    processor = FeatureProcessor(views, online)
    shown = online.keys.state_rebuild_progress()  # for `mlbus features rebuild`
    pending = {tp for tp, (start, end) in ends.items() if end > start}
    replayed = 0

    async def handle(received: Received[Event]) -> None:
        nonlocal replayed
        tp = TopicPartition(received.topic, received.partition)
        if tp not in pending:
            return  # past the rebuild's end: the group consumer counts it
        await processor.handle(received)
        replayed += 1
        if received.offset + 1 >= ends[tp][1]:
            pending.discard(tp)
            if not pending:
                consumer.stop()

    async def flush() -> None:
        await processor.flush()  # Redis down: RetryableError, and the bus retries it
        try:
            # Still the rebuilder: renew the lease. Lost (an outage longer than the
            # lease): LockError, and `ensure_state` starts over under the lock.
            await lock.reacquire()
            pipe = online.client.pipeline(transaction=False)
            pipe.hset(shown, mapping={"replayed": replayed, "total": total})
            pipe.expire(shown, int(LOCK_LEASE_S))
            await pipe.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unavailable during the rebuild: {exc}") from exc

    consumer = Consumer.of_events(
        kafka,
        types=[IngestValidated],
        group_id=None,  # reads every partition, commits nothing
        auto_offset_reset="earliest",
        handler=handle,
        publisher=publisher,
        topics=topics,
        before_commit=flush,
    )
    await consumer.run()
    return replayed


async def _ranges(
    kafka: KafkaSettings, done: Mapping[TopicPartition, int]
) -> dict[TopicPartition, tuple[int, int]]:
    """Each committed partition's (earliest offset, committed offset).

    The end is the committed offset, not the partition's end: the embedded broker
    answers ListOffsets(latest) wrongly, and what comes after is the group's anyway."""
    if not done:
        return {}
    reader = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False)
    await reader.start()
    try:
        starts = await reader.beginning_offsets(list(done))
    finally:
        await reader.stop()
    return {tp: (starts[tp], max(starts[tp], end)) for tp, end in done.items()}
