"""The closed loop, driven from outside like an application and a producer would.

Against a running stack (`EmbeddedStack`), `run_loop` plays the scenario:
bootstrap payments and labels → wait until features and labels are stored →
request the first training → wait until inference serves it → stream live
payments (score each over gRPC, then send it; labels follow) while watching the
bus for drift detection, retraining, publication and the reload → summary.

Everything it learns about the loop comes from the bus (control events, read
without a consumer group) and from the scoring answers; it never reads another
service's internals.

The phases are here; the traffic (payments, labels, scoring, the offline store's
row counts) is in `_traffic`, what is read off the bus and recorded in `_observe`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from mlbus.bus import Publisher
from mlbus.config import KafkaSettings
from mlbus.errors import MlbusError
from mlbus.events import DriftDetected, TrainingCompleted, TrainingFailed, TrainingRequested
from mlbus.featurestore import OnlineStore
from mlbus.spec import ProjectSpec

from ._observe import BusObserver, E, LoopRecord, LoopWatcher
from ._scenario import Payment, ScenarioPlan
from ._summary import ServedRequest
from ._traffic import (
    CausalOrder,
    Scorer,
    send_labels,
    send_payments,
    served_consistency,
    stored_rows,
)

log = logging.getLogger(__name__)

REQUESTED_BY = "mlbus-demo"


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
    experiment_s: float = 120.0
    """Experiment story, after the live stream ran out: how long to wait for the verdict
    (the last labels, the outcomes service's next look) before reporting "not yet"."""
    control_settle_s: float = 15.0
    """Control run (no drift): how long after the last payment a detection still counts
    (the drift service is a few batches behind the scoring)."""


@dataclass(frozen=True)
class LoopOptions:
    concurrency: int = 16
    """Scoring calls in flight at once."""
    lookahead: int = 32
    """Payments of the live stream under way at once; one waiting for its card's previous
    payment (`CausalOrder`) lets the next ones go ahead. Kept small: a payment may
    overtake at most this many, and quiet cards overtaking busy ones reorder the stream
    (measured, seed 7: a lookahead of 512 made ADWIN see `count_1h` fall and rise
    again, a false alarm before any drift)."""
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
    causal_wait_s: float = 2.0
    """At most this long a payment waits for its card's previous payment to be in the
    online store before it is scored (`CausalOrder`)."""
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


# ── the loop ─────────────────────────────────────────────────────────────────


@dataclass
class LoopContext:
    spec: ProjectSpec
    plan: ScenarioPlan
    kafka: KafkaSettings
    inference_address: str
    offline_url: str
    redis_url: str
    key_prefix: str
    logs: Path
    options: LoopOptions
    reporter: Reporter
    alive: Callable[[], list[str]]
    """Names of services the stack gave up on (crashed too often); checked while waiting."""
    experiment: bool = False
    """The experiment story: the retrained version goes out as canary and the stream goes
    on until the outcomes service's verdict is acted on (or the payments run out)."""
    retrain_lookback: timedelta | None = None
    """The fallback request asks for the labels of this last stretch of time, like the
    drift service's requests do (MLBUS_DRIFT_RETRAIN_LOOKBACK_S)."""


async def run_loop(ctx: LoopContext, record: LoopRecord) -> LoopRecord:
    """Play the scenario on the running stack; fills `record` as it goes (also on failure)."""
    async with Publisher(ctx.kafka, source="demo") as publisher:
        observer = BusObserver(ctx.kafka, publisher)
        watching = asyncio.create_task(observer.run(), name="demo-observer")
        scorer = Scorer(ctx.inference_address, ctx.plan.model, ctx.options.predict_timeout_s)
        online = OnlineStore.from_url(ctx.redis_url, key_prefix=ctx.key_prefix)
        try:
            await observer.wait_assigned(30.0)
            await start_loop(ctx, publisher, observer, scorer, record)
            order = _causal_order(ctx, online)
            await _timed(record, "live", _live(ctx, publisher, observer, scorer, order, record))
        finally:
            observer.stop()
            await scorer.close()
            await online.aclose()
            try:
                async with asyncio.timeout(10):
                    await watching
            except (TimeoutError, asyncio.CancelledError):
                watching.cancel()
    return record


async def start_loop(
    ctx: LoopContext,
    publisher: Publisher,
    observer: BusObserver,
    scorer: Scorer,
    record: LoopRecord,
) -> None:
    """The loop's start: bootstrap payments and labels, wait until they are stored, train
    the first model and wait until inference serves it. Shared with the soak
    (`mlbus.soak`), which streams its own traffic afterwards."""
    await _timed(record, "bootstrap", _bootstrap(ctx, publisher))
    await _timed(record, "catch up", _catch_up(ctx, observer))
    await _timed(record, "first model", _first_model(ctx, publisher, observer, scorer, record))


def _causal_order(ctx: LoopContext, online: OnlineStore) -> CausalOrder:
    """Waits on the scored source's view: the one whose `__eid` a payment updates."""
    spec = ctx.spec
    source = spec.training_source()
    view = next(v for v in spec.model_views() if spec.features[v].source == source)
    return CausalOrder(online, view, spec.features[view].version, ctx.options.causal_wait_s)


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
    record.initial_evaluation_auc = auc
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
    order: CausalOrder,
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
    watcher = LoopWatcher(ctx, observer, record)

    scoring = asyncio.Semaphore(options.concurrency)

    async def one(payment: Payment) -> ServedRequest:
        # Scored first (the application asks before the payment is final), then sent;
        # after the card's previous payment is served, as it would be in real time.
        await order.turn(payment)
        try:
            # a control run's "drift point" only splits the segments: nothing drifted is sent
            drifted = plan.sizes.drift_kind != "none" and payment.index >= plan.drift_at
            if record.first_drifted_sent_at is None and drifted:
                record.first_drifted_sent_at = datetime.now(UTC)
            async with scoring:
                answer = await scorer.score(payment)
            await send_payments(publisher, plan.payments_topic, [payment])
        finally:
            order.sent(payment)
        pending_labels.append((time.monotonic(), payment))
        return answer

    upcoming = iter(live)
    in_flight: set[asyncio.Task[ServedRequest]] = set()
    rounds = 0
    try:
        while True:
            for payment in upcoming:
                in_flight.add(asyncio.create_task(one(payment)))
                if len(in_flight) >= options.lookahead:
                    break
            if not in_flight:
                break
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            record.served.extend(task.result() for task in done)
            now = time.monotonic()
            due: list[Payment] = []
            while pending_labels and pending_labels[0][0] <= now - options.label_delay_s:
                due.append(pending_labels.popleft()[1])
            await send_labels(publisher, plan.labels_topic, due)
            ctx.reporter.advance(len(done))
            watcher.update()
            await _maybe_request_by_hand(ctx, publisher, record, watcher)
            if options.retraining_rate and watcher.retraining():
                await asyncio.sleep(len(done) / options.retraining_rate)
            if watcher.experiment_done() if ctx.experiment else watcher.enough_after_retrain():
                break
            if watcher.cannot_close():
                break  # every retraining ended without a new model and no fallback will come
            rounds += 1
            if rounds % 200 == 0:
                _check_services(ctx, "live")
        if in_flight:  # stopping early: what was started is answered and sent
            record.served.extend(await asyncio.gather(*in_flight))
    finally:
        for task in in_flight:
            task.cancel()
        await order.aclose()
    await send_labels(publisher, plan.labels_topic, [p for _, p in pending_labels])
    await publisher.flush()
    record.causal_waits = order.waited
    record.causal_timeouts = order.timed_out
    scored = sum(1 for r in record.served if r.ok)
    record.consistency = await served_consistency(
        order, ctx.spec.features[order.view].feature_names(), scored, wait_s=15.0
    )
    if plan.sizes.drift_kind == "none":
        await _control_settle(ctx, watcher)
    elif record.retrained_version is None or not watcher.new_version_served():
        await _wait_recovery(ctx, observer, scorer, record, watcher)
    _refuse_false_alarm(ctx, record)
    if ctx.experiment and not watcher.experiment_done():
        await _wait_verdict(ctx, watcher)


async def _wait_verdict(ctx: LoopContext, watcher: LoopWatcher) -> None:
    """The experiment story after the stream ran out: the last labels still count, so wait
    a bounded time for the verdict and its action; none is an honest "not yet"."""
    wait_s = ctx.options.timeouts.experiment_s
    ctx.reporter.phase(f"live stream sent; up to {wait_s:.0f} s for the experiment's verdict", None)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not watcher.experiment_done():
        _check_services(ctx, "experiment")
        await asyncio.sleep(0.5)
    if watcher.record.acted is None:
        watcher.record.experiment_waited_s = wait_s


async def _control_settle(ctx: LoopContext, watcher: LoopWatcher) -> None:
    """The control run's end: give the drift service time to judge the last windows."""
    settle_s = ctx.options.timeouts.control_settle_s
    ctx.reporter.phase(f"control run: {settle_s:.0f} s for the drift service's last windows", None)
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline and watcher.record.drift is None:
        watcher.update()
        _check_services(ctx, "control")
        await asyncio.sleep(0.5)
    watcher.update()


def _refuse_false_alarm(ctx: LoopContext, record: LoopRecord) -> None:
    """A detection before any drifted payment was scored is not this drift's: the loop
    would close for the wrong reason, so the run fails and says so."""
    if record.drift is None:
        return
    first = record.first_drifted_sent_at
    detected = record.drift.event.occurred_at
    if first is not None and detected >= first:
        return
    causes = (
        sorted({f"{r.feature} ({r.test})" for r in record.drift.event.results if r.drifted})
        if isinstance(record.drift.event, DriftDetected)
        else []
    )
    when = (
        "on a stream without drift (control run)"
        if ctx.plan.sizes.drift_kind == "none"
        else f"{(first - detected).total_seconds():.1f} s before the first drifted payment"
        if first is not None
        else "before any drifted payment"
    )
    raise PhaseFailed(
        "drift detection",
        f"false alarm: drift detected {when} on {', '.join(causes[:6]) or 'no feature'}; "
        f"see {ctx.logs}/drift.log",
    )


async def _maybe_request_by_hand(
    ctx: LoopContext, publisher: Publisher, record: LoopRecord, watcher: LoopWatcher
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


async def _wait_recovery(
    ctx: LoopContext,
    observer: BusObserver,
    scorer: Scorer,
    record: LoopRecord,
    watcher: LoopWatcher,
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
