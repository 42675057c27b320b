"""Events on the wire: a JSON value plus CloudEvents Kafka binding headers.

Binary content mode of the CloudEvents Kafka binding: the event's JSON is the
record value and its attributes ride in `ce_*` headers, so any Kafka client in
any language can read the value without knowing CloudEvents.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from mlbus.errors import InvalidInput
from mlbus.events import (
    EVENT_TYPES,
    INGEST_VALIDATED,
    PREDICTION_LOGGED,
    Event,
    IngestValidated,
)

CE_SPECVERSION = "1.0"
CONTENT_TYPE = b"application/json"

Headers = list[tuple[str, bytes]]
P = TypeVar("P", bound=BaseModel)


def event_headers(event: Event, source: str) -> Headers:
    """The CloudEvents binding headers for `event` (trace context is added separately)."""
    return [
        _SPECVERSION,
        ("ce_id", event.event_id.encode()),
        ("ce_type", _type_bytes(event.event_type)),
        ("ce_source", _source_bytes(source)),
        ("ce_time", event.occurred_at.isoformat().encode()),
        _CONTENT_TYPE,
    ]


_SPECVERSION = ("ce_specversion", CE_SPECVERSION.encode())
_CONTENT_TYPE = ("content-type", CONTENT_TYPE)


@functools.cache
def _type_bytes(event_type: str) -> bytes:
    return event_type.encode()


@functools.cache
def _source_bytes(source: str) -> bytes:
    return source.encode()


def encode_event(event: Event) -> bytes:
    return event.__pydantic_serializer__.to_json(event)


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    """The last value of header `name`, decoded, or None."""
    found: str | None = None
    for key, value in headers or ():
        if key == name and value is not None:
            found = value.decode("utf-8", errors="replace")
    return found


class EventDecoder:
    """Turns a record into the event class named by its `ce_type` header.

    Only types in `accept` are decoded; anything else is an `InvalidInput`
    (a permanent error: the record goes to the dead-letter topic). Classes are
    looked up in a fixed table, never built from data on the wire.
    """

    def __init__(self, accept: Sequence[type[Event]] | None = None) -> None:
        types: Mapping[str, type[Event]] = (
            {cls.event_type: cls for cls in accept} if accept else EVENT_TYPES
        )
        self._types = dict(types)
        # A record without ce_type is accepted only when one type is possible.
        self._only = next(iter(self._types.values())) if len(self._types) == 1 else None

    def __call__(self, value: bytes | None, headers: Sequence[tuple[str, bytes]] | None) -> Event:
        if value is None:
            raise InvalidInput("record has no value (tombstone)")
        ce_type = header(headers, "ce_type")
        cls = self._types.get(ce_type) if ce_type else self._only
        if cls is None:
            expected = ", ".join(sorted(self._types))
            raise InvalidInput(
                f"unexpected event type {ce_type!r}; this consumer accepts: {expected}"
                if ce_type
                else f"record has no ce_type header; this consumer accepts: {expected}"
            )
        try:
            return cls.model_validate_json(value)
        except ValidationError as exc:
            raise InvalidInput(f"{cls.event_type} failed its schema: {_short(exc)}") from None


def _short(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "<value>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class PredictionsAndLabelsDecoder(Generic[P]):
    """What the drift and outcomes services read: logged predictions, and the validated
    events of the label source; other sources' validated events become None.

    `ingest.validated` carries every source's events; only the label source matters
    to them, so the rest is recognised from the bytes without building an event.
    `predictions` is the class a prediction is read into: `PredictionLogged`, or a
    reader's projection of it (the fields it uses, the rest skipped, ADR 0030).
    `reader` names the service in the error of an unexpected event type.
    """

    def __init__(self, label_source: str | None, *, reader: str, predictions: type[P]) -> None:
        self._label = (
            None
            if label_source is None
            else re.compile(rb'"source"\s*:\s*"' + re.escape(label_source.encode()) + rb'"')
        )
        self._reader = reader
        self._predictions = predictions

    def __call__(
        self, value: bytes | None, headers: Sequence[tuple[str, bytes]] | None
    ) -> P | IngestValidated | None:
        if value is None:
            raise InvalidInput("record has no value (tombstone)")
        ce_type = header(headers, "ce_type")
        try:
            if ce_type == PREDICTION_LOGGED:
                return self._predictions.model_validate_json(value)
            if ce_type == INGEST_VALIDATED:
                if self._label is None or not self._label.search(value):
                    return None
                return IngestValidated.model_validate_json(value)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise InvalidInput(f"{ce_type} failed its schema: {exc}") from None
        raise InvalidInput(
            f"unexpected event type {ce_type!r}; the {self._reader} reads "
            f"{PREDICTION_LOGGED} and {INGEST_VALIDATED}"
        )
