"""`run_soak`: the whole stack under steady load for minutes, optionally broken on a
schedule, then every invariant checked against what was really sent.

    report = run_soak(SoakConfig(minutes=10, faults=True), status=print)
    report["invariants"]   # name → {"passed": …, numbers}

Phases: plan the traffic (the demo's scenario, no drift) → start the embedded
stack like `mlbus up` in a fresh data folder (the demo's `EmbeddedStack`, so
every pid and port is known) → the demo's start of the loop (bootstrap
payments and labels, first model trained and served) → live: paced payments
and labels, paced Predict and ModelInfer calls with deadlines, a training
request every `train_every_s` (a version the gates do not promote is promoted
by hand, so reloads happen under load), and with `faults` the schedule of
`_faults` → drain (stop sending; wait until the stores hold what was sent) →
checks → stop everything → nothing left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import random
import signal
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlbus.bus import Publisher
from mlbus.config import MlbusSettings
from mlbus.demo import (
    BusObserver,
    DemoConfig,
    DemoSizes,
    EmbeddedStack,
    LoopContext,
    LoopOptions,
    LoopRecord,
    Payment,
    ScenarioPlan,
    Scorer,
    demo_catalogue,
    plan_scenario,
    start_loop,
)
from mlbus.errors import InvalidInput, MlbusError, RetryableError
from mlbus.events import (
    PREDICTION_LOGGED,
    TrainingCompleted,
    TrainingFailed,
    TrainingRequested,
)
from mlbus.example import fraud_spec_path
from mlbus.featurestore import OfflineStore, OnlineStore
from mlbus.registry_client import RegistryClient
from mlbus.runstate import RunState, pid_alive, read_state
from mlbus.runtime import port_open
from mlbus.spec import ProjectSpec, load_spec

from ._checks import (
    FaultWindow,
    Invariant,
    Mismatch,
    Position,
    RequestOutcome,
    TimedEvent,
    alias_history,
    brute_force,
    compare_values,
    dead_letters,
    exactly_once,
    faults_recovered,
    healthy_since,
    nothing_left,
    online_values,
    recovery_summary,
    requests_answered,
)
from ._faults import (
    STALLS,
    FaultRecord,
    corrupt,
    distinct_copy,
    fault_kinds,
    fault_schedule,
    malformed_records,
    wrong_signature_model,
)
from ._read import (
    first_values,
    label_rows,
    offline_columns,
    offline_rows,
    read_alias_history,
    read_letters,
    read_publications,
    scored_event_ids,
    stored_ids,
)

log = logging.getLogger(__name__)

ACTOR = "mlbus-soak"
CHAMPION = "champion"
CANDIDATE = "soak-candidate"
"""The alias a soak-made version is registered under before it is promoted (no gate, and
no service serves it)."""
LABEL_DELAY_S = 4.0
"""A chargeback follows its payment this long after (longer than the offline flush, as in
the demo: a label before its payment's row would be joined to an older row)."""
WARMUP_S = 10.0
"""Live traffic before the first fault: the steady state the faults break."""
GRACE_S = 3.0
"""A fault's window ends this long after its recovery (stragglers of the fault)."""
HEALTHY_S = 2.0
"""Requests work again once every request sent for this long was answered."""


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 10.0
    """Live traffic lasts this long (with faults: at least one round of every kind)."""
    faults: bool = False
    rate: float = 500.0
    """Events per second sent to the source topics: payments and their labels."""
    requests: float = 300.0
    """Predict and ModelInfer calls per second."""
    seed: int = 7
    deadline_s: float = 2.0
    """The deadline every request carries."""
    slack_s: float = 1.0
    """How far past its deadline a request may return before it counts as late: the
    soak's own event loop, on a busy machine, notices an expired deadline late."""
    train_every_s: float = 90.0
    infer_every: int = 5
    """One request in this many is a ModelInfer (the rest are Predict)."""
    bootstrap: int = 12_000
    data_dir: Path | None = None
    spec_path: Path = field(default_factory=fraud_spec_path)
    fault_gap_s: float = 5.0
    recovery_timeout_s: float = 120.0
    drain_timeout_s: float = 240.0
    start_timeout_s: float = 90.0
    serving_timeout_ms: int | None = None
    """Replaces the spec's `serving.timeout_ms` (the online store's budget in Predict)
    in a copy of the spec in the data folder; None: the spec's own."""


class StatusReporter:
    """The demo's `Reporter` as one-line statuses (its phases and news)."""

    def __init__(self, status: Callable[[str], None], clock: Callable[[], float]) -> None:
        self._status = status
        self._clock = clock

    def phase(self, name: str, total: int | None = None) -> None:
        self._status(f"[{self._clock():6.0f}s] {name}")

    def advance(self, steps: int = 1) -> None:
        return None

    def news(self, text: str) -> None:
        self._status(f"[{self._clock():6.0f}s]   {text}")


@dataclass
class Sent:
    """What the soak sent and the broker acknowledged: the truth the stores are checked
    against."""

    payments: dict[str, tuple[str, TimedEvent]] = field(default_factory=dict)
    """Payment event id → (entity id, the event as the feature service sees it)."""
    labels: set[str] = field(default_factory=set)
    malformed: dict[Position, bytes] = field(default_factory=dict)
    retries: int = 0
    """Deliveries the producer had to send again (the broker failed or timed out)."""


class Delivery:
    """Sends records and sends again the ones whose delivery failed, until acknowledged,
    as a producer that must not lose data would."""

    def __init__(self, publisher: Publisher, sent: Sent) -> None:
        self.publisher = publisher
        self.sent = sent
        self._tasks: set[asyncio.Task[None]] = set()

    def send(
        self,
        topic: str,
        value: bytes,
        key: str,
        on_ack: Callable[[Position], None],
    ) -> None:
        task = asyncio.create_task(self._deliver(topic, value, key, on_ack))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, topic: str, value: bytes, key: str, on_ack: Callable[[Position], None]
    ) -> None:
        while True:
            try:
                future = await self.publisher.send_raw(topic, value, key)
                meta = await future
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # aiokafka's errors share no useful base: retry them all
                self.sent.retries += 1
                log.warning("delivery to %s failed (%s); sending again", topic, exc)
                await asyncio.sleep(0.5)
                continue
            on_ack((topic, meta.partition, meta.offset))
            return

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks))


def _json(event: dict[str, Any]) -> bytes:
    import json

    return json.dumps(event, separators=(",", ":")).encode()


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class InferClient:
    """ModelInfer over the Open Inference Protocol with an all-zeros input of the served
    signature (only numeric inputs: anything else is not cheap to make up)."""

    def __init__(self, address: str, model: str) -> None:
        import grpc.aio

        from mlbus.api.inference.v2 import grpc_predict_v2_pb2_grpc as oip_grpc

        self.model = model
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = oip_grpc.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._request: Any = None

    async def prepare(self) -> str | None:
        """Build the request from the model's metadata; a reason when ModelInfer is skipped."""
        import grpc.aio
        import numpy as np

        from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as oip

        try:
            meta = await self._stub.ModelMetadata(
                oip.ModelMetadataRequest(name=self.model), timeout=5.0
            )
        except grpc.aio.AioRpcError as exc:
            return f"ModelMetadata failed: {exc.code().name}"
        dtypes = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}
        request = oip.ModelInferRequest(model_name=self.model)
        for tensor in meta.inputs:
            if tensor.datatype not in dtypes:
                return f"input {tensor.name} is {tensor.datatype}"
            shape = [1 if d < 0 else int(d) for d in tensor.shape]
            request.inputs.append(
                oip.ModelInferRequest.InferInputTensor(
                    name=tensor.name, datatype=tensor.datatype, shape=shape
                )
            )
            zeros = np.zeros(shape, dtype=dtypes[tensor.datatype])
            request.raw_input_contents.append(zeros.tobytes())
        self._request = request
        return None

    async def infer(self, deadline_s: float) -> tuple[str, int | None, str]:
        """(status name, version answered, what the server said with a failure)."""
        import grpc.aio

        try:
            answer = await self._stub.ModelInfer(self._request, timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, None, exc.details() or ""
        return "OK", int(answer.model_version) if answer.model_version else None, ""

    @property
    def ready(self) -> bool:
        return self._request is not None

    async def close(self) -> None:
        await self._channel.close()


def scrape(port: int | None) -> dict[str, float]:
    """`name{labels}` → value of a service's Prometheus endpoint ({} when it does not answer)."""
    if port is None:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def metric_sum(metrics: dict[str, float], prefix: str, *needles: str) -> float:
    """The sum of the samples named `prefix…` whose name and labels hold every needle (a
    counter's `_created` timestamp is not a count)."""
    return sum(
        value
        for name, value in metrics.items()
        if name.startswith(prefix) and "_created{" not in name and all(n in name for n in needles)
    )


class Soak:
    """One soak run; `run()` returns the report (a JSON-ready dict)."""

    def __init__(self, config: SoakConfig, status: Callable[[str], None]) -> None:
        self.config = config
        self._status = status
        self._t0 = time.monotonic()
        self.reporter = StatusReporter(status, self.now_s)
        self.sent = Sent()
        self.outcomes: list[RequestOutcome] = []
        self.answered: dict[str, float] = {}
        """Predict: scored event id → when its (last) answer came, seconds since the start."""
        self.versions_served: Counter[int] = Counter()
        self.bad_versions: set[int] = set()
        self.faults: list[FaultRecord] = []
        self.training: Counter[str] = Counter()
        self.reload_s: list[float] = []
        self.notes: list[str] = []
        self.pids: set[int] = set()
        self.ports: set[int] = set()
        self.dropped_by_pid: dict[int, float] = {}
        self.inference_kills: list[float] = []
        self._in_flight = 0
        self._requests_tasks: set[asyncio.Task[None]] = set()
        self._unfinished = 0
        self._recent: deque[Payment] = deque(maxlen=2000)
        self._pending_labels: deque[tuple[float, Payment]] = deque()
        self._alias_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._round_done = asyncio.Event()
        self._probe_cards: Iterable[str] = iter(())
        self._live_started_s = 0.0
        self._live_ended_s = 0.0
        self._rng = random.Random(config.seed)

    def now_s(self) -> float:
        return time.monotonic() - self._t0

    def say(self, text: str) -> None:
        self._status(f"[{self.now_s():6.0f}s] {text}")

    # ── the run ──────────────────────────────────────────────────────────────

    def run(self) -> dict[str, Any]:
        config = self.config
        root = config.data_dir or Path(tempfile.mkdtemp(prefix="mlbus-soak-"))
        spec_path = self._spec_copy(config.spec_path.resolve(), root)
        spec = load_spec(spec_path)
        settings = MlbusSettings(data_dir=root.resolve()).model_copy(update={"spec": spec_path})
        self.say(f"data folder {settings.data.root}")
        plan = self._plan(spec)
        stack = EmbeddedStack(
            settings,
            demo_catalogue(DemoConfig(retrain_min_labels=None).service_env()),
            grace_s=15.0,
        )
        self.say("starting broker, Redis and the services")
        report: dict[str, Any] = {}
        error: BaseException | None = None
        try:
            state = stack.start(config.start_timeout_s)
            self._remember(state)
            report = asyncio.run(self._main(spec, plan, settings, stack, state))
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._remember(read_state(settings.data))
            self.say("stopping every process")
            self._remember_pids(stack.child_pids())
            stack.stop()
            left = self._leftovers(settings.data.root)
            report.setdefault("invariants", {})[left.name] = left.as_json()
            report["passed"] = error is None and all(
                i["passed"] for i in report["invariants"].values()
            )
            report["data_dir"] = str(settings.data.root)
            self.report = report
        return report

    def _spec_copy(self, spec_path: Path, root: Path) -> Path:
        """The spec to run: as given, or a copy with the serving budget replaced."""
        if self.config.serving_timeout_ms is None:
            return spec_path
        import yaml

        document = yaml.safe_load(spec_path.read_text())
        serving = document.setdefault("serving", {})
        original = serving.get("timeout_ms")
        serving["timeout_ms"] = self.config.serving_timeout_ms
        copy = root / "soak-spec.yaml"
        root.mkdir(parents=True, exist_ok=True)
        copy.write_text(yaml.safe_dump(document, sort_keys=False))
        self.notes.append(
            f"serving.timeout_ms {self.config.serving_timeout_ms} instead of the spec's "
            f"{original} (a copy of the spec: {copy})"
        )
        return copy

    def _plan(self, spec: ProjectSpec) -> ScenarioPlan:
        config = self.config
        labelled = 0.93  # the example's share of payments with a known verdict (measured)
        payments_per_s = config.rate / (1 + labelled)
        live = math.ceil(payments_per_s * config.minutes * 60 * 1.3) + 1000
        self.say(f"generating {config.bootstrap + live:,} payments (seed {config.seed})")
        sizes = DemoSizes(
            payments=config.bootstrap + live,
            bootstrap=config.bootstrap,
            drift_kind="none",
            drift_age=timedelta(hours=2),
        )
        plan = plan_scenario(spec, sizes, now=datetime.now(UTC), seed=config.seed)
        used = {p.entity_id for p in plan.payments}
        self._probe_cards = (
            card for n in range(999_999, 0, -1) if (card := f"card_{n:06d}") not in used
        )
        return plan

    async def _main(
        self,
        spec: ProjectSpec,
        plan: ScenarioPlan,
        settings: MlbusSettings,
        stack: EmbeddedStack,
        state: RunState,
    ) -> dict[str, Any]:
        config = self.config
        assert state.broker is not None
        assert state.redis is not None
        inference = state.grpc_address("inference")
        registry_address = state.grpc_address("registry")
        if inference is None or registry_address is None:
            raise MlbusError(f"inference or the registry did not start; see {stack.logs}")
        kafka = settings.kafka.model_copy(
            update={"bootstrap_servers": state.broker.bootstrap_servers}
        )
        self.kafka = kafka
        self.spec = spec
        self.plan = plan
        self.settings = settings
        self.stack = stack
        self.view = next(
            v for v in spec.model_views() if spec.features[v].source == spec.training_source()
        )
        self.view_version = spec.features[self.view].version
        async with Publisher(kafka, source="soak") as publisher:
            self.publisher = publisher
            self.delivery = Delivery(publisher, self.sent)
            self.observer = BusObserver(kafka, publisher)
            watching = asyncio.create_task(self.observer.run(), name="soak-observer")
            self.scorer = Scorer(inference, plan.model, config.deadline_s)
            self.infer = InferClient(inference, plan.model)
            self.online = OnlineStore.from_url(state.redis.url, key_prefix=state.redis.key_prefix)
            self.registry = RegistryClient(registry_address, timeout_s=10.0)
            try:
                await self.observer.wait_assigned(30.0)
                ctx = LoopContext(
                    spec=spec,
                    plan=plan,
                    kafka=kafka,
                    inference_address=inference,
                    offline_url=str(settings.data.offline_store),
                    redis_url=state.redis.url,
                    key_prefix=state.redis.key_prefix,
                    logs=stack.logs,
                    options=LoopOptions(),
                    reporter=self.reporter,
                    alive=stack.failed_services,
                )
                record = LoopRecord()
                await start_loop(ctx, publisher, self.observer, self.scorer, record)
                for payment in plan.bootstrap:  # acknowledged: start_loop awaited them
                    self._accept_payment(payment.event_id, payment.entity_id, payment)
                    if payment.label is not None:
                        self.sent.labels.add(self._label_id(payment))
                self._recent.extend(plan.bootstrap[-self._recent.maxlen :])  # type: ignore[operator]
                skipped = await self.infer.prepare()
                if skipped is not None:
                    self.notes.append(f"ModelInfer not called: {skipped}")
                await self._live()
                await self._drain()
                return await self._checks()
            finally:
                self.observer.stop()
                await self.scorer.close()
                await self.infer.close()
                await self.online.aclose()
                await self.registry.close()
                try:
                    async with asyncio.timeout(10):
                        await watching
                except (TimeoutError, asyncio.CancelledError):
                    watching.cancel()

    # ── live traffic ─────────────────────────────────────────────────────────

    async def _live(self) -> None:
        config = self.config
        self._live_started_s = self.now_s()
        end_s = self._live_started_s + config.minutes * 60
        self.say(
            f"live: {config.rate:.0f} events/s, {config.requests:.0f} requests/s for "
            f"{config.minutes:g} min" + (" with faults" if config.faults else "")
        )
        tasks = [
            asyncio.create_task(self._produce(), name="soak-produce"),
            asyncio.create_task(self._request(), name="soak-requests"),
            asyncio.create_task(self._train(), name="soak-train"),
            asyncio.create_task(self._watch(), name="soak-watch"),
            asyncio.create_task(self._report_status(), name="soak-status"),
        ]
        faults = None
        if config.faults:
            faults = asyncio.create_task(self._inject_faults(end_s), name="soak-faults")
        else:
            self._round_done.set()
        try:
            while self.now_s() < end_s or not self._round_done.is_set():
                for task in (*tasks, *([faults] if faults else [])):
                    if task.done() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                failed = self.stack.failed_services()
                if failed:
                    raise MlbusError(f"the supervisor gave up on {', '.join(failed)}")
                await asyncio.sleep(0.5)
        finally:
            self._live_ended_s = self.now_s()
            self._stop.set()
            if faults is not None:
                await asyncio.gather(faults, return_exceptions=True)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _accept_payment(
        self,
        event_id: str,
        entity_id: str,
        payment: Payment | None,
        event: dict[str, Any] | None = None,
    ) -> None:
        body = payment.event if payment is not None else event
        assert body is not None
        time_ms = _ms(payment.event_time) if payment is not None else _parse_ms(body["ts"])
        self.sent.payments[event_id] = (entity_id, TimedEvent(event_id, time_ms, body))

    def _label_id(self, payment: Payment) -> str:
        assert payment.label is not None
        source = self.spec.sources[self._labels_source()]
        assert source.event_id is not None
        return str(payment.label[source.event_id])

    def _labels_source(self) -> str:
        return self.spec.topics()[self.plan.labels_topic]

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

        self.delivery.send(self.plan.payments_topic, _json(payment.event), payment.entity_id, acked)

    def _send_label(self, payment: Payment) -> None:
        assert payment.label is not None
        label_id = self._label_id(payment)
        self.delivery.send(
            self.plan.labels_topic,
            _json(payment.label),
            payment.entity_id,
            lambda _: self.sent.labels.add(label_id),
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
            self.answered[payment.event_id] = self.now_s()

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

    async def _retry(self, call: Callable[[], Awaitable[Any]], timeout_s: float = 120.0) -> Any:
        """`call()` until it does not raise a retryable error (a component is down)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return await call()
            except (RetryableError, TimeoutError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def _until(
        self, check: Callable[[], Awaitable[bool]], timeout_s: float, poll_s: float = 0.2
    ) -> float | None:
        """The time (seconds since start) `check()` first held, None after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if await check():
                    return self.now_s()
            except (MlbusError, TimeoutError, ConnectionError, OSError):
                pass
            await asyncio.sleep(poll_s)
        return None

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

    # ── faults ───────────────────────────────────────────────────────────────

    async def _inject_faults(self, end_s: float) -> None:
        state = read_state(self.settings.data)
        assert state is not None
        kinds = fault_kinds(list(state.services))
        self.kinds = kinds
        schedule = fault_schedule(kinds, self.config.seed)
        await asyncio.sleep(WARMUP_S)
        for injected, kind in enumerate(schedule, start=1):
            if self._round_done.is_set() and self.now_s() > end_s - 20:
                return
            record = FaultRecord(kind, self.now_s())
            self.faults.append(record)
            self.say(f"fault: {kind}")
            try:
                await self._inject(kind, record)
            except Exception as exc:
                record.error = f"{type(exc).__name__}: {exc}"
                log.exception("fault %s", kind)
            if record.recovery_s is not None:
                self.say(f"fault: {kind} recovered in {record.recovery_s:.1f} s")
            else:
                self.say(f"fault: {kind} did NOT recover ({record.error})")
            if injected == len(kinds):
                self._round_done.set()
            await asyncio.sleep(self.config.fault_gap_s)

    async def _inject(self, kind: str, record: FaultRecord) -> None:
        what, _, name = kind.partition(":")
        if what == "kill":
            await self._kill(name, record)
        elif what == "stall":
            await self._stall(name, record)
        elif kind == "malformed":
            await self._malformed(record)
        elif kind == "promote:corrupt":
            await self._promote_corrupt(record)
        elif kind == "promote:wrong-signature":
            await self._promote_wrong_signature(record)
        else:
            raise ValueError(f"unknown fault {kind!r}")

    def _state(self) -> RunState:
        state = read_state(self.settings.data)
        if state is None:
            raise MlbusError("the run state is gone")
        self._remember(state)
        return state

    async def _kill(self, name: str, record: FaultRecord) -> None:
        old = self._state().services[name]
        assert old.pid is not None
        killed_at = self.now_s()
        os.kill(old.pid, signal.SIGKILL)
        if name == "inference":
            self.inference_kills.append(killed_at)
        record.at_s = killed_at

        async def restarted() -> bool:
            now = self._state().services[name]
            return (
                now.pid is not None
                and now.pid != old.pid
                and now.status == "running"
                and pid_alive(now.pid)
            )

        back = await self._until(restarted, self.config.recovery_timeout_s)
        if back is None:
            return
        record.detail["restarted_s"] = round(back - killed_at, 2)
        checks: list[Awaitable[float | None]] = []
        if name in ("ingestion", "features"):
            checks.append(self._pipeline_flows(killed_at))
        elif name == "inference":
            checks.append(self._predict_answers(killed_at))
        elif name == "registry":
            checks.append(self._until(self._registry_answers, self.config.recovery_timeout_s))
        service = self._state().services[name]
        port = service.http_port or service.metrics_port
        if port is not None:
            checks.append(self._until(lambda p=port: _port_open(p), self.config.recovery_timeout_s))  # type: ignore[misc]
        done = await asyncio.gather(*checks)
        if all(t is not None for t in done):
            recovered = max([back, *(t for t in done if t is not None)])
            record.recovered_at_s = recovered
            record.recovery_s = recovered - killed_at

    async def _registry_answers(self) -> bool:
        await self.registry.list_models()
        return True

    async def _stall(self, name: str, record: FaultRecord) -> None:
        state = self._state()
        pid = state.broker.pid if name == "broker" and state.broker else None
        if name == "redis" and state.redis is not None:
            pid = state.redis.pid
        if pid is None:
            raise MlbusError(f"no pid for the embedded {name}")
        seconds = STALLS[name]
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = self.now_s()
        record.detail["stopped_s"] = seconds
        flows, answers = await asyncio.gather(
            self._pipeline_flows(resumed), self._predict_answers(resumed)
        )
        if flows is not None and answers is not None:
            record.recovered_at_s = max(flows, answers)
            record.recovery_s = record.recovered_at_s - resumed

    async def _pipeline_flows(self, since_s: float) -> float | None:
        """When a payment sent after `since_s` (a probe, on a card of its own) reached the
        online store: ingestion and the feature service both work again."""
        card = next(iter(self._probe_cards))
        probes: set[str] = set()
        deadline = time.monotonic() + self.config.recovery_timeout_s
        next_probe = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_probe:
                probes.add(self._send_probe(card))
                next_probe = time.monotonic() + 3.0
            try:
                stored = await self.online.last_event_ids(self.view, self.view_version, [card])
            except (RetryableError, TimeoutError, ConnectionError, OSError):
                stored = {}
            if stored.get(card) in probes:
                return self.now_s()
            await asyncio.sleep(0.2)
        return None

    def _send_probe(self, card: str) -> str:
        template = self.plan.payments[0].event
        source = self.spec.sources[self.spec.topics()[self.plan.payments_topic]]
        assert source.event_id is not None
        event = dict(template)
        event_id = str(uuid.uuid4())
        event[source.event_id] = event_id
        event[source.entity] = card
        event[source.event_time] = (
            datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
        self.delivery.send(
            self.plan.payments_topic,
            _json(event),
            card,
            lambda _, e=event: self._accept_payment(event_id, card, None, e),  # type: ignore[misc]
        )
        return event_id

    async def _predict_answers(self, since_s: float) -> float | None:
        """When requests work again after `since_s`: the start of the first `HEALTHY_S` of
        the soak's own requests all answered (what clients see, not one lucky probe).
        Without a request stream (`requests` 0), when one Predict probe is answered."""
        if self.config.requests <= 0:

            async def answers() -> bool:
                return bool(self._recent) and (await self.scorer.score(self._recent[-1])).ok

            return await self._until(answers, self.config.recovery_timeout_s)
        settle_s = self.config.deadline_s + self.config.slack_s
        deadline = time.monotonic() + self.config.recovery_timeout_s + HEALTHY_S + settle_s
        while time.monotonic() < deadline:
            # Requests sent up to `complete_s` have all returned (each has a deadline).
            complete_s = self.now_s() - settle_s
            found = healthy_since(self.outcomes, since_s, complete_s, HEALTHY_S)
            if found is not None:
                return found
            await asyncio.sleep(0.5)
        return None

    async def _malformed(self, record: FaultRecord) -> None:
        now = datetime.now(UTC)
        samples = {self.plan.payments_topic: self.plan.payments[0].event}
        labelled = next(p for p in self.plan.payments if p.label is not None)
        assert labelled.label is not None
        samples[self.plan.labels_topic] = labelled.label
        before = sum(self.observer.rejected.values())
        count = 0
        for topic, sample in samples.items():
            source = self.spec.sources[self.spec.topics()[topic]]
            for bad in malformed_records(source, sample, now):
                self.delivery.send(
                    topic,
                    bad.value,
                    "soak-malformed",
                    lambda position, v=bad.value: self.sent.malformed.__setitem__(position, v),  # type: ignore[misc]
                )
                count += 1
        sent_at = self.now_s()
        record.detail["records"] = count

        async def all_rejected() -> bool:
            return sum(self.observer.rejected.values()) >= before + count

        done = await self._until(all_rejected, self.config.recovery_timeout_s)
        if done is not None:
            record.recovered_at_s = done
            record.recovery_s = done - sent_at

    async def _refusals(self) -> float:
        state = self._state()
        metrics = await asyncio.to_thread(scrape, state.services["inference"].metrics_port)
        return metric_sum(metrics, "mlbus_inference_reloads", "outcome=refused")

    async def _promote_bad(self, record: FaultRecord, version: int, old: int) -> None:
        """Move the champion to a bad `version`; it must be refused while `old` keeps
        serving; then move the champion back."""
        model = self.plan.model
        self.bad_versions.add(version)
        before = await self._refusals()
        moved_at = self.now_s()
        await self._retry(
            lambda: self.registry.set_alias(
                model, CHAMPION, version, reason=f"soak: {record.kind}", actor=ACTOR
            )
        )

        async def refused() -> bool:
            return await self._refusals() > before

        refused_at = await self._until(refused, self.config.recovery_timeout_s)
        record.detail["refused_by"] = "inference" if refused_at is not None else None
        await self._retry(
            lambda: self.registry.set_alias(
                model, CHAMPION, old, reason="soak: back to the good version", actor=ACTOR
            )
        )

        async def old_serves() -> bool:
            return await self.scorer.ready(old)

        serving = await self._until(old_serves, self.config.recovery_timeout_s)
        if refused_at is not None and serving is not None:
            record.recovered_at_s = max(refused_at, serving)
            record.recovery_s = refused_at - moved_at

    async def _promote_corrupt(self, record: FaultRecord) -> None:
        model = self.plan.model
        async with self._alias_lock:
            champion = await self._retry(lambda: self.registry.resolve_alias(model, CHAMPION))
            try:  # garbage straight to the registry: refused at the door
                await self.registry.register(
                    model, b"\x08\x07soak: not an onnx model", alias=CANDIDATE, actor=ACTOR
                )
                record.detail["registry_refused_garbage"] = False
            except InvalidInput:
                record.detail["registry_refused_garbage"] = True
            # A good model, damaged in the artifact store after it was registered.
            data = await self._retry(
                lambda: self.registry.download_artifact(model, champion.version)
            )
            copy = distinct_copy(data, f"soak corrupt copy {uuid.uuid4()}")
            registered = await self._retry(
                lambda: self.registry.register(
                    model, copy, alias=CANDIDATE, reason="soak: to be corrupted", actor=ACTOR
                )
            )
            path = Path(unquote(urlparse(registered.version.artifact_uri).path))
            await asyncio.to_thread(path.write_bytes, corrupt(copy))
            record.detail["version"] = registered.version.version
            await self._promote_bad(record, registered.version.version, champion.version)

    async def _promote_wrong_signature(self, record: FaultRecord) -> None:
        model = self.plan.model
        async with self._alias_lock:
            champion = await self._retry(lambda: self.registry.resolve_alias(model, CHAMPION))
            try:
                registered = await self._retry(
                    lambda: self.registry.register(
                        model,
                        wrong_signature_model(),
                        alias=CANDIDATE,
                        reason="soak: a model with another signature",
                        actor=ACTOR,
                    )
                )
            except InvalidInput as exc:
                record.detail["refused_by"] = f"registry: {exc}"
                record.recovered_at_s = record.at_s
                record.recovery_s = 0.0
                return
            record.detail["version"] = registered.version.version
            await self._promote_bad(record, registered.version.version, champion.version)

    # ── drain and checks ─────────────────────────────────────────────────────

    async def _drain(self) -> None:
        self.say("drain: last labels, in-flight requests and deliveries")
        for _, payment in list(self._pending_labels):
            self._send_label(payment)
        self._pending_labels.clear()
        await self.delivery.drain()
        await self.publisher.flush()
        async with asyncio.timeout(self.config.deadline_s + self.config.slack_s + 30):
            while self._requests_tasks:
                await asyncio.gather(*list(self._requests_tasks), return_exceptions=True)
        self._unfinished = len(self._requests_tasks)
        self.say("drain: waiting until the stores hold what was sent")
        payments = set(self.sent.payments)
        labels = set(self.sent.labels)
        offline = OfflineStore(str(self.settings.data.offline_store))
        columns = offline_columns(self.spec.view_features(self.view))
        deadline = time.monotonic() + self.config.drain_timeout_s
        while time.monotonic() < deadline:
            rows = await asyncio.to_thread(
                offline_rows, offline, self.view, self.view_version, ["event_id"]
            )
            found = stored_ids(rows)
            stored_labels = stored_ids(
                await asyncio.to_thread(label_rows, offline, self._labels_source())
            )
            missing = len(payments - found) + len(labels - stored_labels)
            if missing == 0:
                break
            self.say(f"drain: {missing:,} events not stored yet")
            await asyncio.sleep(5.0)
        del columns

    async def _checks(self) -> dict[str, Any]:
        self.say("checks: offline store, label log, dead letters, registry, online values")
        config = self.config
        offline = OfflineStore(str(self.settings.data.offline_store))
        features = self.spec.view_features(self.view)
        columns = offline_columns(features)
        rows = await asyncio.to_thread(offline_rows, offline, self.view, self.view_version, columns)
        invariants: list[Invariant] = []
        payments_once = exactly_once(
            "every accepted payment in the offline store exactly once", self.sent.payments, rows
        )
        labels = await asyncio.to_thread(label_rows, offline, self._labels_source())
        labels_once = exactly_once(
            "every accepted label in the label log exactly once", self.sent.labels, labels
        )
        invariants += [payments_once, labels_once]
        invariants.append(dead_letters(self.sent.malformed, await read_letters(self.kafka)))
        windows = [
            FaultWindow(
                f.kind,
                f.at_s,
                (f.recovered_at_s if f.recovered_at_s is not None else math.inf) + GRACE_S,
            )
            for f in self.faults
        ]
        requests = requests_answered(
            self.outcomes, windows, slack_s=config.slack_s, unfinished=self._unfinished
        )
        invariants.append(requests)
        invariants.append(self._bad_never_served())
        invariants.append(await self._prediction_log())
        invariants.append(await self._alias_history())
        invariants.append(await self._online_values(features))
        invariants.append(self._offline_values(rows, columns, features))
        recoveries: dict[str, list[float | None]] = {}
        for fault in self.faults:
            recoveries.setdefault(fault.kind, []).append(fault.recovery_s)
        if config.faults:
            invariants.append(faults_recovered(recoveries, len(getattr(self, "kinds", []))))
        lost = int(payments_once.detail["lost"]) + int(labels_once.detail["lost"])  # type: ignore[call-overload]
        duplicated = int(payments_once.detail["duplicated"]) + int(  # type: ignore[call-overload]
            labels_once.detail["duplicated"]  # type: ignore[call-overload]
        )
        live_s = self._live_ended_s - self._live_started_s
        return {
            "soak": {
                "minutes": config.minutes,
                "faults": config.faults,
                "rate": config.rate,
                "requests": config.requests,
                "deadline_s": config.deadline_s,
                "seed": config.seed,
                "live_s": round(live_s, 1),
            },
            "lost": lost,
            "duplicated": duplicated,
            "events": {
                "payments": len(self.sent.payments),
                "labels": len(self.sent.labels),
                "malformed": len(self.sent.malformed),
                "producer_resends": self.sent.retries,
            },
            "requests": {
                k: requests.detail[k]
                for k in (
                    "requests",
                    "by_method",
                    "answered",
                    "failed",
                    "failed_outside_faults",
                    "late",
                    "unfinished",
                )
            },
            "failed_by_status": requests.detail["failed_by_status"],
            "failed_by_window": requests.detail["failed_by_window"],
            "failure_examples": requests.detail["failure_examples"],
            "recovery_s": recovery_summary(recoveries),
            "timeline": self._timeline(windows),
            "faults": [f.as_json() for f in self.faults],
            "training": dict(self.training),
            "versions_served": {str(k): v for k, v in sorted(self.versions_served.items())},
            "reload_s": [round(s, 2) for s in self.reload_s],
            "notes": sorted(set(self.notes)),
            "invariants": {i.name: i.as_json() for i in invariants},
        }

    def _timeline(self, windows: list[FaultWindow], step_s: float = 10.0) -> list[str]:
        """Requests sent and failed per `step_s` of the live phase, with the faults then."""
        buckets: dict[int, Counter[str]] = {}
        for outcome in self.outcomes:
            bucket = buckets.setdefault(int(outcome.sent_s // step_s), Counter())
            bucket["sent"] += 1
            bucket["failed"] += outcome.status != "OK"
        lines = []
        for index in sorted(buckets):
            start = index * step_s
            during = sorted(
                {w.label for w in windows if w.start_s < start + step_s and w.end_s > start}
            )
            counts = buckets[index]
            lines.append(
                f"{start:5.0f}s sent {counts['sent']:5d} failed {counts['failed']:4d}"
                + (f" [{', '.join(during)}]" if during else "")
            )
        return lines

    def _bad_never_served(self) -> Invariant:
        served = sorted(set(self.versions_served) & self.bad_versions)
        return Invariant(
            "a refused model never answers",
            passed=not served,
            detail={"bad_versions": sorted(self.bad_versions), "served_anyway": served},
        )

    async def _prediction_log(self) -> Invariant:
        """Every answered Predict was logged, or inference counted its drop, or it was
        answered just before inference was killed (its buffer died with it, uncounted)."""
        logged = await scored_event_ids(self.kafka, PREDICTION_LOGGED)
        unlogged = {e: t for e, t in self.answered.items() if e not in logged}
        near_kill = {
            e for e, t in unlogged.items() if any(0 <= k - t <= 10.0 for k in self.inference_kills)
        }
        dropped = sum(self.dropped_by_pid.values())
        unexplained = len(unlogged) - len(near_kill) - dropped
        return Invariant(
            "every answered prediction logged, or its drop counted",
            passed=unexplained <= 0,
            detail={
                "answered_events": len(self.answered),
                "logged": len(self.answered) - len(unlogged),
                "unlogged": len(unlogged),
                "dropped_counted": dropped,
                "answered_within_10s_before_an_inference_kill": len(near_kill),
                "unexplained": max(0, int(unexplained)),
                "unlogged_examples": [
                    {
                        "event_id": e,
                        "answered_at_s": round(t, 2),
                        "next_inference_kill_s": min(
                            (round(k, 2) for k in self.inference_kills if k >= t), default=None
                        ),
                    }
                    for e, t in sorted(unlogged.items(), key=lambda pair: pair[1])[:5]
                ],
            },
        )

    async def _alias_history(self) -> Invariant:
        found: Invariant | None = None
        for _ in range(10):  # the registry's outbox publishes after it commits
            history = await self._retry(lambda: read_alias_history(self.registry, self.plan.model))
            published = await read_publications(self.kafka, self.plan.model)
            found = alias_history(history, published)
            if found.passed:
                return found
            await asyncio.sleep(3.0)
        assert found is not None
        return found

    async def _online_values(self, features: Any) -> Invariant:
        """Each entity's online values, read just after its latest event and now, against a
        recomputation from the payments the broker acknowledged."""
        by_entity: dict[str, list[TimedEvent]] = {}
        for entity, event in self.sent.payments.values():
            by_entity.setdefault(entity, []).append(event)
        fields = list(features)
        mismatches: list[Mismatch] = []
        compared = 0
        now_ms = int(time.time() * 1000)
        for entity, events in by_entity.items():
            latest = max(e.time_ms for e in events)
            for at in (latest + 1, now_ms):
                got = await self._retry(
                    lambda a=at, e=entity: self.online.get(  # type: ignore[misc]
                        self.view, self.view_version, e, at_ms=a
                    )
                )
                expected = brute_force(fields, events, at)
                if at == now_ms:  # raw fields are not re-aged: compared once
                    expected = {f.name: expected[f.name] for f in fields if f.is_aggregate}
                found = got.values if got.found else None
                mismatches += compare_values(entity, expected, found)
                compared += len(expected)
        return online_values(len(by_entity), compared, mismatches)

    def _offline_values(self, rows: Any, columns: list[str], features: Any) -> Invariant:
        """A sample of offline rows against a recomputation: the event's own fields, each
        aggregate over the entity's events strictly before it (ADR 0020)."""
        by_entity: dict[str, list[TimedEvent]] = {}
        for entity, event in self.sent.payments.values():
            by_entity.setdefault(entity, []).append(event)
        names = [f.name for f in features]
        stored = first_values(rows, columns, names)
        sample = self._rng.sample(sorted(self.sent.payments), min(2000, len(self.sent.payments)))
        mismatches: list[Mismatch] = []
        compared = 0
        for event_id in sample:
            entity, event = self.sent.payments[event_id]
            expected = brute_force(features, by_entity[entity], event.time_ms)
            expected.update(
                {f.name: event.fields.get(f.name) for f in features if not f.is_aggregate}
            )
            got = stored.get(event_id)
            mismatches += compare_values(entity, expected, got)  # type: ignore[arg-type]
            compared += len(expected)
        checked = online_values(len(sample), compared, mismatches)
        return Invariant(
            "sampled offline rows equal a brute-force recomputation", checked.passed, checked.detail
        )

    # ── leftovers ────────────────────────────────────────────────────────────

    def _remember(self, state: RunState | None) -> None:
        if state is None:
            return
        self._remember_pids(state.pids().values())
        for service in state.services.values():
            self.ports.update(
                p for p in (service.grpc_port, service.metrics_port, service.http_port) if p
            )
        for url in (
            state.broker.bootstrap_servers if state.broker else None,
            state.redis.url if state.redis else None,
        ):
            if url:
                port = urlparse(url if "://" in url else f"tcp://{url}").port
                if port:
                    self.ports.add(port)

    def _remember_pids(self, pids: Iterable[int]) -> None:
        self.pids.update(pids)

    def _leftovers(self, root: Path) -> Invariant:
        """Processes of this run still alive (by pid, or by this data folder in their
        environment: children of children too) and its ports still open."""
        marker = f"MLBUS_DATA_DIR={root}".encode()
        for _ in range(10):
            alive = {f"pid {pid}" for pid in self.pids if pid_alive(pid)}
            for proc in Path("/proc").glob("[0-9]*"):
                pid = int(proc.name)
                if pid == os.getpid():
                    continue
                with contextlib.suppress(OSError):
                    if marker in (proc / "environ").read_bytes().split(b"\0") and pid_alive(pid):
                        alive.add(f"pid {pid}")
            ports = sorted(p for p in self.ports if port_open("127.0.0.1", p))
            if not alive and not ports:
                break
            time.sleep(1.0)
        return nothing_left(sorted(alive), ports)


def _port_open(port: int) -> Awaitable[bool]:
    return asyncio.to_thread(port_open, "127.0.0.1", port)


def _parse_ms(text: str) -> int:
    return _ms(datetime.fromisoformat(text.replace("Z", "+00:00")))


def run_soak(config: SoakConfig, status: Callable[[str], None]) -> dict[str, Any]:
    """Run one soak; the report, also when an invariant failed (`report["passed"]`)."""
    return Soak(config, status).run()
