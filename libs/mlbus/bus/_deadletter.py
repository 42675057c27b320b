"""The dead-letter topic: what a consumer could not apply, with its bytes, origin and reason.

One record format (`MessageDeadLettered`) and one writer for both ways a record
fails: its handler raised (the original bytes), or the work done at the commit
could not apply it (`DeadLetter`, returned by `before_commit`; the decoded
payload encoded again, since the bytes are not kept past the handler).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from opentelemetry import metrics

from mlbus.bus._codec import encode_event, header
from mlbus.bus._publisher import Publisher
from mlbus.bus._received import Received
from mlbus.bus._retry import RetryPolicy, until_done
from mlbus.events import Event, MessageDeadLettered

log = logging.getLogger("mlbus.bus._consumer")
_dead_lettered = metrics.get_meter("mlbus.bus").create_counter(
    "mlbus.consumer.dead_lettered", description="records sent to the dead-letter topic"
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DeadLetter(Generic[T]):
    """A record the commit-time work could not apply, and why: the bus dead-letters it
    (after the work landed, before the offsets commit)."""

    received: Received[T]
    error: BaseException


def dead_letter_event(
    *,
    group: str | None,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    error: BaseException,
    attempts: int,
) -> MessageDeadLettered:
    """The dead-letter record for one consumed record: its bytes, origin and why it failed."""
    return MessageDeadLettered(
        consumer_group=group,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        key_b64=_b64(key),
        value_b64=_b64(value),
        headers={k: v.decode("utf-8", "replace") for k, v in headers if v},
        error_type=type(error).__name__,
        reason=str(error) or type(error).__name__,
        attempts=attempts,
    )


def payload_bytes(payload: object) -> bytes | None:
    """The bytes a decoded payload came from, as near as they can be had again: an
    event encoded again, raw bytes as they are; anything else has none."""
    if isinstance(payload, Event):
        return encode_event(payload)
    if isinstance(payload, bytes):
        return payload
    return None


class DeadLetterWriter:
    """Writes dead-letter records of one consumer, each retried until it lands."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        topic: str,
        group: str | None,
        policy: RetryPolicy,
        stopping: asyncio.Event,
    ) -> None:
        self._publisher = publisher
        self._topic = topic
        self._group = group
        self._policy = policy
        self._stopping = stopping
        self.written = 0

    async def write(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        error: BaseException,
        attempts: int,
    ) -> bool:
        """Publish the record and its reason; False if `stop()` came before it landed
        (the offset must not be committed then)."""
        dead = dead_letter_event(
            group=self._group,
            topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value,
            headers=headers,
            error=error,
            attempts=attempts,
        )

        async def publish() -> None:
            await self._publisher.publish(dead, key=key, topic=self._topic)

        # Any failure is the broker's (the record is built): keep the offset until it lands.
        failed = await until_done(
            publish,
            policy=self._policy,
            stopping=self._stopping,
            retry_on=(Exception,),
            what="dead-letter publish",
        )
        if failed is not None:
            return False
        self.written += 1
        _dead_lettered.add(1, {"topic": topic, "error_type": dead.error_type})
        log.error(
            "dead-lettered %s[%d]@%d: %s",
            topic,
            partition,
            offset,
            dead.reason,
            extra={"event_id": header(headers, "ce_id")},
        )
        return True


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")
