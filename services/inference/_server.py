"""The inference process: gRPC server, hot reload, prediction log, started and stopped together.

    async with InferenceServer(settings) as server:
        server.port                 # the bound gRPC port
        await server.reloader.apply(publication)

Without a broker (`MLBUS_KAFKA_BOOTSTRAP_SERVERS` unset and no `mlbus up`
running) the server still serves what it is given, but neither follows
publications nor logs predictions, and says so at start.

`serve()` is what a serving process runs (`_run.run()`, behind `python -m
mlbus.inference`, or each worker of `--workers N` via `run_worker()`): the
server until SIGTERM/SIGINT, then a graceful stop (health turns NOT_SERVING,
in-flight calls get `shutdown_grace_s` to finish). A worker names itself in
`ModelInfer` responses (`parameters["mlbus.worker_pid"]`).

The port: a single process binds it exclusively (a second server on the same
port is a clear error, not a silent SO_REUSEPORT share); workers share it.
TLS (and client certificates, `_tls.py`) when `MLBUS_INFERENCE_TLS_*` are set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Self

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from mlbus.api.inference.v1 import predict_pb2, predict_pb2_grpc
from mlbus.api.inference.v2 import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from mlbus.bus import Consumer, Publisher, ensure_topics
from mlbus.errors import ConfigError
from mlbus.events import MODEL_PUBLISHED, PREDICTION_LOGGED, ModelPublished
from mlbus.rpc import (
    ServerLifecycle,
    bind_port,
    server_interceptors,
    stop_on_signals,
    stop_serving,
)
from mlbus.telemetry import setup_telemetry

if TYPE_CHECKING:
    from mlbus.featurestore import OnlineStore
    from mlbus.registry_client import RegistryClient
    from mlbus.spec import ProjectSpec

from ._malloc import limit_malloc_arenas
from ._model import OrtThreads
from ._predict import PREDICT_SERVICE_NAME, PredictionServicer, protects_predict
from ._predlog import PredictionLog
from ._reflection import add_health_and_lazy_reflection
from ._reload import ArtifactFetcher, ModelReloader, RegistryOrFileFetcher
from ._repository import ModelRepository
from ._routing import ShadowRunner
from ._scoring import Scorer
from ._servicer import SERVICE_NAME, InferenceServicer, protects
from ._settings import InferenceSettings
from ._tls import server_credentials

log = logging.getLogger(__name__)

# Per-request RPCs: traced by data-plane sampling (docs/adr/0004), not per call.
DATA_PLANE_METHODS = frozenset({f"/{SERVICE_NAME}/ModelInfer", f"/{PREDICT_SERVICE_NAME}/Predict"})

ASSIGN_TIMEOUT_S = 30.0
"""How long the bootstrap waits for the publication consumer before asking the registry anyway."""


class InferenceServer(ServerLifecycle):
    """Everything the inference service runs. `async with`, or `start()` / `stop()`."""

    def __init__(
        self,
        settings: InferenceSettings,
        *,
        fetcher: ArtifactFetcher | None = None,
        host: str | None = None,
        spec: ProjectSpec | None = None,
        worker: int | None = None,
    ) -> None:
        self.settings = settings
        self.worker = worker
        """Index of this process among `--workers` (None: the only process)."""
        self.spec = spec
        if self.spec is None and settings.spec is not None:
            # Imported here: a worker without a spec does not need yaml and the spec models.
            from mlbus.spec import load_spec

            self.spec = load_spec(settings.spec)  # SpecError (a ConfigError): fail fast
        self.store: OnlineStore | None = None
        if self.spec is not None and settings.redis.url:
            # Imported here: redis costs a worker ~6 MB it needs only for Predict (the
            # package loads pyarrow only for the offline store, never used here).
            from mlbus.featurestore import OnlineStore

            self.store = OnlineStore.from_settings(settings.redis)
        self._host = host or settings.grpc_host
        self.repository = ModelRepository()
        self.registry: RegistryClient | None = None
        if settings.registry_address:
            # Imported here: without a registry a worker does not need its client and protos.
            from mlbus.registry_client import RegistryClient

            token = settings.registry_token
            self.registry = RegistryClient(
                settings.registry_address,
                token=token.get_secret_value() if token else None,
                timeout_s=settings.registry_timeout_s,
                max_message_mb=settings.max_message_mb,
            )
        self.reloader = ModelReloader(
            self.repository,
            fetcher or RegistryOrFileFetcher(self.registry),
            alias=settings.alias,
            models=settings.models,
            threads=OrtThreads(settings.ort_intra_op_threads, settings.ort_inter_op_threads),
            max_tensor_bytes=settings.max_tensor_mb << 20,
        )
        self.reloader.on_swap = self._on_swap
        self._kafka = settings.kafka if settings.kafka.bootstrap_servers else None
        self.prediction_log: PredictionLog | None = None
        if self._kafka is not None and settings.prediction_log:
            self.prediction_log = PredictionLog(
                self._connect_publisher,
                max_records=settings.log_queue_size,
                retry_s=settings.reload_retry_s,
            )
        self._executor = ThreadPoolExecutor(
            settings.worker_threads, thread_name_prefix="mlbus-inference"
        )
        self.shadow: ShadowRunner | None = None
        shadow_on = settings.shadow
        if shadow_on is None:
            shadow_on = self.spec.serving.shadow if self.spec is not None else True
        if shadow_on:
            self.shadow = ShadowRunner(
                self.prediction_log, self._executor, max_in_flight=settings.shadow_max_in_flight
            )
        spec_weights = (
            {self.spec.serving.model: self.spec.serving.canary_weight} if self.spec else {}
        )
        # One scoring core (route, run, log, shadow) behind both protocol surfaces.
        self.scorer = Scorer(
            self.repository,
            alias=settings.alias,
            prediction_log=self.prediction_log,
            shadow=self.shadow,
            executor=self._executor,
            inline_max_elements=settings.inline_max_elements,
            canary_weights={} if settings.canary_weight is not None else spec_weights,
            default_canary_weight=settings.canary_weight or 0.0,
        )
        self.servicer = InferenceServicer(
            self.scorer,
            required_models=settings.models,
            worker_pid=os.getpid() if worker is not None else None,
        )
        self.predictor = PredictionServicer(
            self.scorer,
            spec=self.spec,
            store=self.store,
            max_entities=settings.max_predict_entities,
        )
        self._health = health_aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.following = asyncio.Event()
        """Set once the publication consumer owns its partitions (publications reach us)."""
        self.port: int | None = None

    # ── lifecycle ────────────────────────────────────────────────────────────

    async def start(self) -> Self:
        settings = self.settings
        limit = (settings.max_message_mb + 1) << 20
        server = grpc.aio.server(
            interceptors=server_interceptors(
                settings.token,
                protects=lambda method: protects(method) or protects_predict(method),
                data_plane=DATA_PLANE_METHODS.__contains__,  # sampled, not traced per call
            ),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Workers share the port on purpose; a lone server must own it.
                ("grpc.so_reuseport", 1 if self.worker is not None else 0),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.servicer, server
        )
        predict_pb2_grpc.add_PredictionServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.predictor, server
        )
        self._health = add_health_and_lazy_reflection(
            server,
            (
                grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
                predict_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
            ),
        )
        self.port = _bind(server, self._host, settings)
        if self.store is not None:
            await self._connect_store()
        await server.start()
        self._server = server
        await self._set_health()
        if self.prediction_log is not None:
            self._spawn(self.prediction_log.run(), "prediction-log")
        if self._kafka is not None:
            self._spawn(self._follow_publications(), "publications")
        else:
            log.warning(
                "no Kafka broker configured: not following %s, not logging predictions",
                MODEL_PUBLISHED,
            )
        if self.registry is not None:
            self._spawn(self._bootstrap(), "bootstrap")
        if self.spec is None:
            log.info("no spec (MLBUS_SPEC): Predict answers FAILED_PRECONDITION; OIP serves")
        elif self.store is None:
            log.warning("no Redis configured: Predict answers FAILED_PRECONDITION; OIP serves")
        log.info(
            "inference serving on %s:%d%s%s",
            self._host,
            self.port,
            " (TLS)" if settings.tls_cert_file else "",
            f" as worker {self.worker}" if self.worker is not None else "",
        )
        return self

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish within the grace period. Idempotent."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            await stop_serving(server, self._health, grace)
        if self.shadow is not None:
            await self.shadow.drain(grace)
        if self.prediction_log is not None:
            self.prediction_log.stop()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            if task.get_name() != "prediction-log":
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.registry is not None:
            await self.registry.close()
        store, self.store = self.store, None
        if store is not None:
            await store.aclose()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ── background work ──────────────────────────────────────────────────────

    def _spawn(self, work: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work, name=name)  # type: ignore[arg-type]
        self._tasks.append(task)

    async def _connect_publisher(self) -> Publisher:
        assert self._kafka is not None
        # A failed start() closes what it opened itself: nothing to stop here.
        # Nobody reads the log at once: fewer, larger batches (ADR 0003).
        return await Publisher(self._kafka, source="inference", latency="background").start()

    async def _follow_publications(self) -> None:
        """A broadcast consumer of `ModelPublished`, restarted after broker failures."""
        assert self._kafka is not None
        kafka = self._kafka
        while not self._stopping.is_set():
            try:
                await ensure_topics(kafka, [MODEL_PUBLISHED, PREDICTION_LOGGED])
                async with Publisher(kafka, source="inference") as publisher:
                    consumer = Consumer.of_events(
                        kafka,
                        types=[ModelPublished],
                        group_id=None,  # broadcast: every replica sees every publication
                        handler=self.reloader.on_event,
                        publisher=publisher,
                    )
                    running = asyncio.create_task(consumer.run(), name="publications-consumer")
                    try:
                        # Assigned *and* the start offsets looked up: a publication sent
                        # once `following` is set is consumed, none falls before the start.
                        await consumer.wait_assigned(ASSIGN_TIMEOUT_S)
                        self.following.set()
                        log.info("following %s", MODEL_PUBLISHED)
                        await running
                    finally:
                        consumer.stop()
                        running.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await running
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "not following %s (%s); retrying in %.1fs",
                    MODEL_PUBLISHED,
                    exc,
                    self.settings.reload_retry_s,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.reload_retry_s)

    async def _bootstrap(self) -> None:
        """Ask the registry what the alias points at, once publications are followed."""
        assert self.registry is not None
        if self._kafka is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.following.wait(), ASSIGN_TIMEOUT_S)
        while not self._stopping.is_set():
            try:
                loaded = await self.reloader.bootstrap(self.registry)
                log.info("loaded from the registry: %s", ", ".join(loaded) or "nothing yet")
                return
            except Exception as exc:
                log.warning(
                    "cannot ask the registry at %s (%s); retrying in %.1fs",
                    self.registry.address,
                    exc,
                    self.settings.reload_retry_s,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.reload_retry_s)

    async def _connect_store(self) -> None:
        """Open the first Redis connection now, not inside the first Predict's budget.

        Connecting (and, for a cluster, discovering the slots) costs round trips
        that `serving.timeout_ms` does not allow for: on a busy machine the first
        Predict after start failed UNAVAILABLE although Redis was fine. Redis
        down is not fatal: Predict answers UNAVAILABLE until it comes back.
        """
        assert self.store is not None
        try:
            async with asyncio.timeout(2 * self.settings.redis.socket_timeout_s):
                await self.store.client.ping()
        except Exception as exc:
            log.warning(
                "online store not reachable at start (%s); Predict answers UNAVAILABLE", exc
            )

    async def _on_swap(self) -> None:
        await self._set_health()

    async def _set_health(self) -> None:
        """ "" (the process) serves from the start; the inference service once models are ready.

        A fresh `mlbus up` has no model yet: the process is healthy, ServerReady is false.
        """
        ready = self.servicer.ready()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(
            SERVICE_NAME,
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING,
        )


def _bind(server: grpc.aio.Server, host: str, settings: InferenceSettings) -> int:
    variable = "MLBUS_INFERENCE_GRPC_PORT"
    credentials = server_credentials(settings)
    if credentials is None:
        return bind_port(server, host, settings.grpc_port, variable)
    address = f"{host}:{settings.grpc_port}"
    try:
        # A key that does not match the certificate only fails here, inside gRPC.
        bound = int(server.add_secure_port(address, credentials))
    except RuntimeError as exc:
        bound, reason = 0, f"{exc}; check the TLS certificate and key belong together"
    else:
        reason = "the port is taken"
    if not bound:
        raise ConfigError(
            f"cannot serve gRPC with TLS on {address} ({reason}); set {variable} to a free "
            "port, or 0 to pick one"
        )
    return bound


SUPERVISOR_CHECK_S = 1.0


async def serve(
    settings: InferenceSettings, *, worker: int | None = None, supervisor_pid: int | None = None
) -> None:
    """Run the inference service until SIGTERM or SIGINT (a worker: SIGTERM, or orphaned)."""
    # A worker leaves SIGINT to its supervisor, which relays it as SIGTERM.
    stop = stop_on_signals(
        (signal.SIGTERM,) if worker is not None else (signal.SIGTERM, signal.SIGINT)
    )
    async with InferenceServer(settings, worker=worker):
        if supervisor_pid is None:
            await stop.wait()
        else:
            # A supervisor killed hard cannot relay anything: notice being
            # orphaned (re-parented) and stop, so no worker keeps the port.
            while os.getppid() == supervisor_pid:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SUPERVISOR_CHECK_S)
                if stop.is_set():
                    break
            else:
                log.warning("inference worker %s: supervisor %d is gone", worker, supervisor_pid)
        log.info("inference stopping (grace %.1fs)", settings.shutdown_grace_s)


def run_worker(settings: InferenceSettings, index: int, supervisor_pid: int) -> None:
    """One of `--workers N` processes (spawned by `_workers.WorkerPool`)."""
    limit_malloc_arenas()
    telemetry = setup_telemetry("inference", settings)
    try:
        asyncio.run(serve(settings, worker=index, supervisor_pid=supervisor_pid))
    finally:
        telemetry.shutdown()
