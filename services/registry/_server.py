"""The registry process: database, artifact store, outbox publisher and gRPC server.

    async with RegistryServer(settings) as server:   # migrations run here
        server.port                                   # the bound gRPC port
        ...

`run()` is what `python -m mlbus.registry` calls: settings from the
environment (the broker of a running `mlbus up` found through the data
folder), telemetry, the server, and a clean stop on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Self

import grpc
import grpc.aio
from grpc_health.v1.health import aio as health_aio

from mlbus.api.registry.v1 import registry_pb2_grpc
from mlbus.bus import Publisher
from mlbus.config import KafkaSettings, load_settings
from mlbus.events import Event
from mlbus.onnx_policy import ArtifactPolicy
from mlbus.registry_proto import SERVICE_NAME
from mlbus.rpc import (
    ServerLifecycle,
    add_health_and_reflection,
    bind_port,
    mark_serving,
    server_interceptors,
    stop_on_signals,
    stop_serving,
)
from mlbus.runstate import discover
from mlbus.spec import ModelSpec, load_spec
from mlbus.telemetry import setup_telemetry

from ._artifacts import open_artifact_store
from ._grpc import RegistryServicer, protects
from ._outbox import EventSink, OutboxTiming
from ._service import Registry
from ._settings import RegistrySettings
from ._store import RegistryStore

log = logging.getLogger(__name__)


class LazyPublisher:
    """A `Publisher` started on first use and restarted after a failure.

    The registry serves even while Kafka is down: its events wait in the
    outbox, and this publisher connects when the outbox is next drained.
    """

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._publisher: Publisher | None = None

    async def publish(self, event: Event, key: str | bytes | None = None) -> Any:
        if self._publisher is None:
            # A failed start() closes what it opened itself: nothing to stop here.
            self._publisher = await Publisher(self._kafka, source="registry").start()
        try:
            return await self._publisher.publish(event, key=key)
        except Exception:
            await self.stop()
            raise

    async def stop(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.stop()


def _model_spec(settings: RegistrySettings) -> ModelSpec | None:
    if settings.spec is None:
        log.info("no spec (MLBUS_SPEC): no model has promotion gates; promote explicitly")
        return None
    return load_spec(settings.spec).model


class RegistryServer(ServerLifecycle):
    """Everything the registry runs, started and stopped together."""

    def __init__(
        self,
        settings: RegistrySettings,
        *,
        sink: EventSink | None = None,
        spec: ModelSpec | None = None,
        host: str | None = None,
    ) -> None:
        self.settings = settings
        self._host = host or settings.grpc_host
        self._own_sink = sink is None
        self._sink: EventSink | LazyPublisher = sink or LazyPublisher(settings.kafka)
        self._spec = spec
        self.store: RegistryStore | None = None
        self.registry: Registry | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self.port: int | None = None

    async def start(self) -> Self:
        settings = self.settings
        if settings.kafka.bootstrap_servers is None and self._own_sink:
            settings.kafka.require_bootstrap()  # a clear ConfigError, before anything starts
        artifacts = open_artifact_store(settings.resolved_artifact_store())
        spec = self._spec if self._spec is not None else _model_spec(settings)
        store = RegistryStore(settings.resolved_database_url())
        self.store = store
        await asyncio.to_thread(store.upgrade)
        self.registry = Registry(
            store,
            artifacts,
            self._sink,
            spec=spec,
            max_artifact_bytes=settings.max_artifact_mb << 20,
            policy=ArtifactPolicy(max_tensor_bytes=settings.max_tensor_mb << 20),
            outbox_timing=OutboxTiming(retry_s=settings.outbox_retry_s),
        )
        await self.registry.start()

        limit = (settings.max_artifact_mb + 1) << 20
        server = grpc.aio.server(
            interceptors=server_interceptors(settings.token, protects=protects),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(  # type: ignore[no-untyped-call]
            RegistryServicer(self.registry), server
        )
        self._health = add_health_and_reflection(server, (SERVICE_NAME,))
        self.port = bind_port(server, self._host, settings.grpc_port, "MLBUS_REGISTRY_GRPC_PORT")
        await server.start()
        self._server = server
        await mark_serving(self._health, (SERVICE_NAME,))
        log.info(
            "registry serving on %s:%d (%s database, artifacts in %s)",
            self._host,
            self.port,
            store.backend,
            settings.resolved_artifact_store(),
        )
        return self

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking calls, let in-flight ones finish, flush the outbox. Idempotent."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        server, self._server = self._server, None
        if server is not None:
            await stop_serving(server, self._health, grace)
        registry, self.registry = self.registry, None
        if registry is not None:
            await registry.stop(grace)
        if isinstance(self._sink, LazyPublisher):
            await self._sink.stop()
        store, self.store = self.store, None
        if store is not None:
            store.dispose()


async def serve(settings: RegistrySettings) -> None:
    """Run the registry until SIGTERM or SIGINT."""
    stop = stop_on_signals()
    async with RegistryServer(settings):
        await stop.wait()
        log.info("registry stopping")


def run(settings: RegistrySettings | None = None) -> None:
    """Entry point of `python -m mlbus.registry`."""
    settings = discover(settings or load_settings(RegistrySettings))
    telemetry = setup_telemetry("registry", settings)
    try:
        asyncio.run(serve(settings))
    finally:
        telemetry.shutdown()
