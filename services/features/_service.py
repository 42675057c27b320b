"""The feature service's process: consume, compute, write online and offline, serve gRPC."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc.aio
from grpc_health.v1 import health_pb2

from mlbus.api.features.v1 import features_pb2_grpc as pb_grpc
from mlbus.bus import Consumer, Publisher, ensure_topics
from mlbus.config import load_settings
from mlbus.events import INGEST_VALIDATED, Event, IngestValidated, PredictionLogged
from mlbus.featurestore import OfflineStore, OnlineStore
from mlbus.rpc import add_health_and_reflection, bind_port, server_interceptors
from mlbus.service import ServiceConsumer, StreamService, run_stream_service
from mlbus.spec import ProjectSpec

from ._consistency import ConsistencyMonitor
from ._flusher import OfflineFlusher
from ._grpc import FeatureServicer
from ._processor import FeatureProcessor, bind_views
from ._settings import FeaturesSettings

log = logging.getLogger(__name__)


@dataclass
class FeatureService(StreamService):
    """The running parts; `run()` until `stop()` (idempotent)."""

    settings: FeaturesSettings
    spec: ProjectSpec
    online: OnlineStore | None = None
    grpc_port: int | None = None
    consumer: Consumer[object] | None = None
    flusher: OfflineFlusher | None = None
    processor: FeatureProcessor | None = None
    monitor: ConsistencyMonitor | None = None
    predictions: Consumer[Event] | None = None
    """The monitor's broadcast consumer of logged predictions (None: consistency off)."""
    serve_grpc: bool = True
    topics: tuple[str, ...] = (INGEST_VALIDATED,)

    def consumers(self) -> Sequence[ServiceConsumer]:
        # Started means the feature consumer owns its partitions; the monitor's broadcast
        # consumer may wait for a prediction topic nothing has written yet.
        return () if self.consumer is None else (self.consumer,)

    async def run(self) -> None:
        settings = self.settings
        views = bind_views(self.spec, settings.allowed_lateness_s)
        owns_online = self.online is None
        online = self.online or OnlineStore.from_settings(settings.redis)
        self.online = online
        offline = OfflineStore(settings.resolved_offline_url())
        self.processor = FeatureProcessor(views, online)
        self.flusher = OfflineFlusher(
            views,
            online,
            offline,
            flush_rows=settings.offline_flush_rows,
            interval_s=settings.offline_flush_interval_s,
        )
        await ensure_topics(settings.kafka, list(self.topics))
        server: grpc.aio.Server | None = None
        if self.serve_grpc:
            server = grpc.aio.server(interceptors=server_interceptors())
            servicer = FeatureServicer(
                self.spec, online, {view.name: view.aggregator for view in views}
            )
            pb_grpc.add_FeatureServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
            health = add_health_and_reflection(server, ("mlbus.features.v1.FeatureService",))
            self.grpc_port = bind_port(
                server, settings.grpc_host, settings.grpc_port, "MLBUS_FEATURES_GRPC_PORT"
            )
            await server.start()
            for name in ("", "mlbus.features.v1.FeatureService"):
                await health.set(name, health_pb2.HealthCheckResponse.SERVING)
            log.info("FeatureService listening on port %d", self.grpc_port)
        try:
            async with Publisher(settings.kafka, source="features") as publisher:
                consumer = Consumer.of_events(
                    settings.kafka,
                    types=[IngestValidated],
                    group_id=settings.group_id,
                    handler=self.processor.handle,
                    publisher=publisher,
                    topics=self.topics,
                    # One Redis write per fetched batch; what a view cannot apply comes
                    # back from it and the bus dead-letters it before the commit.
                    before_commit=self.processor.flush,
                )
                self.consumer = consumer  # type: ignore[assignment]
                predictions = self.predictions = self._consistency(publisher)
                flusher = self.flusher
                # The flusher's last, forced flush waits for the consumers' last batch
                # write, so rows of that batch reach Parquet before the service exits.
                beside = {"offline-flush": lambda: flusher.run(self._consumed)}
                if predictions is not None:
                    beside["consistency-flush"] = self._flush_consistency
                # Stopped while Redis was down: the batch's offsets were not committed.
                await self.consume_until_stopped(
                    [consumer] if predictions is None else [consumer, predictions],
                    stopped_unsaved="feature service stopped with events unwritten",
                    beside=beside,
                )
                if self.monitor is not None:
                    await self.monitor.flush()
        finally:
            if server is not None:
                await health.enter_graceful_shutdown()
                await server.stop(settings.shutdown_grace_s)
            if owns_online:
                await online.aclose()

    def _consistency(self, publisher: Publisher) -> Consumer[Event] | None:
        """The consistency monitor's broadcast consumer of logged predictions (ADR 0020)."""
        settings = self.settings
        if not settings.consistency or self.online is None:
            return None
        assert self.processor is not None
        self.monitor = ConsistencyMonitor(
            self.spec, self.online, wait_s=settings.consistency_wait_s
        )
        self.processor.rows_written = self.monitor.rows_written
        return Consumer.of_events(
            settings.kafka,
            types=[PredictionLogged],
            group_id=None,  # every replica sees every prediction; it compares its own rows
            handler=self.monitor.handle,
            publisher=publisher,
        )

    async def _flush_consistency(self) -> None:
        """Every `consistency_flush_s`; the last flush is after both consumers stopped."""
        assert self.monitor is not None
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.consistency_flush_s)
            except TimeoutError:
                await self.monitor.flush()


def run(settings: FeaturesSettings | None = None) -> None:
    """Start the feature service and block until SIGTERM/SIGINT."""
    run_stream_service("features", settings or load_settings(FeaturesSettings), FeatureService)
