"""A consumer made again: one consumer to a service over the successive ones it runs.

Some services replace their consumer when it ends for a reason they recover from:
ingestion after the broker failed a fetch or a commit (from the committed offsets,
after a backoff), features after Redis lost the window state (once the state is
rebuilt). To the service's lifecycle (`mlbus.service.StreamService`) each is one
consumer: `wait_assigned` asks the one running now, `stop` reaches it.

A subclass says what differs: how the next consumer is made (`make`) and whether
another follows the one that ended (`run_one`).
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

from mlbus.bus._consumer import Consumer

T = TypeVar("T")


class RemadeConsumer(Generic[T]):
    """`run()`: `make()` a consumer, mark it current, `run_one(it)`; again while that
    says so and `stop()` has not come."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.made = asyncio.Event()
        """Set once the first consumer exists."""
        self.current: Consumer[T] | None = None

    async def make(self) -> Consumer[T] | None:
        """The next consumer; None if `stop()` came while it was being made."""
        raise NotImplementedError

    async def run_one(self, consumer: Consumer[T]) -> bool:
        """Run `consumer` until it ends; True if another should be made."""
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()
        if self.current is not None:
            self.current.stop()

    async def wait_assigned(self, timeout_s: float = 60.0) -> None:
        """Until a consumer exists and the one running now owns its partitions."""
        async with asyncio.timeout(timeout_s):
            await self.made.wait()
            assert self.current is not None
            await self.current.wait_assigned(timeout_s)

    async def run(self) -> None:
        while not self.stopping.is_set():
            consumer = await self.make()
            if consumer is None:
                return
            self.current = consumer
            self.made.set()
            if self.stopping.is_set() or not await self.run_one(consumer):
                return
