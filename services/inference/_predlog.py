"""The prediction log: every prediction to `mlbus.prediction.logged.v1`, never in a response's way.

The request path only `offer`s a small record (references to the arrays it
already has) to a bounded queue: no encoding, no I/O, no waiting. A background
task turns records into `PredictionLogged` events, one per row, and queues
them on the producer with `Publisher.send`. When the queue is full, when the
broker cannot be reached, or when a delivery fails, records are dropped and
counted (`dropped`, metric `mlbus.inference.prediction_log.dropped`) — the
response was sent long before.

Feature names: a 2-D input `x` of shape [N, F] gives features `x[0]` … `x[F-1]`
unless the ONNX model's metadata has `mlbus.feature_names.x` (comma-separated);
a 1-D input, or [N, 1], is one feature named after the input. `Predict`
passes what it served instead (`ServedFeatures`): each `view.feature` value
before encoding, its age, whether it was defaulted, the moment the windows were
evaluated at and how many events each view had counted — so a served vector can
be compared with the offline row of the same event (ADR 0020). Shadow scores
are logged with `shadow=True`. When Predict names the business event of each
entity (`event_ids`), every row carries it as `scored_event_id`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiokafka.structs import RecordMetadata

from mlbus.bus import Publisher
from mlbus.events import PredictionLogged, Scalar
from mlbus.model_metadata import feature_names_of
from mlbus.telemetry import meter

from ._model import LoadedModel
from ._policy import EntityFeatures

log = logging.getLogger(__name__)
_meter = meter("mlbus.inference")
_dropped_metric = _meter.create_counter(
    "mlbus.inference.prediction_log.dropped",
    description="prediction records not logged (buffer full, broker down, delivery failed)",
)
_logged_metric = _meter.create_counter(
    "mlbus.inference.prediction_log.sent", description="prediction records queued on the producer"
)


@dataclass(frozen=True, slots=True)
class ServedFeatures:
    """What Predict served, per row of the batch: values by `refs` before encoding."""

    refs: tuple[str, ...]
    rows: Sequence[EntityFeatures]
    at_ms: int
    """The moment the windows were evaluated at."""


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """What the request path hands over: references, no copies, no encoding."""

    model: LoadedModel
    alias: str | None
    inputs: Mapping[str, np.ndarray]
    outputs: Mapping[str, np.ndarray]
    latency_ms: float
    trace_id: str | None
    entity_ids: tuple[str, ...] | None = None
    shadow: bool = False
    feature_names: tuple[str, ...] | None = None
    """Names of the columns of the (single, 2-D) input, e.g. the spec's `view.feature` refs."""
    event_ids: tuple[str, ...] | None = None
    """Per row, the business event scored (Predict's `event_ids`), for joining labels later."""
    served: ServedFeatures | None = None
    """Predict: what each row was served (logged instead of the encoded inputs)."""

    @property
    def rows(self) -> int:
        for array in self.inputs.values():
            return int(array.shape[0]) if array.ndim else 1
        return 1


PublisherFactory = Callable[[], Awaitable[Publisher]]


class PredictionLog:
    """Bounded, non-blocking buffer in front of a `Publisher`.

    `publisher_factory` connects (and reconnects after failures); `run()` is the
    drain task; `offer()` never blocks and never raises.
    """

    def __init__(
        self,
        publisher_factory: PublisherFactory,
        *,
        max_records: int = 10_000,
        retry_s: float = 2.0,
    ) -> None:
        self._connect = publisher_factory
        self._queue: asyncio.Queue[PredictionRecord] = asyncio.Queue(max_records)
        self._retry_s = retry_s
        self._publisher: Publisher | None = None
        self._stopping = asyncio.Event()
        self.sent = 0
        self.dropped = 0

    def offer(self, record: PredictionRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._drop(record.rows, "buffer full")

    def _drop(self, rows: int, reason: str) -> None:
        self.dropped += rows
        _dropped_metric.add(rows, {"reason": reason})

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        """Drain until `stop()`; connect lazily; drop (and count) what cannot be sent."""
        try:
            while not self._stopping.is_set():
                record = await self._next()
                if record is None:
                    break
                publisher = await self._publisher_or_none()
                if publisher is None:
                    self._drop(record.rows + self._discard_queued(), "broker unreachable")
                    await self._pause()
                    continue
                await self._send(publisher, record)
        finally:
            await self._close()

    async def _next(self) -> PredictionRecord | None:
        getting = asyncio.ensure_future(self._queue.get())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not getting.done():
                getting.cancel()
        return getting.result() if getting.done() and not getting.cancelled() else None

    async def _publisher_or_none(self) -> Publisher | None:
        if self._publisher is None:
            try:
                self._publisher = await self._connect()
            except Exception as exc:
                log.warning("prediction log: cannot reach the broker (%s); dropping records", exc)
                return None
        return self._publisher

    async def _send(self, publisher: Publisher, record: PredictionRecord) -> None:
        events = to_events(record)
        try:
            for event in events:
                future = await publisher.send(event, key=event.entity_id or event.model)
                future.add_done_callback(self._delivered)
        except Exception as exc:
            log.warning("prediction log: send failed (%s); reconnecting", exc)
            self._drop(len(events), "send failed")
            await self._close()
            await self._pause()
            return
        self.sent += len(events)
        _logged_metric.add(len(events))

    def _delivered(self, future: asyncio.Future[RecordMetadata]) -> None:
        if future.cancelled() or future.exception() is not None:
            self._drop(1, "delivery failed")

    def _discard_queued(self) -> int:
        rows = 0
        while not self._queue.empty():
            rows += self._queue.get_nowait().rows
        return rows

    async def _pause(self) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), self._retry_s)
        except TimeoutError:
            pass

    async def _close(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            try:
                await asyncio.wait_for(publisher.stop(), self._retry_s * 5)
            except Exception as exc:
                log.warning("prediction log: closing the producer failed: %s", exc)

    def stop(self) -> None:
        """Stop draining; what is still queued is dropped and counted. Idempotent."""
        self._stopping.set()
        if rows := self._discard_queued():
            self._drop(rows, "shutdown")


def feature_names(model: LoadedModel, name: str, width: int) -> list[str]:
    names = feature_names_of(model.session.get_modelmeta().custom_metadata_map, name)
    if names is not None and len(names) == width:
        return list(names)
    return [name] if width == 1 else [f"{name}[{j}]" for j in range(width)]


def _scalar(value: Any) -> Scalar:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value  # type: ignore[no-any-return]


def to_events(record: PredictionRecord) -> list[PredictionLogged]:
    """One `PredictionLogged` per row of the batch."""
    rows = record.rows
    outputs: list[tuple[str, np.ndarray]] = [
        (name, array.reshape(rows, -1).astype(np.float64))
        for name, array in record.outputs.items()
        if array.dtype.kind in "biuf" and array.ndim and array.shape[0] == rows
    ]
    served = record.served
    columns = [] if served is not None else _input_columns(record, rows)
    features_at = None if served is None else datetime.fromtimestamp(served.at_ms / 1000, UTC)
    events = []
    for i in range(rows):
        features: dict[str, Scalar] = {}
        extra: dict[str, Any] = {}
        if served is not None:
            row = served.rows[i]
            features = dict(zip(served.refs, map(_scalar, row.values), strict=True))
            extra = {
                "feature_ages_s": row.ages_s,
                "defaulted_features": row.defaulted,
                "features_at": features_at,
                "view_event_counts": row.counted,
            }
        for names, flat in columns:
            features.update(zip(names, map(_scalar, flat[i].tolist()), strict=True))
        events.append(
            PredictionLogged(
                model=record.model.name,
                version=record.model.version,
                alias=record.alias,
                entity_id=record.entity_ids[i] if record.entity_ids else None,
                scored_event_id=record.event_ids[i] if record.event_ids else None,
                features=features,
                outputs={name: flat[i].tolist() for name, flat in outputs},
                latency_ms=record.latency_ms,
                trace_id=record.trace_id,
                shadow=record.shadow,
                **extra,
            )
        )
    return events


def _input_columns(record: PredictionRecord, rows: int) -> list[tuple[list[str], np.ndarray]]:
    """The model inputs as named feature columns (ModelInfer: no served values to log)."""
    columns: list[tuple[list[str], np.ndarray]] = []
    for name, array in record.inputs.items():
        flat = array.reshape(rows, -1) if array.ndim else array.reshape(1, 1)
        given = record.feature_names
        if given is not None and len(given) == flat.shape[1] and len(record.inputs) == 1:
            columns.append((list(given), flat))
        else:
            columns.append((feature_names(record.model, name, flat.shape[1]), flat))
    return columns
