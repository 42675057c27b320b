"""The feature service's process: consume, compute, write online and offline, serve gRPC."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc.aio
from redis.exceptions import LockError

from mlbus.api.features.v1 import features_pb2_grpc as pb_grpc
from mlbus.bus import (
    Consumer,
    Publisher,
    RemadeConsumer,
    RetryPolicy,
    ensure_topics,
    until_done,
)
from mlbus.config import load_settings
from mlbus.errors import RetryableError
from mlbus.events import INGEST_VALIDATED, Event, IngestValidated, PredictionLogged
from mlbus.featurestore import OfflineStore, OnlineStore
from mlbus.redis_failures import REDIS_DOWN
from mlbus.rpc import server_interceptors, start_serving, stop_serving
from mlbus.service import ServiceConsumer, StreamService, run_stream_service
from mlbus.spec import ProjectSpec

from ._consistency import ConsistencyMonitor
from ._flusher import OfflineFlusher
from ._grpc import FeatureServicer
from ._processor import BoundView, FeatureProcessor, FeatureStateLost, bind_views
from ._rebuild import ensure_state
from ._settings import FeaturesSettings

log = logging.getLogger(__name__)
# Redis down, or the rebuild lock lost in a long outage: look at the state again.
_STATE_UNCHECKED: tuple[type[Exception], ...] = (RetryableError, LockError, *REDIS_DOWN)


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
    state_losses: int = 0
    """Times a batch found the state lost in Redis while running (each one rebuilt it)."""
    rebuilt_records: int = 0
    """Records replayed to rebuild the state (at start or after a loss)."""
    state_check_retries: int = 0
    """Times the state could not be checked (Redis down) and was tried again."""

    feed: _StateGuardedFeed | None = None
    """The group consumer behind the state guard (one consumer to the service's shape)."""

    def consumers(self) -> Sequence[ServiceConsumer]:
        # Started means the feature consumer owns its partitions (after any rebuild); the
        # monitor's broadcast consumer may wait for a prediction topic nothing has written.
        return () if self.feed is None else (self.feed,)

    async def run(self) -> None:
        settings = self.settings
        views = bind_views(self.spec, settings.allowed_lateness_s)
        owns_online = self.online is None
        online = self.online or OnlineStore.from_settings(settings.redis)
        self.online = online
        offline = OfflineStore(settings.resolved_offline_url())
        self.processor = FeatureProcessor(views, online, detect_loss=True)
        self.flusher = OfflineFlusher(
            views,
            online,
            offline,
            flush_rows=settings.offline_flush_rows,
            interval_s=settings.offline_flush_interval_s,
        )
        # The validated topic must reach back far enough to rebuild the state (ADR 0012).
        horizon_s = self.spec.replay_horizon_s()
        await ensure_topics(
            settings.kafka, list(self.topics), retention_s=dict.fromkeys(self.topics, horizon_s)
        )
        server: grpc.aio.Server | None = None
        if self.serve_grpc:
            server = grpc.aio.server(interceptors=server_interceptors())
            servicer = FeatureServicer(
                self.spec, online, {view.name: view.aggregator for view in views}
            )
            pb_grpc.add_FeatureServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
            self.grpc_port, health = await start_serving(
                server,
                ("mlbus.features.v1.FeatureService",),
                host=settings.grpc_host,
                port=settings.grpc_port,
                variable="MLBUS_FEATURES_GRPC_PORT",
            )
            log.info("FeatureService listening on port %d", self.grpc_port)
        try:
            async with Publisher(settings.kafka, source="features") as publisher:
                feed = self.feed = _StateGuardedFeed(self, views, online, publisher)
                predictions = self.predictions = self._consistency(publisher)
                flusher = self.flusher
                # The flusher's last, forced flush waits for the consumers' last batch
                # write, so rows of that batch reach Parquet before the service exits.
                beside = {"offline-flush": lambda: flusher.run(self._consumed)}
                if predictions is not None:
                    beside["consistency-flush"] = self._flush_consistency
                # Stopped while Redis was down: the batch's offsets were not committed.
                await self.consume_until_stopped(
                    [feed] if predictions is None else [feed, predictions],
                    stopped_unsaved="feature service stopped with events unwritten",
                    beside=beside,
                )
                if self.monitor is not None:
                    await self.monitor.flush()
        finally:
            if server is not None:
                await stop_serving(server, health, settings.shutdown_grace_s)
            if owns_online:
                await online.aclose()

    async def _consumer_on_state(
        self, views: Sequence[BoundView], online: OnlineStore, publisher: Publisher
    ) -> Consumer[Event] | None:
        """The next group consumer, on a complete state: rebuilt first if Redis lost it
        (ADR 0012, Redis loss). None if the service stopped first."""
        settings = self.settings
        assert self.processor is not None
        rebuild = asyncio.create_task(
            self._ensure_state(views, online, publisher), name="ensure-state"
        )
        stopped = asyncio.create_task(self._stop.wait())
        await asyncio.wait((rebuild, stopped), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not rebuild.done():  # stopped first: a rebuild resumes at the next start
            rebuild.cancel()
            await asyncio.gather(rebuild, return_exceptions=True)
            return None
        rebuilt = rebuild.result()
        if rebuilt is None:  # stopped while Redis was down
            return None
        self.rebuilt_records += rebuilt
        consumer = Consumer.of_events(
            settings.kafka,
            types=[IngestValidated],
            group_id=settings.group_id,
            handler=self.processor.handle,
            publisher=publisher,
            topics=self.topics,
            before_commit=self.processor.flush,  # one Redis write per fetched batch
        )
        self.consumer = consumer  # type: ignore[assignment]
        return consumer

    async def _consume_until_state_lost(
        self, consumer: Consumer[Event], online: OnlineStore
    ) -> bool:
        """Run `consumer`; True when a batch found the state lost, or the watcher found its
        marker gone (the state is rebuilt and another consumer made)."""
        assert self.processor is not None
        lost = asyncio.Event()
        watcher = asyncio.create_task(self._watch_state(online, consumer, lost), name="state-watch")
        try:
            await consumer.run()
        except FeatureStateLost as exc:  # nothing of the batch was written or committed
            log.warning("%s; the consumer restarts after the rebuild", exc)
            self.processor.discard()
            self.state_losses += 1
            return True
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if self._stop.is_set() or not lost.is_set():
            return False
        log.warning("the feature state marker is gone; the consumer restarts after the rebuild")
        self.state_losses += 1
        return True

    async def _watch_state(
        self, online: OnlineStore, consumer: Consumer[Event], lost: asyncio.Event
    ) -> None:
        """Every `state_check_s`, the marker: gone (Redis restarted empty, or `mlbus
        features rebuild` asked for a replay) → stop the consumer, so the state is
        rebuilt even while no event comes to find it."""
        marker = online.keys.state_marker()
        while True:
            await asyncio.sleep(self.settings.state_check_s)
            try:
                present = await online.client.exists(marker)
            except REDIS_DOWN:
                continue  # the batches wait for Redis meanwhile; looked at again next time
            if not present:
                lost.set()
                consumer.stop()
                return

    async def _ensure_state(
        self, views: Sequence[BoundView], online: OnlineStore, publisher: Publisher
    ) -> int | None:
        """`ensure_state` (the records it replayed), tried again with the bus's backoff
        (`until_done`) while Redis is down; None if the service stopped first."""
        rebuilt: list[int] = []

        async def once() -> None:
            rebuilt.append(
                await ensure_state(
                    kafka=self.settings.kafka,
                    group_id=self.settings.group_id,
                    topics=self.topics,
                    views=views,
                    online=online,
                    publisher=publisher,
                )
            )

        def count() -> None:
            self.state_check_retries += 1

        await until_done(
            once,
            policy=RetryPolicy(),
            stopping=self._stop,
            retry_on=_STATE_UNCHECKED,
            what="checking the feature state",
            on_retry=count,
        )
        return rebuilt[0] if rebuilt else None

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
            latency="background",  # it waits for the rows it compares anyway
        )

    async def _flush_consistency(self) -> None:
        """Every `consistency_flush_s`; the last flush is after both consumers stopped."""
        assert self.monitor is not None
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.consistency_flush_s)
            except TimeoutError:
                await self.monitor.flush()


class _StateGuardedFeed(RemadeConsumer[Event]):
    """The feature group's consumers as one `ServiceConsumer`: each runs on a complete
    state, and a new one is made after every rebuild."""

    def __init__(
        self,
        service: FeatureService,
        views: Sequence[BoundView],
        online: OnlineStore,
        publisher: Publisher,
    ) -> None:
        super().__init__()
        self.service, self.views, self.online, self.publisher = service, views, online, publisher

    async def make(self) -> Consumer[Event] | None:
        return await self.service._consumer_on_state(self.views, self.online, self.publisher)

    async def run_one(self, consumer: Consumer[Event]) -> bool:
        return await self.service._consume_until_state_lost(consumer, self.online)


def run(settings: FeaturesSettings | None = None) -> None:
    """Start the feature service and block until SIGTERM/SIGINT."""
    run_stream_service("features", settings or load_settings(FeaturesSettings), FeatureService)
