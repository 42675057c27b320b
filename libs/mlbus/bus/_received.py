"""One consumed record as a handler sees it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiokafka.structs import ConsumerRecord

from mlbus.bus._codec import header

T = TypeVar("T")


@dataclass(slots=True)
class Received(Generic[T]):
    """One consumed record: its decoded payload and where it came from.

    Read-only by convention, not `frozen`: one is built per consumed record, and a
    frozen dataclass's `__init__` costs four times as much (0.8 µs against 0.2 µs,
    a few percent of the drift service's CPU; `loadtests/bench_drift.py`).
    """

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
