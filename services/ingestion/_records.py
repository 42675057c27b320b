"""What ingestion writes to Kafka: `ingest.validated` and `ingest.rejected` records.

Most validated events skip the pydantic model: `ValidatedEncoder` writes the
very JSON `IngestValidated` would (tests/unit/test_ingest_encoding.py holds the
two equal, byte for byte, so the model stays the contract), and
`validated_headers` its CloudEvents headers. Rejections and traced events go
through the models and `Publisher.record`.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import pydantic_core

from mlbus.bus import OutgoingRecord, Received
from mlbus.bus._codec import CE_SPECVERSION, CONTENT_TYPE
from mlbus.contracts import Accepted, Rejected
from mlbus.events import INGEST_VALIDATED, IngestRejected, IngestValidated

_REJECTION_IDS = uuid.UUID("6f1c2a53-8a4e-4f43-9a3c-3b8e9f8f1d2e")
_to_json = pydantic_core.to_json


def rejection_id(topic: str, partition: int, offset: int) -> str:
    """The same source record always gets the same rejection id, so replays are recognisable."""
    return str(uuid.uuid5(_REJECTION_IDS, f"{topic}/{partition}/{offset}"))


def _validated(
    outcome: Accepted, record: Received[bytes | None], occurred_at: datetime | None = None
) -> IngestValidated:
    return IngestValidated(
        event_id=outcome.event_id,
        occurred_at=occurred_at or datetime.now(UTC),
        source=outcome.source,
        contract_version=outcome.contract_version,
        entity_id=outcome.entity_id,
        event_time=outcome.event_time,
        payload=outcome.payload,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
    )


def _rejected(outcome: Rejected, record: Received[bytes | None]) -> IngestRejected:
    return IngestRejected(
        event_id=rejection_id(record.topic, record.partition, record.offset),
        source=outcome.source or None,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        raw_b64=base64.b64encode(record.payload or b"").decode("ascii"),
        key_b64=None if record.key is None else base64.b64encode(record.key).decode("ascii"),
        reasons=outcome.reasons,
    )


class ValidatedEncoder:
    """`ingest.validated` records of one flush, without the model.

    The JSON is `_validated(outcome, record, occurred_at)`'s, fields in the
    model's order, each value written by pydantic-core's own serializer; the
    parts that repeat from record to record (`occurred_at`, the source and its
    contract version, the source topic and partition) are encoded once. The
    validator already guarantees what the model would check (ids of 1-200
    characters, scalar payload values, finite numbers, an aware event time).
    """

    def __init__(self, occurred_at: datetime, ce_source: bytes) -> None:
        self._occurred_at = _to_json(occurred_at)
        self._ce_source = ce_source
        self._ce_time = occurred_at.isoformat().encode()
        self._after_event_id: dict[tuple[str, int], bytes] = {}
        self._after_payload: dict[tuple[str, int], bytes] = {}

    def value(self, outcome: Accepted, record: Received[bytes | None]) -> bytes:
        """The record value: `IngestValidated` JSON."""
        source = (outcome.source, outcome.contract_version)
        middle = self._after_event_id.get(source)
        if middle is None:
            middle = self._after_event_id[source] = b"".join(
                (
                    b',"occurred_at":',
                    self._occurred_at,
                    b',"source":',
                    _to_json(outcome.source),
                    b',"contract_version":',
                    _to_json(outcome.contract_version),
                    b',"entity_id":',
                )
            )
        where = (record.topic, record.partition)
        tail = self._after_payload.get(where)
        if tail is None:
            tail = self._after_payload[where] = b"".join(
                (
                    b',"source_topic":',
                    _to_json(record.topic),
                    b',"source_partition":',
                    _to_json(record.partition),
                    b',"source_offset":',
                )
            )
        return b"".join(
            (
                b'{"event_id":',
                _to_json(outcome.event_id),
                middle,
                _to_json(outcome.entity_id),
                b',"event_time":',
                _to_json(outcome.event_time),
                b',"payload":',
                _to_json(outcome.payload),
                tail,
                b"%d}" % record.offset,
            )
        )

    def record(self, outcome: Accepted, record: Received[bytes | None]) -> OutgoingRecord:
        """The whole record: value, key (the entity id) and CloudEvents headers."""
        return OutgoingRecord(
            INGEST_VALIDATED,
            self.value(outcome, record),
            outcome.entity_id.encode(),
            validated_headers(outcome.event_id, self._ce_source, self._ce_time),
        )


def validated_value(
    outcome: Accepted, record: Received[bytes | None], occurred_at: datetime
) -> bytes:
    """The JSON value of `_validated(outcome, record, occurred_at)`, without the model."""
    return ValidatedEncoder(occurred_at, b"").value(outcome, record)


_SPECVERSION = ("ce_specversion", CE_SPECVERSION.encode())
_CE_TYPE = ("ce_type", INGEST_VALIDATED.encode())
_CONTENT_TYPE = ("content-type", CONTENT_TYPE)


def validated_headers(event_id: str, source: bytes, ce_time: bytes) -> list[tuple[str, bytes]]:
    """`event_headers` of that event: `source` is the publisher's, `ce_time` its occurred_at."""
    return [
        _SPECVERSION,
        ("ce_id", event_id.encode()),
        _CE_TYPE,
        ("ce_source", source),
        ("ce_time", ce_time),
        _CONTENT_TYPE,
    ]


class CachedPartitioner:
    """aiokafka's default (murmur2, Java-compatible) partitioner, memoised per key.

    murmur2 is pure Python in aiokafka (≈2.5 µs a record); entity ids repeat, so
    a bounded cache makes keyed sends nearly as cheap as unkeyed ones.
    """

    def __init__(self, size: int = 65_536) -> None:
        from aiokafka.partitioner import DefaultPartitioner

        self._default = DefaultPartitioner()
        self._cache: dict[tuple[bytes, int], int] = {}
        self._size = size

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self._default(key, all_partitions, available))
        slot = (key, len(all_partitions))
        index = self._cache.get(slot)
        if index is None:
            if len(self._cache) >= self._size:
                self._cache.clear()
            index = all_partitions.index(self._default(key, all_partitions, available))
            self._cache[slot] = index
        return all_partitions[index]
