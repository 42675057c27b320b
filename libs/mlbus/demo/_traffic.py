"""The demo's traffic, as a producer and an application would make it.

Payments and their chargebacks go to the source topics as plain JSON keyed by
the entity id; each live payment is scored over the Predict API first; the
offline store is read to see what the feature service has written.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import grpc
import grpc.aio
import pyarrow.parquet as pq
from aiokafka.structs import RecordMetadata

from mlbus.bus import Publisher
from mlbus.featurestore import OfflineStore
from mlbus.spec import ProjectSpec

from ._scenario import Payment
from ._summary import ServedRequest

# ── producing and scoring ────────────────────────────────────────────────────


def _json(event: dict[str, object]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


async def send_payments(
    publisher: Publisher, topic: str, payments: Sequence[Payment]
) -> list[asyncio.Future[RecordMetadata]]:
    """Queue each payment as a producer would: plain JSON, keyed by the entity id."""
    return [await publisher.send_raw(topic, _json(p.event), key=p.entity_id) for p in payments]


async def send_labels(
    publisher: Publisher, topic: str, payments: Sequence[Payment]
) -> list[asyncio.Future[RecordMetadata]]:
    """Queue the known chargebacks of `payments` (none for a verdict still in the future)."""
    return [
        await publisher.send_raw(topic, _json(p.label), key=p.entity_id)
        for p in payments
        if p.label is not None
    ]


def field_value(value: object) -> object:
    """A request-time value as the Predict API's `FieldValue`."""
    from mlbus.api.inference.v1 import predict_pb2 as ppb

    if isinstance(value, bool):
        return ppb.FieldValue(bool_value=value)
    if isinstance(value, int):
        return ppb.FieldValue(int_value=value)
    if isinstance(value, float):
        return ppb.FieldValue(double_value=value)
    return ppb.FieldValue(string_value=str(value))


class Scorer:
    """The application's side: one Predict call per payment, its event id attached."""

    def __init__(self, address: str, model: str, timeout_s: float) -> None:
        from mlbus.api.inference.v1 import predict_pb2_grpc as ppb_grpc
        from mlbus.api.inference.v2 import grpc_predict_v2_pb2_grpc as oip_grpc

        self.model = model
        self.timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(address)
        self._predict = ppb_grpc.PredictionServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._oip = oip_grpc.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._channel.close()

    async def ready(self, version: int) -> bool:
        from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as oip

        try:
            answer = await self._oip.ModelReady(
                oip.ModelReadyRequest(name=self.model, version=str(version)), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.ready)

    async def score(self, payment: Payment) -> ServedRequest:
        from mlbus.api.inference.v1 import predict_pb2 as ppb

        request = ppb.PredictRequest(
            model_name=self.model,
            entity_ids=[payment.entity_id],
            event_ids=[payment.event_id],
            fields={ref: field_value(v) for ref, v in payment.request_fields.items()},  # type: ignore[misc]
        )
        sent_at = datetime.now(UTC)
        try:
            answer = await self._predict.Predict(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            return ServedRequest(
                index=payment.index,
                sent_at=sent_at,
                answered_at=datetime.now(UTC),
                version=None,
                score=None,
                error=f"{exc.code().name}: {exc.details()}",
            )
        answered_at = datetime.now(UTC)
        prediction = answer.predictions[0]
        probabilities = list(prediction.outputs["probabilities"].values)
        score = probabilities[-1] if probabilities else None
        return ServedRequest(
            index=payment.index,
            sent_at=sent_at,
            answered_at=answered_at,
            version=int(prediction.model_version),
            score=score,
        )


# ── waiting for stored data ──────────────────────────────────────────────────


def stored_rows(spec: ProjectSpec, offline_url: str) -> tuple[int, int]:
    """(payments with feature rows of the scored source's view, labels) in the offline store.

    Distinct ids, not rows: a redelivered record (at-least-once) writes its row
    again, and the trainer de-duplicates, so a row count could run ahead of
    what training will find.
    """
    from mlbus.training import label_files

    offline = OfflineStore(offline_url)
    source = spec.training_source()
    payments = 0
    for view in spec.model_views():
        if spec.features[view].source == source:
            files = offline.files(view, spec.features[view].version)
            payments = _distinct(offline, files, "event_id")
            break
    labels = _distinct(offline, label_files(offline, spec.model.label.source), "label_event_id")
    return payments, labels


def _distinct(offline: OfflineStore, files: Sequence[str], column: str) -> int:
    seen: set[object] = set()
    for path in files:
        try:
            table = pq.read_table(path, columns=[column], filesystem=offline.fs)
        except (OSError, ValueError):  # a file being replaced: counted on the next look
            continue
        seen.update(table.column(column).to_pylist())
    return len(seen)
