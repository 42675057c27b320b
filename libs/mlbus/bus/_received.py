"""One consumed record as a handler sees it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiokafka.structs import ConsumerRecord

from mlbus.bus._codec import header

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Received(Generic[T]):
    """One consumed record: its decoded payload and where it came from."""

    payload: T
    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    @property
    def event_id(self) -> str | None:
        return header(self.headers, "ce_id")


def received(
    payload: T, record: ConsumerRecord[bytes, bytes], headers: tuple[tuple[str, bytes], ...]
) -> Received[T]:
    """`record` as a handler sees it, with its decoded `payload`."""
    return Received(
        payload,
        record.topic,
        record.partition,
        record.offset,
        record.key,
        headers,
        record.timestamp,
    )


def raw_decoder(value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    """For consumers that validate bytes themselves (ingestion)."""
    return value
