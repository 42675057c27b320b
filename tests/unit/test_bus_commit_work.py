"""What the commit-time work hands back is dead-lettered before any commit passes it.

A fake broker stands in for the dead-letter publish here; the real path, records
to the dead-letter topic of the embedded broker, is in
tests/integration/test_bus_batch.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from mlbus.bus import Consumer, DeadLetter, Received, RetryPolicy, raw_decoder
from mlbus.config import KafkaSettings
from mlbus.errors import RetryableError
from mlbus.events import MessageDeadLettered


class FlakyBroker:
    """The publisher of the dead-letter topic, failing while `down`."""

    def __init__(self) -> None:
        self.down = True
        self.published: list[MessageDeadLettered] = []

    async def publish(self, event: Any, *, key: bytes | None = None, topic: str) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")
        self.published.append(event)


async def test_a_dead_letter_interrupted_by_stop_is_written_before_the_next_commit() -> None:
    broker = FlakyBroker()
    record: Received[bytes | None] = Received(b"bad", "t", 0, 7, b"k", (), 0)
    handed = [DeadLetter(record, ValueError("cannot apply"))]

    async def before_commit() -> list[DeadLetter[bytes | None]]:
        unapplied = list(handed)
        handed.clear()  # the work landed: a second call has nothing left to hand back
        return unapplied

    async def handle(received: Received[bytes | None]) -> None:
        return None

    consumer: Consumer[bytes | None] = Consumer(
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),  # never connected here
        topics=["t"],
        group_id="g",
        handler=handle,
        decoder=raw_decoder,
        publisher=broker,  # type: ignore[arg-type]
        retry=RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.001),
    )
    consumer.stop()  # stopping while the broker is down: the commit must not happen
    with pytest.raises(RetryableError, match="dead-letter"):
        await consumer._commit_work(before_commit)
    assert not broker.published

    broker.down = False  # the commit on the way out: the letter is written first
    await consumer._commit_work(before_commit)
    [letter] = broker.published
    assert (letter.source_topic, letter.source_offset, letter.reason) == ("t", 7, "cannot apply")
    assert letter.value_b64 == "YmFk"  # b"bad"
    assert consumer.stats.dead_lettered == 1
