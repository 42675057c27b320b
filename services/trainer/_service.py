"""The trainer's process: training requests in, registered models and outcome events out.

One run per model at a time, in a worker process (spawned, one worker), so the
event loop keeps heartbeating and consuming while scikit-learn works. A request
for a model that is already training is coalesced: however many arrive, one
follow-up run starts when the current one ends, with the newest request.
The request's offset is committed once the request is accepted (ADR 0015).

With a shared search storage, an idle trainer polls it for another replica's
running search of its model, rebuilds the same dataset and runs trials of that
study in its worker until the budget is spent; a request of its own makes it
leave before its next trial (ADR 0023).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from opentelemetry import trace

import mlbus
from mlbus.bus import (
    RETRYABLE,
    Consumer,
    Publisher,
    Received,
    RetryPolicy,
    ensure_topics,
    until_done,
)
from mlbus.config import load_settings
from mlbus.errors import MlbusError
from mlbus.events import (
    INGEST_VALIDATED,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    TRAINING_REQUESTED,
    Event,
    IngestValidated,
    TrainingCompleted,
    TrainingFailed,
    TrainingRequested,
)
from mlbus.parent_death import die_with_parent
from mlbus.registry_client import ModelVersionInfo, RegistryClient
from mlbus.service import ServiceConsumer, StreamService, run_stream_service
from mlbus.spec import ProjectSpec
from mlbus.telemetry import meter
from mlbus.training import (
    JOINABLE_ATTR,
    Fit,
    StageTiming,
    TrainingError,
    TrainingJob,
    TrainingOutcome,
    close_storage,
    fetch_champion,
    open_storage,
    record_version,
    register_outcome,
    request_cancel,
    run_job,
    study_name,
)

from ._joining import SearchJoiner
from ._labels import LabelLog
from ._settings import TrainerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
_tracer = trace.get_tracer("mlbus.trainer")
_meter = meter("mlbus.trainer")
_runs = _meter.create_counter(
    "mlbus.trainer.runs",
    description="training runs finished, by outcome (completed/failed), stage and promotion",
)
_run_duration = _meter.create_histogram(
    "mlbus.trainer.run.duration", unit="s", description="training run wall time, request to outcome"
)
_coalesced = _meter.create_counter(
    "mlbus.trainer.requests.coalesced",
    description="training requests folded into an already pending follow-up run",
)
_rows = _meter.create_histogram(
    "mlbus.trainer.rows", description="rows in the training set of a completed run"
)


def worker_pool(nice: int = 0, threads: int = 1) -> ProcessPoolExecutor:
    """One spawned worker: no fork of the event loop's threads, a crash stays contained.

    The worker dies with the trainer: after a `kill -9` of the trainer it used to live
    on, orphaned, with the multiprocessing resource tracker waiting on it (#25). It
    runs `nice` steps below the trainer (`MLBUS_TRAINER_WORKER_NICE`) and its fits use
    at most `threads` OpenMP/BLAS threads (`MLBUS_TRAINER_WORKER_THREADS`), not the
    libraries' default of one per core.
    """
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(os.getpid(), nice, threads),
    )


def _start_worker(parent_pid: int, nice: int, threads: int) -> None:
    die_with_parent(parent_pid)
    if nice:
        os.nice(nice)
    # threadpoolctl limits only libraries already loaded: load scikit-learn's OpenMP
    # runtime (HistGradientBoosting) and numpy's BLAS first.
    import sklearn.ensemble  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # for the life of the process


@dataclass
class _ModelState:
    running: asyncio.Task[None] | None = None
    pending: Received[Event] | None = None
    coalesced: int = 0
    study: str | None = None
    """The study of the running search, cancelled when a newer request arrives (ADR 0023)."""


@dataclass
class TrainerService(StreamService):
    """The running parts; `run()` until `stop()` (idempotent).

    `executor` (default: one spawned worker process) runs the CPU work; `fit`
    replaces the estimator's fit (a seam for tests; picklable for a process pool).
    """

    settings: TrainerSettings
    spec: ProjectSpec
    executor: Executor | None = None
    fit: Fit | None = None
    schedule_every_s: float | None = None
    """Overrides the spec's `model.schedule_every_min` (tests; None: the spec decides)."""
    replica: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    """This trainer's name in the studies: their creator, and each trial's worker."""
    runs_started: int = 0
    runs_finished: int = 0
    registry_retries: int = 0
    """Registry calls tried again because the registry was unreachable."""
    _states: dict[str, _ModelState] = field(default_factory=dict)
    _publisher: Publisher | None = None
    _consumers: list[Consumer[Event]] = field(default_factory=list)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _search_storage: Any = None
    _storage_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _side_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _labels: LabelLog = field(init=False)
    _joiner: SearchJoiner = field(init=False)

    def __post_init__(self) -> None:
        self._idle.set()
        self._labels = LabelLog(self.settings, self.spec)
        self._joiner = SearchJoiner(self.settings, self.spec, self.replica, self.fit)

    @property
    def searches_joined(self) -> int:
        """Other replicas' searches this trainer ran trials for."""
        return self._joiner.joined

    def consumers(self) -> Sequence[ServiceConsumer]:
        return self._consumers

    async def wait_idle(self, timeout_s: float = 120.0) -> None:
        """Until no run is in progress or pending (tests, graceful stop)."""
        await asyncio.wait_for(self._idle.wait(), timeout_s)

    async def run(self) -> None:
        settings = self.settings
        owns_executor = self.executor is None
        self.executor = self.executor or self._new_worker()
        topics = [TRAINING_REQUESTED, TRAINING_COMPLETED, TRAINING_FAILED]
        if settings.record_labels:
            topics.append(INGEST_VALIDATED)
        await ensure_topics(settings.kafka, topics)
        try:
            async with Publisher(settings.kafka, source="trainer") as publisher:
                self._publisher = publisher
                self._consumers = [
                    Consumer.of_events(
                        settings.kafka,
                        types=[TrainingRequested],
                        group_id=settings.group_id,
                        handler=self._on_request,
                        publisher=publisher,
                        latency="background",
                    )
                ]
                if settings.record_labels:
                    self._consumers.append(
                        Consumer.of_events(
                            settings.kafka,
                            types=[IngestValidated],
                            group_id=settings.labels_group_id,
                            handler=self._labels.on_validated,
                            publisher=publisher,
                            before_commit=self._labels.flush,
                            # A file per fetch made thousands of files a run must read.
                            commit_interval_s=settings.label_flush_interval_s,
                            latency="background",
                        )
                    )
                if self._stop.is_set():
                    return
                self._started.set()
                async with asyncio.TaskGroup() as tasks:
                    for consumer in self._consumers:
                        tasks.create_task(consumer.run(), name=f"consume-{consumer.topics}")
                    if self._schedule_interval_s():
                        tasks.create_task(self._schedule(publisher), name="schedule")
                    if settings.joins_searches():  # ends by itself on stop, its threads done
                        tasks.create_task(self._join_searches(), name="join-searches")
                    await self._stop.wait()
                    self._joiner.leave("the trainer is stopping")
                    for consumer in self._consumers:
                        consumer.stop()
                    for state in self._states.values():
                        state.pending = None
                        if state.running is not None:
                            state.running.cancel()
        finally:
            if owns_executor:
                self.executor.shutdown(wait=False, cancel_futures=True)
            for task in list(self._side_tasks):
                task.cancel()
            close_storage(self._search_storage)
            self._search_storage = None

    # ── requests and coalescing ──────────────────────────────────────────────

    async def _on_request(self, received: Received[Event]) -> None:
        request = received.payload
        if not isinstance(request, TrainingRequested):
            return
        if request.model != self.spec.model.name:
            log.warning("ignoring training request for unknown model %r", request.model)
            return
        state = self._states.setdefault(request.model, _ModelState())
        if state.running is not None:
            if state.pending is not None:
                state.coalesced += 1
                _coalesced.add(1, {"model": request.model})
            state.pending = received  # the newest request wins; one follow-up run at most
            log.info(
                "model %s is training: request %s coalesced into the follow-up run",
                request.model,
                request.event_id,
            )
            if state.study is not None:  # a search is not worth finishing for stale data
                self._cancel_search(state.study, f"superseded by request {request.event_id}")
            return
        self._start(request.model, state, received)

    def _cancel_search(self, study: str, reason: str) -> None:
        """Mark the study cancelled; its workers stop before their next trial."""

        async def cancel() -> None:
            try:
                found = await asyncio.to_thread(
                    request_cancel, await self._storage(), study, reason
                )
                note = "" if found else " (no such study)"
                log.info("search %s cancelled: %s%s", study, reason, note)
            except Exception:
                log.exception("could not cancel search %s", study)

        task = asyncio.create_task(cancel(), name=f"cancel-{study}")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _storage(self) -> Any:
        async with self._storage_lock:  # one storage, however many callers at once
            if self._search_storage is None:
                self._search_storage = await asyncio.to_thread(
                    open_storage, self.settings.resolved_search_storage()
                )
            return self._search_storage

    def _start(self, model: str, state: _ModelState, received: Received[Event]) -> None:
        self._joiner.leave(f"request {received.payload.event_id} for this trainer")
        self.runs_started += 1
        self._idle.clear()
        state.running = asyncio.create_task(self._run_then_follow_up(model, state, received))

    async def _run_then_follow_up(
        self, model: str, state: _ModelState, received: Received[Event]
    ) -> None:
        try:
            await self._train(received, state)
        finally:
            self.runs_finished += 1
            state.running = None
            state.study = None
            follow_up, state.pending = state.pending, None
            if follow_up is not None and not self._stop.is_set():
                self._start(model, state, follow_up)
            elif all(s.running is None for s in self._states.values()):
                self._idle.set()

    # ── one run ──────────────────────────────────────────────────────────────

    async def _train(self, received: Received[Event], state: _ModelState) -> None:
        request = received.payload
        assert isinstance(request, TrainingRequested)
        assert self._publisher is not None
        run_id = uuid.uuid4().hex
        started = time.perf_counter()
        spec = self.spec
        stage = "dataset"
        with _tracer.start_as_current_span(
            "training.run",
            attributes={
                "mlbus.model": request.model,
                "mlbus.run_id": run_id,
                "mlbus.reason": request.reason,
                "mlbus.request_event_id": request.event_id,
            },
        ) as span:
            try:
                async with self._registry() as client:
                    with _tracer.start_as_current_span("training.champion"):
                        champion = await self._with_registry(
                            "reading the champion",
                            lambda: fetch_champion(client, spec.model.name),
                        )
                    searching = spec.model.search is not None
                    job = TrainingJob(
                        spec,
                        self.settings.resolved_offline_url(),
                        request.window_start,
                        request.window_end,
                        champion=champion,
                        code_version=mlbus.__version__,
                        fit=self.fit,
                        run_id=run_id,
                        search_storage_url=(
                            self.settings.resolved_search_storage() if searching else None
                        ),
                        search_n_jobs=self.settings.search_n_jobs,
                        search_threads_per_trial=self.settings.search_threads_per_trial,
                        mlflow_tracking_uri=self.settings.mlflow_tracking_uri,
                        search_worker=self.replica,
                    )
                    if searching:
                        state.study = study_name(spec.model.name, run_id)
                        span.set_attribute("mlbus.search_study", state.study)
                        await self._open_study(job, request)
                    # Labels received since the last commit: the run reads them too.
                    await self._labels.flush()
                    with _tracer.start_as_current_span("training.pipeline"):
                        outcome = await self._run_job(job)
                        _record_stage_spans(outcome.stages)
                    span.set_attribute("mlbus.dataset_fingerprint", outcome.fingerprint)
                    span.set_attribute("mlbus.rows", outcome.trained.rows)
                    stage = "register"
                    with _tracer.start_as_current_span("training.register"):
                        # Safe to repeat: the registry answers a run's version again.
                        registration = await self._with_registry(
                            "registering",
                            lambda: register_outcome(
                                client,
                                spec,
                                outcome,
                                run_id=run_id,
                                code_version=mlbus.__version__,
                                reason=f"trained on request ({request.reason})",
                            ),
                        )
            except TrainingError as exc:
                await self._failed(request, run_id, exc.stage, exc.reason, span)
                return
            except asyncio.CancelledError:
                raise
            except (MlbusError, TimeoutError, ConnectionError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if stage == "dataset":
                    reason = f"registry at {self.settings.registry_address} unreachable: {reason}"
                    stage = "register"
                await self._failed(request, run_id, stage, reason, span)  # type: ignore[arg-type]
                return
            except Exception as exc:  # a bug in a run must not stop the service
                log.exception("training run %s failed unexpectedly", run_id)
                await self._failed(request, run_id, "train", f"{type(exc).__name__}: {exc}", span)
                return
            version = registration.version
            if outcome.search is not None:
                await self._link_version(outcome.search.study, version.version)
            completed = TrainingCompleted(
                model=spec.model.name,
                run_id=run_id,
                request_event_id=request.event_id,
                version=version.version,
                metrics=outcome.trained.all_metrics(),
                dataset_fingerprint=outcome.fingerprint,
                rows=outcome.trained.rows,
                duration_s=time.perf_counter() - started,
                promoted=registration.promoted,
                promotion_reason=_promotion_reason(registration.promoted, version, outcome),
            )
            span.set_attribute("mlbus.version", version.version)
            span.set_attribute("mlbus.promoted", registration.promoted)
            attributes = {"model": spec.model.name, "outcome": "completed"}
            _runs.add(1, {**attributes, "promoted": str(registration.promoted).lower()})
            _run_duration.record(completed.duration_s, attributes)
            _rows.record(outcome.trained.rows, {"model": spec.model.name})
            await self._publisher.publish(completed, key=spec.model.name)
            log.info(
                "trained %s v%d on %d rows in %.1fs (promoted: %s); drift reference: %s",
                spec.model.name,
                version.version,
                outcome.trained.rows,
                completed.duration_s,
                registration.promoted,
                outcome.trained.profile.summary(),
            )
            calibration = outcome.trained.profile.calibration
            if calibration is not None and calibration.alarms:
                log.warning(
                    "%s v%d: its drift reference alarms on held-out training data "
                    "(%s): expect false alarms; see ADR 0022",
                    spec.model.name,
                    version.version,
                    ", ".join(calibration.tests),
                )

    async def _open_study(self, job: TrainingJob, request: TrainingRequested) -> None:
        """Create the run's study before the worker starts, so a newer request can cancel it
        even while the dataset is still loading. On a shared storage it also records what
        another replica needs to join: the spec's fingerprint and the training window (the
        dataset's fingerprint follows once the worker has loaded it)."""
        from mlbus.training import SearchOptions, create_study

        options = SearchOptions(
            study_name=job.search_study(), storage_url=job.search_storage_url, run_id=job.run_id
        )
        attrs: dict[str, Any] = {
            "creator": self.replica,
            "spec_fingerprint": job.spec.fingerprint(),
            "window_start": request.window_start.isoformat() if request.window_start else None,
            "window_end": request.window_end.isoformat() if request.window_end else None,
            JOINABLE_ATTR: self.settings.search_storage is not None,  # shared: others may join
        }
        await asyncio.to_thread(create_study, job.spec, options, attrs)

    async def _link_version(self, study: str, version: int) -> None:
        try:
            await asyncio.to_thread(record_version, await self._storage(), study, version)
        except Exception:  # lineage on the version side is already in the registry
            log.exception("could not record version %d on search %s", version, study)

    def _new_worker(self) -> ProcessPoolExecutor:
        return worker_pool(self.settings.worker_nice, self.settings.worker_threads)

    async def _run_job(self, job: TrainingJob) -> TrainingOutcome:
        assert self.executor is not None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.run_timeout_s):
                return await loop.run_in_executor(self.executor, run_job, job)
        except BrokenProcessPool:
            # The worker died (out of memory?): the next run gets a new one.
            self.executor = self._new_worker()
            raise TrainingError(
                "train", "the training worker process died (out of memory?)"
            ) from None
        except TimeoutError:
            raise TrainingError(
                "train", f"the run took longer than {self.settings.run_timeout_s:.0f}s"
            ) from None

    # ── joining another replica's search ─────────────────────────────────────

    def _busy(self) -> bool:
        return self._joiner.joining or any(s.running is not None for s in self._states.values())

    async def _join_searches(self) -> None:
        """While idle, every `search_join_poll_s`, join a running search of another replica."""
        every_s = self.settings.search_join_poll_s
        while await self._idle_for(every_s):
            if self._busy():
                continue
            try:
                found, refused = await asyncio.to_thread(self._joiner.joinable)
            except Exception:
                log.exception("could not look for searches to join")
                continue
            candidate = self._joiner.pick(found, refused)
            if candidate is not None and not self._busy() and not self._stop.is_set():
                assert self.executor is not None
                try:
                    await self._joiner.join(candidate, self.executor)
                except BrokenProcessPool:
                    self.executor = self._new_worker()
                    log.warning("the worker died while joining search %s", candidate.study)

    async def _with_registry(self, doing: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call`, tried again with the bus's backoff (`until_done`) while the registry is
        unreachable (UNAVAILABLE, a deadline), for `registry_retry_s` or until the service
        stops; then its error stands and the run fails."""
        answer: list[T] = []

        async def once() -> None:
            answer.append(await call())

        def count() -> None:
            self.registry_retries += 1

        error = await until_done(
            once,
            policy=RetryPolicy(),
            stopping=self._stop,
            retry_on=RETRYABLE,  # an unreachable registry: UNAVAILABLE, deadlines
            what=f"{doing} at the registry",
            on_retry=count,
            give_up_after_s=self.settings.registry_retry_s,
        )
        if error is not None:
            raise error  # out of time, or the service stops: the run fails with it
        return answer[0]

    def _registry(self) -> RegistryClient:
        token = self.settings.registry_token
        return RegistryClient(
            self.settings.registry_address,
            token=None if token is None else token.get_secret_value(),
            timeout_s=self.settings.registry_timeout_s,
        )

    async def _failed(
        self,
        request: TrainingRequested,
        run_id: str,
        stage: str,
        reason: str,
        span: trace.Span,
    ) -> None:
        assert self._publisher is not None
        span.set_status(trace.Status(trace.StatusCode.ERROR, reason))
        span.set_attribute("mlbus.failed_stage", stage)
        _runs.add(1, {"model": request.model, "outcome": "failed", "stage": stage})
        log.warning("training of %s failed at %s: %s", request.model, stage, reason)
        await self._publisher.publish(
            TrainingFailed(
                model=request.model,
                run_id=run_id,
                request_event_id=request.event_id,
                stage=stage,  # type: ignore[arg-type]
                reason=reason,
            ),
            key=request.model,
        )

    # ── schedule ─────────────────────────────────────────────────────────────

    async def _idle_for(self, seconds: float) -> bool:
        """Wait `seconds`; False when the service was stopped meanwhile (or before)."""
        if self._stop.is_set():
            return False
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return True
        return False

    def _schedule_interval_s(self) -> float:
        if self.schedule_every_s is not None:
            return self.schedule_every_s
        return (self.spec.model.schedule_every_min or 0) * 60.0

    async def _schedule(self, publisher: Publisher) -> None:
        every_s = self._schedule_interval_s()
        while await self._idle_for(every_s):
            now = datetime.now(UTC)
            request = TrainingRequested(
                model=self.spec.model.name,
                reason="schedule",
                requested_by="mlbus-trainer",
                window_end=None,
                window_start=None,
            )
            try:
                await publisher.publish(request, key=request.model)
                log.info("scheduled training of %s requested at %s", request.model, now)
            except Exception:
                log.exception("could not publish the scheduled training request")


def _record_stage_spans(stages: list[StageTiming]) -> None:
    """The worker's stage timings as child spans of the current (pipeline) span."""
    for stage in stages:
        _tracer.start_span(f"training.{stage.name}", start_time=stage.start_ns).end(
            end_time=stage.end_ns
        )


def _promotion_reason(promoted: bool, version: ModelVersionInfo, outcome: TrainingOutcome) -> str:
    reason = version.gate.reason or ("promoted to champion" if promoted else "kept as a candidate")
    if outcome.champion_problem:
        reason += f" (champion not rescored: {outcome.champion_problem})"
    return reason


def run(settings: TrainerSettings | None = None) -> None:
    """Start the trainer and block until SIGTERM/SIGINT."""
    run_stream_service("trainer", settings or load_settings(TrainerSettings), TrainerService)
