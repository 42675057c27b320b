"""Kafka as the console reads it: end offsets (event rates) and the tail of a topic.

One consumer without a group (nothing is committed, no other consumer is
disturbed), assigned topic by topic; records are decoded by the event
contracts (`mlbus.events`), never by importing names read off the wire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from mlbus.bus import EventDecoder
from mlbus.config import KafkaSettings
from mlbus.errors import InvalidInput
from mlbus.events import Event

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 3.0


class TopicReader:
    """End offsets and the last records of topics, over one group-less consumer."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self._consumer: Any = None
        self._lock = asyncio.Lock()
        self._decode = EventDecoder()

    async def _started(self) -> Any:
        """The consumer, started on first use (and again after a failed start): the console
        comes up, and says so, while the broker is still down."""
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            kwargs = self.kafka.client_kwargs()
            consumer = AIOKafkaConsumer(
                **kwargs, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
            )
            try:
                async with asyncio.timeout(FETCH_TIMEOUT_S * 3):
                    await consumer.start()
            except BaseException:
                await consumer.stop()
                raise
            self._consumer = consumer
        return self._consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def end_offsets(self, topics: Sequence[str]) -> dict[str, int]:
        """Topic → the sum of its partitions' end offsets (records ever written)."""
        from aiokafka import TopicPartition

        async with self._lock:
            consumer = await self._started()
            partitions = []
            for topic in topics:
                found = consumer.partitions_for_topic(topic)
                if found is None:
                    await consumer._client.force_metadata_update()
                    found = consumer.partitions_for_topic(topic) or set()
                partitions += [TopicPartition(topic, p) for p in sorted(found)]
            if not partitions:
                return {}
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                ends: dict[Any, int] = await consumer.end_offsets(partitions)
        totals: dict[str, int] = dict.fromkeys(topics, 0)
        for tp, end in ends.items():
            totals[tp.topic] += int(end)
        return totals

    async def tail(self, topic: str, count: int) -> list[Event]:
        """Up to `count` of the newest records of each partition of `topic`, decoded,
        oldest first. Records that break their contract are skipped."""
        from aiokafka import TopicPartition

        async with self._lock:
            consumer = await self._started()
            numbers = consumer.partitions_for_topic(topic)
            if numbers is None:
                await consumer._client.force_metadata_update()
                numbers = consumer.partitions_for_topic(topic) or set()
            partitions = [TopicPartition(topic, p) for p in sorted(numbers)]
            if not partitions:
                return []
            consumer.assign(partitions)
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                starts = await consumer.beginning_offsets(partitions)
                ends = await consumer.end_offsets(partitions)
                wanted = {tp: ends[tp] for tp in partitions if ends[tp] > starts[tp]}
                for tp in partitions:
                    consumer.seek(tp, max(starts[tp], ends[tp] - count))
                records: list[Any] = []
                while wanted:
                    batch = await consumer.getmany(*wanted, timeout_ms=500, max_records=count)
                    if not batch:
                        break
                    for tp, found in batch.items():
                        records.extend(found)
                        if found and found[-1].offset + 1 >= wanted.get(tp, 0):
                            wanted.pop(tp, None)
            consumer.assign([])
        records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
        return [event for r in records if (event := self._event(r)) is not None]

    def _event(self, record: Any) -> Event | None:
        try:
            return self._decode(record.value, record.headers)
        except InvalidInput as exc:
            log.debug("skipped %s@%d: %s", record.topic, record.offset, exc)
            return None
