"""The ingestion service: source topics in, `ingest.validated` / `ingest.rejected` out."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

from aiokafka.errors import KafkaError

from mlbus.bus import Consumer, Publisher, RetryPolicy, ensure_topics, raw_decoder
from mlbus.contracts import SourceContracts
from mlbus.errors import ConfigError, RetryableError
from mlbus.events import INGEST_REJECTED, INGEST_VALIDATED
from mlbus.spec import ProjectSpec, load_spec
from mlbus.telemetry import meter

from ._dedupe import NoDedupe, RedisSeenIds, SeenIds
from ._pipeline import _KAFKA_PERMANENT, IngestionPipeline, IngestionStats
from ._records import CachedPartitioner
from ._settings import IngestionSettings

log = logging.getLogger(__name__)

# A consumer that fails on these (a commit or a fetch the broker could not answer) is
# started again from the committed offsets; anything else is a bug and ends the process.
_CONSUMER_FAILURES = (KafkaError, RetryableError, ConnectionError, TimeoutError)


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

    def __init__(
        self,
        settings: IngestionSettings,
        spec: ProjectSpec | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self._retry = retry or RetryPolicy()
        self.spec = spec if spec is not None else spec_of(settings)
        self.contracts = SourceContracts(self.spec)
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._consumer: Consumer[bytes | None] | None = None
        self._pipeline: IngestionPipeline | None = None
        self.consumer_restarts = 0
        self._restarts = meter("mlbus.ingestion").create_counter(
            "mlbus.ingest.consumer_restarts",
            description="source consumers started again after a broker failure",
        )

    @property
    def stats(self) -> IngestionStats:
        return self._pipeline.stats if self._pipeline is not None else IngestionStats()

    def stop(self) -> None:
        self._stop.set()
        if self._pipeline is not None:
            self._pipeline.stop()  # a flush waiting for a dependency gives up
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
        await ensure_topics(
            kafka,
            [*topics, INGEST_VALIDATED, INGEST_REJECTED],
            # long enough to rebuild the feature state from it (ADR 0012, Redis loss)
            retention_s={INGEST_VALIDATED: self.spec.replay_horizon_s()},
        )
        seen = self._seen_ids()
        try:
            if isinstance(seen, RedisSeenIds):
                await seen.ping()  # fail at start, not at the first batch
            async with Publisher(
                kafka, source="ingestion", partitioner=CachedPartitioner()
            ) as publisher:
                pipeline = IngestionPipeline(self.contracts, publisher, seen, retry=self._retry)
                self._pipeline = pipeline
                if self._stop.is_set():
                    return
                log.info(
                    "ingesting %s (group %s, de-duplication horizon %ds)",
                    ", ".join(topics),
                    settings.group_id,
                    settings.dedupe_horizon_s,
                )
                # What was built to start lives as long as the stream: out of the collector's
                # generations (gc.freeze), so full collections scan only what the stream
                # allocates (≈2 µs an event in loadtests/bench_ingestion.py). Undone on the
                # way out, so an embedding process (tests) can collect it all again.
                gc.freeze()
                try:
                    await self._consume_until_stopped(pipeline, publisher)
                finally:
                    gc.unfreeze()
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

    async def _consume_until_stopped(
        self, pipeline: IngestionPipeline, publisher: Publisher
    ) -> None:
        """Run the source consumer; if the broker fails it, start another from the
        committed offsets (the uncommitted records come back, and the de-duplication
        horizon recognises those already published) after a backoff."""
        failures = 0
        while not self._stop.is_set():
            try:
                await self._consume(pipeline, publisher)
                return
            except _KAFKA_PERMANENT:
                raise  # the same record would fail again after every restart
            except _CONSUMER_FAILURES as exc:
                dropped = pipeline.discard()
                if self._stop.is_set():
                    log.info(
                        "stopped while a dependency was failing (%s); %d records stay "
                        "uncommitted and are consumed again on restart",
                        exc,
                        dropped,
                    )
                    return
                failures += 1
                self.consumer_restarts += 1
                self._restarts.add(1)
                delay = self._retry.backoff_s(failures)
                log.warning(
                    "source consumer failed (%s: %s); starting it again from the committed "
                    "offsets in %.1fs (%d uncommitted records will be consumed again)",
                    type(exc).__name__,
                    exc,
                    delay,
                    dropped,
                )
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    continue

    async def _consume(self, pipeline: IngestionPipeline, publisher: Publisher) -> None:
        settings = self.settings
        consumer: Consumer[bytes | None] = Consumer(
            settings.kafka,
            topics=self.contracts.topics,
            group_id=settings.group_id,
            handler=pipeline.handle,
            batch_handler=pipeline.handle_batch,
            decoder=raw_decoder,
            publisher=publisher,
            max_batch=settings.max_batch,
            before_commit=pipeline.flush,
        )
        self._consumer = consumer
        if self._stop.is_set():
            return
        running = asyncio.create_task(consumer.run())
        assigned = asyncio.create_task(consumer.wait_assigned(timeout_s=3600))
        try:
            await asyncio.wait({running, assigned}, return_when=asyncio.FIRST_COMPLETED)
            if assigned.done() and not assigned.cancelled() and not assigned.exception():
                self._ready.set()
        finally:
            assigned.cancel()
            await running
