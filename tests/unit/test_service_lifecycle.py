"""The lifecycle the stream services share (mlbus.service), with a fake consumer (no I/O)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from mlbus.errors import RetryableError
from mlbus.service import ServiceConsumer, StreamService


@dataclass
class FakeConsumer:
    fails_with: Exception | None = None
    stops: int = 0
    assigned: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self.stops += 1

    async def wait_assigned(self, timeout_s: float = 60.0) -> None:
        await asyncio.wait_for(self.assigned.wait(), timeout_s)

    async def run(self) -> None:
        if self.fails_with is not None:
            raise self.fails_with


@dataclass
class OneConsumerService(StreamService):
    consumer: FakeConsumer | None = None

    def consumers(self) -> Sequence[ServiceConsumer]:
        return () if self.consumer is None else (self.consumer,)

    async def run(self) -> None:
        self.consumer = FakeConsumer()
        self._started.set()
        await self._stop.wait()


async def test_wait_started_waits_for_the_consumers_assignment() -> None:
    service = OneConsumerService()
    running = asyncio.create_task(service.run())
    with pytest.raises(TimeoutError):
        await service.wait_started(timeout_s=0.05)  # started, but no partitions yet
    assert service.consumer is not None
    service.consumer.assigned.set()
    await service.wait_started(timeout_s=1.0)
    service.stop()
    service.stop()  # idempotent
    await asyncio.wait_for(running, 1.0)
    assert service.consumer.stops == 2


async def test_stop_before_run_stops_nothing_and_run_returns_at_once() -> None:
    service = OneConsumerService()
    service.stop()
    await asyncio.wait_for(service.run(), 1.0)


async def test_a_retryable_error_is_raised_while_running_and_logged_once_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = OneConsumerService()
    consumer = FakeConsumer(fails_with=RetryableError("redis down"))
    with pytest.raises(RetryableError):
        await service.consume(consumer, stopped_unsaved="x stopped with state unsaved")
    service.stop()
    await service.consume(consumer, stopped_unsaved="x stopped with state unsaved")
    assert "x stopped with state unsaved: redis down" in caplog.text
    consumer.fails_with = ValueError("a bug")
    with pytest.raises(ValueError, match="a bug"):
        await service.consume(consumer, stopped_unsaved="never logged")
