"""A consumer that keeps up polls at most once per pace; one that is behind does not
wait (ADR 0003 addendum 2, #25).

On the embedded broker a fetch that returns data costs CPU in proportion to the
partition's stored batches, and a consumer of a steady stream otherwise fetches as
fast as the broker answers. The client is a scripted fake here: what is checked is
when the consumer asks it again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from mlbus.bus import Consumer, Received, raw_decoder
from mlbus.bus import _consumer as consumer_module
from mlbus.config import KafkaSettings, Latency

TP = TopicPartition("t", 0)
MAX_BATCH = 4


def _records(start: int, n: int) -> list[ConsumerRecord[bytes, bytes]]:
    return [ConsumerRecord("t", 0, start + i, 0, 0, None, b"x", None, 1, 0, []) for i in range(n)]


class ScriptedClient:
    """Stands in for AIOKafkaConsumer: each poll returns the next scripted batch size,
    then nothing (and stops the consumer once the script is done)."""

    script: list[int] = []
    waiting = 0  # records the high watermark says are on the broker past the script
    owner: Consumer[bytes | None] | None = None

    def __init__(self, **kwargs: Any) -> None:
        self._offset = 0
        self._left = list(ScriptedClient.script)

    async def start(self) -> None:
        return None

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def position(self, tp: TopicPartition) -> int:
        return self._offset

    def highwater(self, tp: TopicPartition) -> int:
        return self._offset + ScriptedClient.waiting

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if not self._left:
            assert ScriptedClient.owner is not None
            ScriptedClient.owner.stop()
            return {}
        n = self._left.pop(0)
        batch = _records(self._offset, n)
        self._offset += n
        return {TP: batch} if batch else {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        return None

    async def stop(self) -> None:
        return None


def _consumer(latency: Latency, monkeypatch: pytest.MonkeyPatch) -> Consumer[bytes | None]:
    monkeypatch.setattr(consumer_module, "AIOKafkaConsumer", ScriptedClient)

    async def handle(received: Received[bytes | None]) -> None:
        return None

    consumer: Consumer[bytes | None] = Consumer(
        KafkaSettings(
            bootstrap_servers="127.0.0.1:1",
            background_fetch_max_wait_ms=700,
        ),
        topics=["t"],
        group_id="g",
        handler=handle,
        decoder=raw_decoder,
        publisher=None,  # type: ignore[arg-type]  # nothing is dead-lettered here
        latency=latency,
        max_batch=MAX_BATCH,
    )
    ScriptedClient.owner = consumer
    return consumer


async def _rests(
    latency: Latency, script: list[int], monkeypatch: pytest.MonkeyPatch, waiting: int = 0
) -> list[float]:
    """The rests the consumer asks for after each poll of `script`, in order."""
    ScriptedClient.script = script
    ScriptedClient.waiting = waiting
    consumer = _consumer(latency, monkeypatch)
    rests: list[float] = []

    async def rest(seconds: float) -> None:
        rests.append(seconds)

    monkeypatch.setattr(consumer, "_rest", rest)
    await consumer.run()
    return rests


async def test_a_background_consumer_that_keeps_up_polls_once_per_background_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rests = await _rests("background", [1, 2, 0], monkeypatch)
    assert len(rests) == 3
    # Each rest is what is left of the wait after the poll, never more than the wait.
    wait_s = KafkaSettings(background_fetch_max_wait_ms=700).fetch_pace_s("background")
    assert all(seconds <= wait_s for seconds in rests)


async def test_a_consumer_that_is_behind_polls_again_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two full batches (a backlog), then a short one: only the short one rests.
    rests = await _rests("background", [MAX_BATCH, MAX_BATCH, 1], monkeypatch)
    assert len(rests) == 1


async def test_a_consumer_whose_fetches_bring_back_less_than_waits_polls_again_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Short batches, but the high watermark says more records wait: a backlog all the same.
    assert await _rests("background", [1, 2, 1], monkeypatch, waiting=100) == []


async def test_the_freshness_path_polls_again_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert await _rests("fresh", [1, 1], monkeypatch) == []


async def test_a_stop_cuts_a_rest_short(monkeypatch: pytest.MonkeyPatch) -> None:
    ScriptedClient.script = [1, 1, 1]
    ScriptedClient.waiting = 0
    consumer = _consumer("background", monkeypatch)
    monkeypatch.setattr(
        consumer._kafka, "background_fetch_max_wait_ms", 10_000
    )  # a rest far longer than the test may take
    run = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.2)  # the first rest has begun
    consumer.stop()
    await asyncio.wait_for(run, timeout=5)
    assert run.exception() is None
