"""One record's fate: its handler, retried or dead-lettered as the error says.

`RetryableError` (and timeouts, connection errors) → tried again after the
policy's backoff for as long as it takes; `PermanentError` → the dead-letter
topic at once; any other exception is a bug: a few tries, then the dead-letter
topic, so one poison record cannot stall a partition forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aiokafka.structs import ConsumerRecord
from opentelemetry import metrics
from opentelemetry.trace import Span, Status, StatusCode

from mlbus.bus._deadletter import DeadLetterWriter
from mlbus.bus._received import Received, received
from mlbus.bus._retry import RETRYABLE, RetryPolicy
from mlbus.errors import PermanentError

log = logging.getLogger("mlbus.bus._consumer")
_retries = metrics.get_meter("mlbus.bus").create_counter(
    "mlbus.consumer.retries", description="handler retries"
)

T = TypeVar("T")
Decoder = Callable[[bytes | None, Sequence[tuple[str, bytes]]], T]


@dataclass
class ConsumerStats:
    processed: int = 0
    dead_lettered: int = 0
    retries: int = 0
    committed: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException
    attempts: int


_DONE = object()
_STOPPED = object()
_Outcome = _Failed | object


@dataclass
class RecordHandler(Generic[T]):
    """Decodes a record and runs the handler on it until its fate is settled."""

    handler: Callable[[Received[T]], Awaitable[None]]
    decoder: Decoder[T]
    policy: RetryPolicy
    stopping: asyncio.Event
    dead_letters: DeadLetterWriter
    stats: ConsumerStats

    async def settle(
        self,
        record: ConsumerRecord[bytes, bytes],
        headers: tuple[tuple[str, bytes], ...],
        span: Span | None,
    ) -> bool:
        """Run the handler with retries; dead-letter what cannot succeed."""
        outcome = await self._handle_with_retries(record, headers, span)
        if outcome is _DONE:
            self.stats.processed += 1
            return True
        if outcome is _STOPPED:
            return False
        assert isinstance(outcome, _Failed)
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, str(outcome.error)))
        return await self.dead_letter(record, outcome.error, outcome.attempts)

    async def _handle_with_retries(
        self,
        record: ConsumerRecord[bytes, bytes],
        headers: tuple[tuple[str, bytes], ...],
        span: Span | None,
    ) -> _Outcome:
        attempt = 0
        while True:
            attempt += 1
            try:
                payload = self.decoder(record.value, headers)
                await self.handler(received(payload, record, headers))
                return _DONE
            except PermanentError as exc:
                return _Failed(exc, attempt)
            except RETRYABLE as exc:
                if not await self._backoff(record, exc, attempt, span):
                    return _STOPPED
            except Exception as exc:  # a bug: a few tries, then the dead-letter topic
                log.exception(
                    "handler failed on %s[%d]@%d", record.topic, record.partition, record.offset
                )
                if attempt >= self.policy.unexpected_attempts:
                    return _Failed(exc, attempt)
                if not await self._backoff(record, exc, attempt, span):
                    return _STOPPED

    async def _backoff(
        self,
        record: ConsumerRecord[bytes, bytes],
        exc: BaseException,
        attempt: int,
        span: Span | None,
    ) -> bool:
        """Sleep before the next attempt; False if asked to stop meanwhile."""
        delay = self.policy.backoff_s(attempt)
        self.stats.retries += 1
        _retries.add(1, {"topic": record.topic})
        if span is not None:
            span.add_event("retry", {"attempt": attempt, "error": repr(exc), "backoff_s": delay})
        log.warning(
            "retrying %s[%d]@%d in %.2fs (attempt %d): %s",
            record.topic,
            record.partition,
            record.offset,
            delay,
            attempt,
            exc,
        )
        try:
            await asyncio.wait_for(self.stopping.wait(), delay)
        except TimeoutError:
            return True
        return False

    async def dead_letter(
        self, record: ConsumerRecord[bytes, bytes], error: BaseException, attempts: int
    ) -> bool:
        """Write the record's own bytes and the reason to the dead-letter topic; retried
        until it lands."""
        origin = received(record.value, record, tuple(record.headers or ()))
        landed = await self.dead_letters.write(origin, error, attempts)
        if landed:
            self.stats.dead_lettered += 1
        return landed
