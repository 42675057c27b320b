"""Live traffic: paced payments and labels, paced Predict and ModelInfer calls with
deadlines, periodic training with promotion, and the watcher of pids and drops."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable

from mlbus.demo import (
    Payment,
)
from mlbus.events import (
    TrainingCompleted,
    TrainingFailed,
    TrainingRequested,
)
from mlbus.runstate import read_state

from ._checks import (
    Position,
    RequestOutcome,
)
from ._clients import as_json_bytes, metric_sum, scrape
from ._config import ACTOR, CHAMPION, LABEL_DELAY_S
from ._state import SoakState

log = logging.getLogger(__name__)


class Traffic(SoakState):
    """What a soak sends while it runs."""

    async def _produce(self) -> None:
        """Payments at a steady pace, each one's label `LABEL_DELAY_S` later."""
        plan = self.plan
        live = iter(plan.live)
        labelled = sum(p.label is not None for p in plan.live) / max(1, len(plan.live))
        per_s = self.config.rate / (1 + labelled)
        started = time.monotonic()
        count = 0
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * per_s) - count
            sent = 0
            for payment in itertools.islice(live, max(0, due)):
                self._send_payment(payment)
                sent += 1
            count += sent
            if sent < due:
                self.notes.append("the generated payments ran out before the end")
            now = time.monotonic()
            while self._pending_labels and self._pending_labels[0][0] <= now - LABEL_DELAY_S:
                self._send_label(self._pending_labels.popleft()[1])
            await asyncio.sleep(0.05)

    def _send_payment(self, payment: Payment) -> None:
        def acked(_: Position, p: Payment = payment) -> None:
            self._accept_payment(p.event_id, p.entity_id, p)
            self._recent.append(p)
            if p.label is not None:
                self._pending_labels.append((time.monotonic(), p))

        self.delivery.send(
            self.plan.payments_topic, as_json_bytes(payment.event), payment.entity_id, acked
        )

    async def _request(self) -> None:
        """Predict (and every `infer_every`-th a ModelInfer) at a steady pace, each with a
        deadline; the outcome of every call is kept."""
        config = self.config
        started = time.monotonic()
        issued = 0
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * config.requests) - issued
            for _ in range(max(0, due)):
                issued += 1
                if self.infer.ready and issued % config.infer_every == 0:
                    self._spawn(self._one_infer())
                elif self._recent:
                    payment = self._recent[self._rng.randrange(len(self._recent))]
                    self._spawn(self._one_predict(payment))
            await asyncio.sleep(0.02)

    def _spawn(self, work: Awaitable[None]) -> None:
        self._in_flight += 1

        async def tracked() -> None:
            try:
                await work
            finally:
                self._in_flight -= 1

        task = asyncio.create_task(tracked())
        self._requests_tasks.add(task)
        task.add_done_callback(self._requests_tasks.discard)

    async def _one_predict(self, payment: Payment) -> None:
        sent_s = self.now_s()
        answer = await self.scorer.score(payment)
        elapsed = self.now_s() - sent_s
        status, _, detail = ("OK" if answer.ok else answer.error or "UNKNOWN").partition(": ")
        self.outcomes.append(
            RequestOutcome("Predict", sent_s, elapsed, status, self.config.deadline_s, detail)
        )
        if answer.ok and answer.version is not None:
            self.versions_served[answer.version] += 1
            self.answered[payment.event_id] = (sent_s, self.now_s())

    async def _one_infer(self) -> None:
        sent_s = self.now_s()
        status, version, detail = await self.infer.infer(self.config.deadline_s)
        elapsed = self.now_s() - sent_s
        self.outcomes.append(
            RequestOutcome("ModelInfer", sent_s, elapsed, status, self.config.deadline_s, detail)
        )
        if version is not None:
            self.versions_served[version] += 1

    async def _train(self) -> None:
        """A training request every `train_every_s`, one run at a time."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.config.train_every_s)
            if self._stop.is_set():
                return
            await self._train_once()

    async def _train_once(self) -> None:
        """Ask for a run and wait for it; a version the gates keep out is promoted by hand,
        so the hot reload runs under load during the soak."""
        model = self.plan.model
        request = TrainingRequested(model=model, reason="manual", requested_by=ACTOR)
        await self._retry(lambda: self.publisher.publish(request, key=model))
        self.training["requested"] += 1

        def outcome_of() -> TrainingCompleted | TrainingFailed | None:
            return self.observer.first(
                TrainingCompleted, lambda e: e.request_event_id == request.event_id
            ) or self.observer.first(
                TrainingFailed, lambda e: e.request_event_id == request.event_id
            )

        outcome = await self.observer.wait_for(outcome_of, 600.0)
        if outcome is None:
            self.training["no outcome"] += 1
            return
        if isinstance(outcome, TrainingFailed):
            self.training["failed"] += 1
            self.say(f"training failed at {outcome.stage}: {outcome.reason}")
            return
        assert isinstance(outcome, TrainingCompleted)
        self.training["completed"] += 1
        version = outcome.version
        promoted_at = self.now_s()
        if outcome.promoted:
            self.training["promoted by the gates"] += 1
        else:
            async with self._alias_lock:
                await self._retry(
                    lambda: self.registry.set_alias(
                        model, CHAMPION, version, reason="soak: a reload under load", actor=ACTOR
                    )
                )
            self.training["promoted by hand"] += 1
        served = await self._until(lambda: self.scorer.ready(version), 120.0)
        if served is not None:
            self.reload_s.append(served - promoted_at)
        how = "the gates" if outcome.promoted else "hand"
        self.say(f"v{version} promoted by {how}, serving")

    async def _watch(self) -> None:
        """Every pid and port the stack ever had (for the leftover check), and what
        inference says it dropped from its prediction log (per process: a kill resets it)."""
        while True:
            state = read_state(self.settings.data)
            self._remember(state)
            if state is not None and "inference" in state.services:
                service = state.services["inference"]
                metrics = await asyncio.to_thread(scrape, service.metrics_port)
                if metrics and service.pid is not None:
                    self.dropped_by_pid[service.pid] = metric_sum(
                        metrics, "mlbus_inference_prediction_log_dropped"
                    )
            await asyncio.sleep(2.0)

    async def _report_status(self) -> None:
        last_sent = len(self.sent.payments) + len(self.sent.labels)
        last_requests = 0
        last = time.monotonic()
        while True:
            await asyncio.sleep(10.0)
            now = time.monotonic()
            sent = len(self.sent.payments) + len(self.sent.labels)
            done = len(self.outcomes)
            failed = sum(o.status != "OK" for o in self.outcomes[last_requests:])
            span = now - last
            fault = self.faults[-1] if self.faults else None
            fault_text = ""
            if fault is not None:
                fault_text = f", last fault {fault.kind} " + (
                    f"recovered in {fault.recovery_s:.1f} s"
                    if fault.recovery_s is not None
                    else "recovering"
                )
            self.say(
                f"{(sent - last_sent) / span:5.0f} events/s, {(done - last_requests) / span:4.0f} "
                f"req/s ({failed} failed), in flight {self._in_flight}, versions "
                f"{sorted(self.versions_served)}, faults {len(self.faults)}{fault_text}"
            )
            last_sent, last_requests, last = sent, done, now
