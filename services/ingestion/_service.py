"""The ingestion service: source topics in, `ingest.validated` / `ingest.rejected` out."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from pathlib import Path

from aiokafka.errors import KafkaError

from mlbus.bus import (
    Consumer,
    Publisher,
    RemadeConsumer,
    RetryPolicy,
    ensure_topics,
    raw_decoder,
)
from mlbus.config import load_settings
from mlbus.contracts import SourceContracts
from mlbus.errors import ConfigError, RetryableError
from mlbus.events import INGEST_REJECTED, INGEST_VALIDATED
from mlbus.service import StreamService, run_stream_service
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


class RestartingConsumer(RemadeConsumer[bytes | None]):
    """The source consumer, started again when the broker fails it (a commit or a fetch
    it could not answer): from the committed offsets, after the policy's backoff. The
    uncommitted records come back, and the de-duplication horizon recognises those
    already published. Work that fails is retried by the consumer itself; this only
    replaces a consumer the broker ended."""

    def __init__(
        self,
        make: Callable[[], Consumer[bytes | None]],
        *,
        discard: Callable[[], int],
        retry: RetryPolicy,
    ) -> None:
        super().__init__()
        self._make = make
        self._discard = discard  # what the ended consumer had queued and not committed
        self._retry = retry
        self._failures = 0
        self.restarts = 0
        self._restarts = meter("mlbus.ingestion").create_counter(
            "mlbus.ingest.consumer_restarts",
            description="source consumers started again after a broker failure",
        )

    async def make(self) -> Consumer[bytes | None]:
        return self._make()

    async def run_one(self, consumer: Consumer[bytes | None]) -> bool:
        try:
            await consumer.run()
            return False
        except _KAFKA_PERMANENT:
            raise  # the same record would fail again after every restart
        except _CONSUMER_FAILURES as exc:
            dropped = self._discard()
            if self.stopping.is_set():
                log.info(
                    "stopped while a dependency was failing (%s); %d records stay "
                    "uncommitted and are consumed again on restart",
                    exc,
                    dropped,
                )
                return False
            self._failures += 1
            self.restarts += 1
            self._restarts.add(1)
            delay = self._retry.backoff_s(self._failures)
            log.warning(
                "source consumer failed (%s: %s); starting it again from the committed "
                "offsets in %.1fs (%d uncommitted records will be consumed again)",
                type(exc).__name__,
                exc,
                delay,
                dropped,
            )
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
            except TimeoutError:
                return True
            return False


class IngestionService(StreamService):
    """Runs until `stop()`; `stop()` is idempotent and lets the batch in hand finish.

    service = IngestionService(settings)
    task = asyncio.create_task(service.run())
    await service.wait_started()
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
        super().__init__()
        self.settings = settings
        # The consumer's: for its handler, its commit-time flush and its restarts.
        self._retry = retry or RetryPolicy()
        self.spec = spec if spec is not None else spec_of(settings)
        self.contracts = SourceContracts(self.spec)
        self._consumer: RestartingConsumer | None = None
        self._pipeline: IngestionPipeline | None = None

    @property
    def stats(self) -> IngestionStats:
        return self._pipeline.stats if self._pipeline is not None else IngestionStats()

    @property
    def consumer_restarts(self) -> int:
        """Source consumers started again after a broker failure."""
        return 0 if self._consumer is None else self._consumer.restarts

    def _seen_ids(self) -> SeenIds:
        horizon = self.settings.dedupe_horizon_s
        if horizon == 0:
            return NoDedupe()
        return RedisSeenIds(self.settings.redis, horizon_s=horizon)

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
                pipeline = IngestionPipeline(self.contracts, publisher, seen)
                self._pipeline = pipeline

                def source_consumer() -> Consumer[bytes | None]:
                    return Consumer(
                        kafka,
                        topics=topics,
                        group_id=settings.group_id,
                        handler=pipeline.handle,
                        batch_handler=pipeline.handle_batch,
                        decoder=raw_decoder,
                        publisher=publisher,
                        retry=self._retry,
                        max_batch=settings.max_batch,
                        # A failing dependency ends a flush attempt; the consumer retries
                        # it, and it resumes at the step that failed.
                        before_commit=pipeline.flush,
                    )

                self._consumer = RestartingConsumer(
                    source_consumer, discard=pipeline.discard, retry=self._retry
                )
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
                    await self.consume_until_stopped(
                        [self._consumer],
                        stopped_unsaved="ingestion stopped with a batch unpublished",
                    )
                finally:
                    gc.unfreeze()
        finally:
            await seen.close()
        stats = self.stats
        log.info(
            "ingestion stopped: %d accepted, %d rejected, %d duplicates",
            stats.accepted,
            stats.rejected,
            stats.duplicates,
        )


def run(settings: IngestionSettings | None = None) -> None:
    """Start the ingestion service and block until SIGTERM/SIGINT."""
    run_stream_service("ingestion", settings or load_settings(IngestionSettings), IngestionService)
