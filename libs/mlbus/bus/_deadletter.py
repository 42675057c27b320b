"""The dead-letter topic: what a consumer could not apply, with its bytes, origin and reason.

One record format (`MessageDeadLettered`) and one writer for both ways a record
fails: its handler raised (the original bytes, as the payload of raw bytes), or
the work done at the commit could not apply it (`DeadLetter`, returned by
`before_commit`; the decoded payload encoded again, since the bytes are not kept
past the handler).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from opentelemetry import metrics

from mlbus.bus._codec import encode_event
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
    origin: Received[Any], *, group: str | None, error: BaseException, attempts: int
) -> MessageDeadLettered:
    """The dead-letter record for one consumed record: its bytes, origin and why it failed."""
    return MessageDeadLettered(
        consumer_group=group,
        source_topic=origin.topic,
        source_partition=origin.partition,
        source_offset=origin.offset,
        key_b64=_b64(origin.key),
        value_b64=_b64(payload_bytes(origin.payload)),
        headers={k: v.decode("utf-8", "replace") for k, v in origin.headers if v},
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


@dataclass
class DeadLetterWriter:
    """Writes dead-letter records of one consumer, each retried until it lands."""

    publisher: Publisher
    topic: str
    group: str | None
    policy: RetryPolicy
    stopping: asyncio.Event

    async def write(self, origin: Received[Any], error: BaseException, attempts: int) -> bool:
        """Publish the record and its reason; False if `stop()` came before it landed
        (the offset must not be committed then)."""
        dead = dead_letter_event(origin, group=self.group, error=error, attempts=attempts)

        async def publish() -> None:
            await self.publisher.publish(dead, key=origin.key, topic=self.topic)

        # Any failure is the broker's (the record is built): keep the offset until it lands.
        failed = await until_done(
            publish,
            policy=self.policy,
            stopping=self.stopping,
            retry_on=(Exception,),
            what="dead-letter publish",
        )
        if failed is not None:
            return False
        _dead_lettered.add(1, {"topic": origin.topic, "error_type": dead.error_type})
        log.error(
            "dead-lettered %s[%d]@%d: %s",
            origin.topic,
            origin.partition,
            origin.offset,
            dead.reason,
            extra={"event_id": origin.event_id},
        )
        return True


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")
