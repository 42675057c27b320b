"""The closed loop, driven from outside like an application and a producer would.

Against a running stack (`EmbeddedStack`), `run_loop` plays the scenario:
bootstrap payments and labels → wait until features and labels are stored →
request the first training → wait until inference serves it → stream live
payments (score each over gRPC, then send it; labels follow) while watching the
bus for drift detection, retraining, publication and the reload → summary.

Everything it learns about the loop comes from the bus (control events, read
without a consumer group) and from the scoring answers; it never reads another
service's internals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
import grpc.aio
import pyarrow.parquet as pq
from aiokafka.structs import RecordMetadata

from mlbus.bus import Consumer, Publisher, Received, header
from mlbus.config import KafkaSettings
from mlbus.errors import MlbusError
from mlbus.events import (
    DriftDetected,
    Event,
    IngestRejected,
    ModelPublished,
    TrainingCompleted,
    TrainingFailed,
    TrainingRequested,
)
from mlbus.featurestore import OfflineStore
from mlbus.spec import ProjectSpec

from ._scenario import Payment, ScenarioPlan
from ._summary import Milestones, ServedRequest

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
REQUESTED_BY = "mlbus-demo"
CHAMPION = "champion"
_TRACEPARENT_PARTS = 4


class PhaseFailed(MlbusError):
    """A phase of the demo timed out or could not go on; names the phase and where to look."""

    def __init__(self, phase: str, detail: str) -> None:
        super().__init__(f"{phase}: {detail}")
        self.phase = phase
        self.detail = detail


@dataclass(frozen=True)
class PhaseTimeouts:
    """Seconds each phase may take before the demo gives up (and says which phase)."""

    catch_up_s: float = 180.0
    first_model_s: float = 240.0
    serving_s: float = 60.0
    recovery_s: float = 240.0
    """After the live stream ran out: how long to wait for detection → retrained model serving."""


@dataclass(frozen=True)
class LoopOptions:
    concurrency: int = 16
    """Scoring calls in flight at once (payments are still sent in order)."""
    after_retrain: int = 4_000
    """Stop the live stream once the retrained model answered this many payments."""
    manual_retrain_after: int | None = None
    """Safety net, off by default: request a retraining by hand once this many drifted
    payments were scored and no retraining is running or has put a new model in place
    (the summary says so). None: only the drift service asks for retraining."""
    predict_timeout_s: float = 5.0
    retraining_rate: float | None = 100.0
    """Payments per second from the drift detection until the retrained model serves
    (None: as fast as possible): traffic keeps flowing, but the drifted stream is not
    used up before there is a new model to measure on it."""
    label_delay_s: float = 4.0
    """A chargeback is sent this long after its payment. Longer than the feature service's
    offline flush (2 s here): a label whose payment has no stored feature row yet would be
    joined to the card's previous row by the point-in-time join."""
    timeouts: PhaseTimeouts = field(default_factory=PhaseTimeouts)


class Reporter(Protocol):
    """Where the loop reports progress (the CLI draws Rich progress bars)."""

    def phase(self, name: str, total: int | None = None) -> None: ...
    def advance(self, steps: int = 1) -> None: ...
    def news(self, text: str) -> None: ...


class SilentReporter:
    def phase(self, name: str, total: int | None = None) -> None:
        log.info("phase: %s", name)

    def advance(self, steps: int = 1) -> None:
        return None

    def news(self, text: str) -> None:
        log.info("%s", text)


@dataclass(frozen=True)
class Seen:
    """A control event the demo saw on the bus, with the trace it travelled in."""

    event: Event
    trace_id: str | None


@dataclass
class LoopRecord:
    """What the loop recorded, for `summarize`."""

    served: list[ServedRequest] = field(default_factory=list)
    initial_version: int | None = None
    retrained_version: int | None = None
    retrain_request: TrainingRequested | None = None
    drift: Seen | None = None
    completed: TrainingCompleted | None = None
    published: ModelPublished | None = None
    first_drifted_sent_at: datetime | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)
    drift_requests: int = 0
    manual_retrain: bool = False
    retrained_by: str | None = None
    retrain_trace_id: str | None = None
    """The trace of the training run whose model was promoted."""
    publish_trace_id: str | None = None
    """The trace of the alias move to the retrained version (and of the reload)."""
    manual_request_id: str | None = None
    """The reason of the request whose run put the new model in place (drift, manual)."""
    notes: list[str] = field(default_factory=list)

    def milestones(self) -> Milestones:
        return Milestones(
            first_drifted_sent_at=self.first_drifted_sent_at,
            drift_detected_at=self.drift.event.occurred_at if self.drift else None,
            retrain_requested_at=(
                self.retrain_request.occurred_at if self.retrain_request else None
            ),
            retrain_completed_at=self.completed.occurred_at if self.completed else None,
            new_version_published_at=self.published.occurred_at if self.published else None,
            retrain_duration_s=self.completed.duration_s if self.completed else None,
        )


def trace_id_of(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The trace id of a W3C `traceparent` header, if the record carries one."""
    value = header(headers, "traceparent")
    if value is None:
        return None
    parts = value.split("-")
    return parts[1] if len(parts) == _TRACEPARENT_PARTS and len(parts[1]) == 32 else None


class BusObserver:
    """Every control event of the loop since the topics began (no consumer group)."""

    def __init__(self, kafka: KafkaSettings, publisher: Publisher) -> None:
        self.seen: list[Seen] = []
        self.rejected: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._consumer = Consumer.of_events(
            kafka,
            types=[
                DriftDetected,
                TrainingRequested,
                TrainingCompleted,
                TrainingFailed,
                ModelPublished,
                IngestRejected,
            ],
            group_id=None,
            handler=self._on_event,
            publisher=publisher,
            auto_offset_reset="earliest",
        )

    async def run(self) -> None:
        await self._consumer.run()

    def stop(self) -> None:
        self._consumer.stop()

    async def wait_assigned(self, timeout_s: float) -> None:
        await self._consumer.wait_assigned(timeout_s)

    async def _on_event(self, received: Received[Event]) -> None:
        event = received.payload
        if isinstance(event, IngestRejected):
            source = event.source or event.source_topic
            self.rejected[source] = self.rejected.get(source, 0) + 1
        else:
            self.seen.append(Seen(event, trace_id_of(received.headers)))
        async with self._changed:
            self._changed.notify_all()

    def first(self, kind: type[E], where: Callable[[E], bool] = lambda _: True) -> E | None:
        for seen in self.seen:
            if isinstance(seen.event, kind) and where(seen.event):
                return seen.event
        return None

    def all(self, kind: type[E], where: Callable[[E], bool] = lambda _: True) -> list[E]:
        return [s.event for s in self.seen if isinstance(s.event, kind) and where(s.event)]

    def seen_of(self, event: Event) -> Seen | None:
        return next((s for s in self.seen if s.event is event), None)

    async def wait_for(self, check: Callable[[], E | None], timeout_s: float) -> E | None:
        """The first non-None `check()`, re-evaluated on every new event, or None on timeout."""
        deadline = time.monotonic() + timeout_s
        async with self._changed:
            while (found := check()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))
                except TimeoutError:
                    continue
            return found


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
    """(feature rows of the scored source's views, label rows) in the offline store."""
    from mlbus.training import label_files

    offline = OfflineStore(offline_url)
    source = spec.training_source()
    feature_rows = 0
    for view in spec.model_views():
        if spec.features[view].source != source:
            continue
        files = offline.files(view, spec.features[view].version)
        feature_rows = max(feature_rows, _rows(offline, files))
        break
    labels = _rows(offline, label_files(offline, spec.model.label.source))
    return feature_rows, labels


def _rows(offline: OfflineStore, files: Sequence[str]) -> int:
    total = 0
    for path in files:
        try:
            total += pq.ParquetFile(path, filesystem=offline.fs).metadata.num_rows
        except (OSError, ValueError):  # a file being replaced: counted on the next look
            continue
    return total


# ── the loop ─────────────────────────────────────────────────────────────────


@dataclass
class LoopContext:
    spec: ProjectSpec
    plan: ScenarioPlan
    kafka: KafkaSettings
    inference_address: str
    offline_url: str
    logs: Path
    options: LoopOptions
    reporter: Reporter
    alive: Callable[[], list[str]]
    """Names of services the stack gave up on (crashed too often); checked while waiting."""
    retrain_lookback: timedelta | None = None
    """The fallback request asks for the labels of this last stretch of time, like the
    drift service's requests do (MLBUS_DRIFT_RETRAIN_LOOKBACK_S)."""


async def run_loop(ctx: LoopContext, record: LoopRecord) -> LoopRecord:
    """Play the scenario on the running stack; fills `record` as it goes (also on failure)."""
    async with Publisher(ctx.kafka, source="demo") as publisher:
        observer = BusObserver(ctx.kafka, publisher)
        watching = asyncio.create_task(observer.run(), name="demo-observer")
        scorer = Scorer(ctx.inference_address, ctx.plan.model, ctx.options.predict_timeout_s)
        try:
            await observer.wait_assigned(30.0)
            await _timed(record, "bootstrap", _bootstrap(ctx, publisher))
            await _timed(record, "catch up", _catch_up(ctx, observer))
            await _timed(
                record, "first model", _first_model(ctx, publisher, observer, scorer, record)
            )
            await _timed(record, "live", _live(ctx, publisher, observer, scorer, record))
        finally:
            observer.stop()
            await scorer.close()
            try:
                async with asyncio.timeout(10):
                    await watching
            except (TimeoutError, asyncio.CancelledError):
                watching.cancel()
    return record


async def _timed(record: LoopRecord, name: str, work: object) -> None:
    started = time.monotonic()
    try:
        await work  # type: ignore[misc]
    finally:
        record.phase_seconds[name] = round(time.monotonic() - started, 2)


async def _bootstrap(ctx: LoopContext, publisher: Publisher) -> None:
    plan = ctx.plan
    payments = plan.bootstrap
    ctx.reporter.phase(
        f"sending {len(payments):,} pre-drift payments and their labels", len(payments)
    )
    chunk = 1000
    for start in range(0, len(payments), chunk):
        part = payments[start : start + chunk]
        futures = await send_payments(publisher, plan.payments_topic, part)
        futures += await send_labels(publisher, plan.labels_topic, part)
        await asyncio.gather(*futures)
        ctx.reporter.advance(len(part))


async def _catch_up(ctx: LoopContext, observer: BusObserver) -> None:
    plan = ctx.plan
    payments = len(plan.bootstrap)
    labels = sum(1 for p in plan.bootstrap if p.label is not None)
    ctx.reporter.phase(
        "ingestion → features → offline store (and the label log)", payments + labels
    )
    deadline = time.monotonic() + ctx.options.timeouts.catch_up_s
    done = 0
    while True:
        rejected_payments = observer.rejected.get(_source_name(ctx.spec, plan.payments_topic), 0)
        rejected_labels = observer.rejected.get(_source_name(ctx.spec, plan.labels_topic), 0)
        rows, label_rows = await asyncio.to_thread(stored_rows, ctx.spec, ctx.offline_url)
        now_done = min(rows, payments) + min(label_rows, labels)
        ctx.reporter.advance(now_done - done)
        done = now_done
        if rows >= payments - rejected_payments and label_rows >= labels - rejected_labels:
            if rejected_payments or rejected_labels:
                ctx.reporter.news(
                    f"ingestion rejected {rejected_payments} payments and {rejected_labels} labels "
                    "(see mlbus ingest dlq)"
                )
            return
        _check_services(ctx, "catch up")
        if time.monotonic() > deadline:
            raise PhaseFailed(
                "catch up",
                f"after {ctx.options.timeouts.catch_up_s:.0f} s the offline store holds {rows:,} "
                f"of {payments:,} feature rows and {label_rows:,} of {labels:,} labels; "
                f"see {ctx.logs}/ingestion.log, features.log, trainer.log",
            )
        await asyncio.sleep(0.5)


def _source_name(spec: ProjectSpec, topic: str) -> str:
    return spec.topics().get(topic, topic)


def _check_services(ctx: LoopContext, phase: str) -> None:
    failed = ctx.alive()
    if failed:
        logs = ", ".join(f"{ctx.logs}/{name}.log" for name in failed)
        raise PhaseFailed(phase, f"service(s) {', '.join(failed)} kept crashing; see {logs}")


async def _first_model(
    ctx: LoopContext,
    publisher: Publisher,
    observer: BusObserver,
    scorer: Scorer,
    record: LoopRecord,
) -> None:
    model = ctx.plan.model
    timeout_s = ctx.options.timeouts.first_model_s
    ctx.reporter.phase("training the first model (bootstrap) → registry → inference", None)
    request = TrainingRequested(model=model, reason="bootstrap", requested_by=REQUESTED_BY)
    await publisher.publish(request, key=model)
    outcome = await _wait_watching(
        ctx,
        "first model",
        observer,
        lambda: (
            observer.first(TrainingCompleted, lambda e: e.request_event_id == request.event_id)
            or observer.first(TrainingFailed, lambda e: e.request_event_id == request.event_id)
        ),
        timeout_s,
        f"no training.completed for the bootstrap request within {timeout_s:.0f} s; "
        f"see {ctx.logs}/trainer.log",
    )
    if isinstance(outcome, TrainingFailed):
        raise PhaseFailed(
            "first model",
            f"training failed at {outcome.stage}: {outcome.reason}; see {ctx.logs}/trainer.log",
        )
    assert isinstance(outcome, TrainingCompleted)
    if not outcome.promoted:
        raise PhaseFailed(
            "first model",
            f"v{outcome.version} was not promoted: {outcome.promotion_reason}",
        )
    version = outcome.version
    record.initial_version = version
    auc = outcome.metrics.get("auc")
    ctx.reporter.news(
        f"v{version} trained on {outcome.rows:,} rows in {outcome.duration_s:.1f} s"
        + (f", evaluation AUC {auc:.3f}" if auc is not None else "")
        + " — promoted to champion"
    )
    await _wait_serving(ctx, scorer, version, "first model")


async def _wait_serving(ctx: LoopContext, scorer: Scorer, version: int, phase: str) -> None:
    deadline = time.monotonic() + ctx.options.timeouts.serving_s
    while not await scorer.ready(version):
        _check_services(ctx, phase)
        if time.monotonic() > deadline:
            raise PhaseFailed(
                phase,
                f"inference did not load v{version} within {ctx.options.timeouts.serving_s:.0f} s;"
                f" see {ctx.logs}/inference.log and registry.log",
            )
        await asyncio.sleep(0.2)


async def _wait_watching(
    ctx: LoopContext,
    phase: str,
    observer: BusObserver,
    check: Callable[[], E | None],
    timeout_s: float,
    message: str,
) -> E:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await observer.wait_for(check, min(2.0, max(0.0, deadline - time.monotonic())))
        if found is not None:
            return found
        _check_services(ctx, phase)
        if time.monotonic() >= deadline:
            raise PhaseFailed(phase, message)


async def _live(
    ctx: LoopContext,
    publisher: Publisher,
    observer: BusObserver,
    scorer: Scorer,
    record: LoopRecord,
) -> None:
    plan = ctx.plan
    options = ctx.options
    live = plan.live
    ctx.reporter.phase(
        f"live: scoring up to {len(live):,} payments over gRPC (drift from the "
        f"{plan.drift_at - plan.sizes.bootstrap + 1:,}th)",
        len(live),
    )
    pending_labels: deque[tuple[float, Payment]] = deque()
    watcher = _LoopWatcher(ctx, observer, record)
    for start in range(0, len(live), options.concurrency):
        part = live[start : start + options.concurrency]
        if record.first_drifted_sent_at is None and part[-1].index >= plan.drift_at:
            record.first_drifted_sent_at = datetime.now(UTC)
        # Scored first (the application asks before the payment is final), then sent.
        answers = await asyncio.gather(*(scorer.score(p) for p in part))
        record.served.extend(answers)
        await send_payments(publisher, plan.payments_topic, part)
        sent = time.monotonic()
        pending_labels.extend((sent, p) for p in part)
        due: list[Payment] = []
        while pending_labels and pending_labels[0][0] <= sent - options.label_delay_s:
            due.append(pending_labels.popleft()[1])
        await send_labels(publisher, plan.labels_topic, due)
        ctx.reporter.advance(len(part))
        watcher.update()
        await _maybe_request_by_hand(ctx, publisher, record, watcher)
        if options.retraining_rate and watcher.retraining():
            await asyncio.sleep(len(part) / options.retraining_rate)
        if watcher.enough_after_retrain():
            break
        if watcher.cannot_close():
            break  # every retraining ended without a new model and no fallback will come
        if start % (options.concurrency * 50) == 0:
            _check_services(ctx, "live")
    await send_labels(publisher, plan.labels_topic, [p for _, p in pending_labels])
    await publisher.flush()
    if record.retrained_version is None or not watcher.new_version_served():
        await _wait_recovery(ctx, observer, scorer, record, watcher)


async def _maybe_request_by_hand(
    ctx: LoopContext, publisher: Publisher, record: LoopRecord, watcher: _LoopWatcher
) -> None:
    """The fallback: a manual training request once `manual_retrain_after` drifted payments
    were scored and no retraining is running or has put a new model in place."""
    after = ctx.options.manual_retrain_after
    if after is None or record.manual_retrain or record.retrained_version is not None:
        return
    drifted = sum(1 for r in record.served if r.index >= ctx.plan.drift_at)
    if drifted < after or watcher.retraining():
        return
    lookback = ctx.retrain_lookback
    request = TrainingRequested(
        model=ctx.plan.model,
        reason="manual",
        requested_by=REQUESTED_BY,
        window_start=None if lookback is None else datetime.now(UTC) - lookback,
    )
    record.manual_retrain = True
    record.manual_request_id = request.event_id
    await publisher.publish(request, key=ctx.plan.model)
    ctx.reporter.news(
        f"no retrained model after {after:,} drifted payments: retraining requested by hand"
    )


class _LoopWatcher:
    """Turns what the observer saw into the record's milestones and news, once each."""

    def __init__(self, ctx: LoopContext, observer: BusObserver, record: LoopRecord) -> None:
        self.ctx = ctx
        self.observer = observer
        self.record = record
        self._told: set[str] = set()

    def _news_once(self, key: str, text: str) -> None:
        if key not in self._told:
            self._told.add(key)
            self.ctx.reporter.news(text)

    def _requests(self) -> list[TrainingRequested]:
        model = self.ctx.plan.model
        return self.observer.all(
            TrainingRequested, lambda e: e.model == model and e.reason in ("drift", "manual")
        )

    def update(self) -> None:
        record, observer, model = self.record, self.observer, self.ctx.plan.model
        if record.drift is None:
            seen = next(
                (s for s in observer.seen if isinstance(s.event, DriftDetected)
                 and s.event.model == model),
                None,
            )  # fmt: skip
            if seen is not None and isinstance(seen.event, DriftDetected):
                record.drift = seen
                drifted = sorted(
                    {f"{r.feature} ({r.test})" for r in seen.event.results if r.drifted}
                )
                self.ctx.reporter.news(
                    f"drift detected on v{seen.event.version}: {', '.join(drifted[:4])}"
                    + (f" and {len(drifted) - 4} more" if len(drifted) > 4 else "")
                )
        requests = self._requests()
        record.drift_requests = sum(1 for r in requests if r.reason == "drift")
        if record.retrain_request is None and requests:
            record.retrain_request = requests[0]
        for request in requests:
            cause = f", cause {request.cause_event_id[:8]}…" if request.cause_event_id else ""
            self._news_once(request.event_id, f"training requested ({request.reason}{cause})")
        ids = {r.event_id for r in requests}
        for failed in observer.all(TrainingFailed, lambda e: e.request_event_id in ids):
            text = f"training failed at {failed.stage}: {failed.reason}"
            if failed.event_id not in self._told:
                record.notes.append(text)
            self._news_once(
                failed.event_id, f"retraining failed at {failed.stage}: {failed.reason}"
            )
        for completed in observer.all(
            TrainingCompleted, lambda e: e.request_event_id in ids and e.model == model
        ):
            if completed.event_id in self._told:
                continue
            auc = completed.metrics.get("auc")
            verdict = "promoted" if completed.promoted else "NOT promoted"
            self._news_once(
                completed.event_id,
                f"v{completed.version} trained on {completed.rows:,} rows in "
                f"{completed.duration_s:.1f} s"
                + (f", evaluation AUC {auc:.3f}" if auc is not None else "")
                + f" — {verdict}: {completed.promotion_reason}",
            )
            if record.retrained_version is None:
                record.completed = completed
                # Timings follow the request whose run this is (drift's or the fallback's).
                record.retrain_request = next(
                    (r for r in requests if r.event_id == completed.request_event_id),
                    record.retrain_request,
                )
                if completed.promoted:
                    record.retrained_version = completed.version
                    origin = next(r for r in requests if r.event_id == completed.request_event_id)
                    record.retrained_by = origin.reason
                    record.retrain_request = origin  # the run that put the new model in place
                    seen = observer.seen_of(completed)
                    record.retrain_trace_id = seen.trace_id if seen is not None else None
                else:
                    record.notes.append(
                        f"the retrained v{completed.version} was not promoted: "
                        f"{completed.promotion_reason}"
                    )
        if record.retrained_version is not None and record.published is None:
            published = observer.first(
                ModelPublished,
                lambda e: (
                    e.model == model
                    and e.alias == CHAMPION
                    and e.version == record.retrained_version
                ),
            )
            if published is not None:
                record.published = published
                seen = observer.seen_of(published)
                record.publish_trace_id = seen.trace_id if seen is not None else None
                self.ctx.reporter.news(
                    f"champion moved to v{published.version}; inference reloads it"
                )

    def retraining(self) -> bool:
        """A retraining was asked for and its outcome is not known yet, or its model is
        promoted but not answering yet."""
        self.update()  # the observer may have read new events since the last update
        requests = self._requests()
        ids = {r.event_id for r in requests}
        outcomes = {
            e.request_event_id
            for e in self.observer.all(TrainingCompleted, lambda e: e.request_event_id in ids)
        } | {
            e.request_event_id
            for e in self.observer.all(TrainingFailed, lambda e: e.request_event_id in ids)
        }
        if self.record.retrained_version is not None:
            return not self.new_version_served()
        # One run at a time per model: a request is open until its own outcome is known
        # (the demo's own request too, even before the observer has read it back). A
        # detection alone is not a retraining: the drift service arms it and fires once
        # enough drifted payments are labelled, so the stream must keep its pace until then.
        manual = self.record.manual_request_id
        return any(r.event_id not in outcomes for r in requests) or (
            manual is not None and manual not in outcomes
        )

    def cannot_close(self) -> bool:
        """Drift was detected, every retraining asked for ended without a new model, and
        the demo will not ask for one itself: streaming on would measure nothing new."""
        self.update()
        record = self.record
        fallback_pending = (
            self.ctx.options.manual_retrain_after is not None and not record.manual_retrain
        )
        return (
            record.drift is not None
            and record.retrained_version is None
            and bool(self._requests())
            and not self.retraining()
            and not fallback_pending
        )

    def new_version_served(self) -> bool:
        version = self.record.retrained_version
        return version is not None and any(
            r.version == version for r in reversed(self.record.served)
        )

    def enough_after_retrain(self) -> bool:
        version = self.record.retrained_version
        if version is None:
            return False
        served = sum(1 for r in self.record.served if r.version == version)
        return served >= self.ctx.options.after_retrain


async def _wait_recovery(
    ctx: LoopContext,
    observer: BusObserver,
    scorer: Scorer,
    record: LoopRecord,
    watcher: _LoopWatcher,
) -> None:
    """The stream ran out before the new model served: wait, then say which step is missing."""
    timeout_s = ctx.options.timeouts.recovery_s
    ctx.reporter.phase("live stream sent; waiting for detection → retraining → reload", None)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        watcher.update()
        if record.retrained_version is not None and await scorer.ready(record.retrained_version):
            record.notes.append(
                "the live stream ended before the retrained model answered a payment; "
                "generate more payments (--payments) to measure its accuracy"
            )
            return
        if not watcher.retraining() and (record.drift is not None or record.manual_retrain):
            break  # every retraining asked for has ended without a model in place
        _check_services(ctx, "recovery")
        await asyncio.sleep(0.5)
    watcher.update()
    if record.drift is None and not record.manual_retrain:
        raise PhaseFailed(
            "drift detection",
            f"no mlbus.drift.detected.v1 within {timeout_s:.0f} s after the live stream; "
            f"see {ctx.logs}/drift.log",
        )
    if record.retrain_request is None:
        raise PhaseFailed(
            "retraining request",
            "drift was detected but no mlbus.training.requested.v1 followed; "
            f"see {ctx.logs}/drift.log",
        )
    if record.completed is None:
        raise PhaseFailed(
            "retraining",
            "; ".join(record.notes)
            or f"no training.completed within {timeout_s:.0f} s; see {ctx.logs}/trainer.log",
        )
    if not record.completed.promoted:
        raise PhaseFailed(
            "promotion",
            f"v{record.completed.version} was not promoted: {record.completed.promotion_reason}",
        )
    raise PhaseFailed(
        "reload",
        f"inference did not serve v{record.retrained_version} within {timeout_s:.0f} s; "
        f"see {ctx.logs}/inference.log",
    )
