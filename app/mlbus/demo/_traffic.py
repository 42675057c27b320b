"""The demo's traffic, as a producer and an application would make it.

Payments and their chargebacks go to the source topics as plain JSON keyed by
the entity id; each live payment is scored over the Predict API first; the
offline store is read to see what the feature service has written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import grpc.aio
import pyarrow.parquet as pq
from aiokafka.structs import RecordMetadata

from mlbus.bus import Publisher
from mlbus.errors import MlbusError
from mlbus.featurestore import OfflineStore, OnlineStore, read_consistency
from mlbus.spec import ProjectSpec

from ._scenario import Payment
from ._summary import Consistency, ServedRequest

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
        # The payment's own time: features are computed as of it, as training rows are
        # (the replay runs days of payments in a minute, so "now" would be days off).
        request.event_time.FromDatetime(payment.event_time)
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


@dataclass(slots=True)
class _Tail:
    """A card's latest payment handed out by `CausalOrder.turn`."""

    event_id: str
    sent: asyncio.Event = field(default_factory=asyncio.Event)
    stored: bool = False


class CausalOrder:
    """Scores a payment only once its card's previous payment is in the online store.

    The replay sends days of payments in minutes, so a card's payments that were
    minutes apart arrive milliseconds apart. In real time, an application scoring
    a payment finds the card's earlier payments already counted; waiting for them
    here keeps the served features what they would have been (ADR 0020). Other
    cards' payments go on meanwhile. A wait longer than `timeout_s` (the previous
    payment was rejected, say) gives up and is counted in `timed_out`.

        await order.turn(payment)   # the card's previous payment is sent and stored
        ... score, send ...
        order.sent(payment)
    """

    def __init__(
        self, store: OnlineStore, view: str, version: int, timeout_s: float, poll_s: float = 0.005
    ) -> None:
        self.store = store
        self.view = view
        self.version = version
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.waited = 0
        self.timed_out = 0
        self._tails: dict[str, _Tail] = {}
        """Card → its latest payment handed out."""
        self._unsent: dict[str, _Tail] = {}
        """Event id → a payment handed out and not yet sent."""
        self._waiting: dict[str, tuple[str, asyncio.Future[None]]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def turn(self, payment: Payment) -> None:
        """Return once the previous payment of the card was sent and is served."""
        card = payment.entity_id
        previous = self._tails.get(card)
        self._tails[card] = self._unsent[payment.event_id] = _Tail(payment.event_id)
        if previous is None or previous.stored:
            return
        self.waited += 1
        await previous.sent.wait()
        future = asyncio.get_running_loop().create_future()
        self._waiting[card] = (previous.event_id, future)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="demo-causal-order")
        try:
            await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            self.timed_out += 1
        finally:
            self._waiting.pop(card, None)
        previous.stored = True

    def sent(self, payment: Payment) -> None:
        tail = self._unsent.pop(payment.event_id, None)
        if tail is not None:
            tail.sent.set()

    async def _poll(self) -> None:
        """One pipelined read of every waiting card's `__eid` per `poll_s`."""
        while self._waiting:
            waiting = dict(self._waiting)
            stored = await self.store.last_event_ids(self.view, self.version, list(waiting))
            for card, (event_id, future) in waiting.items():
                if stored[card] == event_id and not future.done():
                    future.set_result(None)
            await asyncio.sleep(self.poll_s)

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller


async def served_consistency(
    order: CausalOrder, features: Sequence[str], expected_events: int, wait_s: float
) -> Consistency | None:
    """The feature service's consistency counts of the scored view (ADR 0020), read once
    they cover `expected_events` scored payments, or after `wait_s` (rows still on their
    way are then left out, and the count says how many were compared)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            report = await read_consistency(order.store, order.view, order.version, features)
        except MlbusError:
            return None
        if report.events >= expected_events or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    return Consistency(
        view=report.view,
        events=report.events,
        values=report.compared,
        match=report.total("match"),
        lag=report.total("lag"),
        mismatch=report.total("mismatch"),
        match_rate=report.match_rate,
        examples=tuple(
            f"{d.outcome}: {d.entity_id} {d.event_id} {d.feature} served {d.served!r}, "
            f"offline {d.offline!r}"
            for d in report.examples[:3]
        ),
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
