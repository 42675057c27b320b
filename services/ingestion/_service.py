"""The ingestion service: source topics in, `ingest.validated` / `ingest.rejected` out."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mlbus.bus import Consumer, Publisher, ensure_topics, raw_decoder
from mlbus.contracts import SourceContracts
from mlbus.errors import ConfigError
from mlbus.events import INGEST_REJECTED, INGEST_VALIDATED
from mlbus.spec import ProjectSpec, load_spec

from ._dedupe import NoDedupe, RedisSeenIds, SeenIds
from ._pipeline import CachedPartitioner, IngestionPipeline, IngestionStats
from ._settings import IngestionSettings

log = logging.getLogger(__name__)


def spec_of(settings: IngestionSettings) -> ProjectSpec:
    if settings.spec is None:
        raise ConfigError("no project spec: set MLBUS_SPEC to the path of your mlbus.yaml")
    return load_spec(Path(settings.spec))


class IngestionService:
    """Runs until `stop()`; `stop()` is idempotent and lets the batch in hand finish.

    service = IngestionService(settings)
    task = asyncio.create_task(service.run())
    await service.wait_ready()
    ...
    service.stop(); await task
    """

    def __init__(self, settings: IngestionSettings, spec: ProjectSpec | None = None) -> None:
        self.settings = settings
        self.spec = spec if spec is not None else spec_of(settings)
        self.contracts = SourceContracts(self.spec)
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._consumer: Consumer[bytes | None] | None = None
        self._pipeline: IngestionPipeline | None = None

    @property
    def stats(self) -> IngestionStats:
        return self._pipeline.stats if self._pipeline is not None else IngestionStats()

    def stop(self) -> None:
        self._stop.set()
        if self._consumer is not None:
            self._consumer.stop()

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the consumer owns partitions of the source topics."""
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    def _seen_ids(self) -> SeenIds:
        horizon = self.settings.dedupe_horizon_s
        if horizon == 0:
            return NoDedupe()
        redis = self.settings.redis
        return RedisSeenIds(
            redis.require_url(),
            prefix=redis.key_prefix,
            horizon_s=horizon,
            timeout_s=redis.socket_timeout_s,
        )

    async def run(self) -> None:
        settings = self.settings
        kafka = settings.kafka
        topics = self.contracts.topics
        await ensure_topics(kafka, [*topics, INGEST_VALIDATED, INGEST_REJECTED])
        seen = self._seen_ids()
        try:
            if isinstance(seen, RedisSeenIds):
                await seen.ping()  # fail at start, not at the first batch
            async with Publisher(
                kafka, source="ingestion", partitioner=CachedPartitioner()
            ) as publisher:
                pipeline = IngestionPipeline(self.contracts, publisher, seen)
                consumer: Consumer[bytes | None] = Consumer(
                    kafka,
                    topics=topics,
                    group_id=settings.group_id,
                    handler=pipeline.handle,
                    batch_handler=pipeline.handle_batch,
                    decoder=raw_decoder,
                    publisher=publisher,
                    max_batch=settings.max_batch,
                    before_commit=pipeline.flush,
                )
                self._pipeline, self._consumer = pipeline, consumer
                if self._stop.is_set():
                    return
                log.info(
                    "ingesting %s (group %s, de-duplication horizon %ds)",
                    ", ".join(topics),
                    settings.group_id,
                    settings.dedupe_horizon_s,
                )
                running = asyncio.create_task(consumer.run())
                assigned = asyncio.create_task(consumer.wait_assigned(timeout_s=3600))
                try:
                    await asyncio.wait({running, assigned}, return_when=asyncio.FIRST_COMPLETED)
                    if assigned.done() and not assigned.cancelled() and not assigned.exception():
                        self._ready.set()
                finally:
                    assigned.cancel()
                    await running
        finally:
            self._consumer = None
            await seen.close()
        stats = self.stats
        log.info(
            "ingestion stopped: %d accepted, %d rejected, %d duplicates",
            stats.accepted,
            stats.rejected,
            stats.duplicates,
        )
