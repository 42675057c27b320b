"""Reading topics to a known point, instead of polling for a while and hoping.

"Nothing arrives twice" cannot be shown by waiting: a quiet window only says
nothing arrived *yet*. Once the writers have stopped (or cannot write), the
broker's end offsets are the whole story: read up to them, and everything that
was ever published has been seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord


async def read_to_end(
    consumer: AIOKafkaConsumer,
    handle: Callable[[ConsumerRecord[bytes, bytes]], None],
    timeout_s: float = 30.0,
) -> None:
    """Hand every record up to the end offsets of `consumer`'s partitions, as they are when
    this is called, to `handle`. Records published later may or may not be included."""
    async with asyncio.timeout(timeout_s):
        while not consumer.assignment():  # subscribed, not assigned yet
            for batch in (await consumer.getmany(timeout_ms=100)).values():
                for record in batch:
                    handle(record)
        partitions: list[TopicPartition] = sorted(consumer.assignment())
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        while await _behind(consumer, ends):
            for batch in (await consumer.getmany(*partitions, timeout_ms=100)).values():
                for record in batch:
                    handle(record)


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False
