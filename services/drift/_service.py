"""The drift service's process: consume predictions and labels, detect, publish, keep state."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from mlbus.bus import Consumer, Publisher, ensure_topics
from mlbus.config import load_settings
from mlbus.errors import RetryableError
from mlbus.events import DRIFT_DETECTED, TRAINING_REQUESTED
from mlbus.service import StreamService, run_stream_service
from mlbus.spec import ProjectSpec

from ._labels import PendingPredictions
from ._processor import DriftProcessor
from ._retraining import Retraining
from ._settings import DriftSettings
from ._store import DriftStore
from ._versions import RegistryReader, VersionCatalog

log = logging.getLogger(__name__)
QUIET_CHECK_S = 1.0
"""How often quiet partitions' statuses and the armed retraining's deadline are looked at."""


@dataclass
class DriftService(StreamService):
    """The running parts; `run()` until `stop()` (idempotent)."""

    settings: DriftSettings
    spec: ProjectSpec
    processor: DriftProcessor | None = None
    consumer: Consumer[Any] | None = None

    async def run(self) -> None:
        settings = self.settings
        registry = settings.registry_client()
        store = DriftStore.from_settings(
            settings.redis, group=settings.group_id, detections_kept=settings.detections_kept
        )
        pending = PendingPredictions(
            store.client,
            prefix=settings.redis.key_prefix,
            ttl_s=settings.pending_ttl_s,
            max_entries=settings.pending_max,
        )
        catalog = VersionCatalog(
            RegistryReader(registry.get_version, registry.download_artifact),
            self.spec,
            retry_s=settings.profile_retry_s,
        )
        retraining = Retraining(
            self.spec,
            store,
            retrain_lookback_s=settings.retrain_lookback_s,
            retrain_min_labels=settings.retrain_min_labels,
            retrain_max_wait_s=settings.retrain_max_wait_s,
        )
        processor = DriftProcessor(
            self.spec,
            catalog,
            store,
            pending,
            retraining,
            monitor_shadow=settings.monitor_shadow,
            stopping=self._stop,
            status_interval_s=settings.status_interval_s,
        )
        self.processor = processor
        try:
            await ensure_topics(
                settings.kafka, [*processor.topics, DRIFT_DETECTED, TRAINING_REQUESTED]
            )
            async with Publisher(settings.kafka, source="drift") as publisher:
                retraining.publisher = publisher
                # At the commit: detections, pending labels, state + offset.
                consumer = Consumer.of_processor(
                    settings.kafka,
                    processor,
                    group_id=settings.group_id,
                    publisher=publisher,
                    max_batch=settings.max_batch,
                    # saving the monitors' state is the commit's cost: not after every fetch
                    commit_interval_s=settings.commit_interval_s,
                    spans_in_batch=True,  # it publishes nothing per record
                    latency="background",
                )
                self.consumer = consumer
                # Stopped while Redis or the broker was down: the offsets were not
                # committed, so the records are applied again (from the saved state).
                await self.consume_until_stopped(
                    [consumer],
                    stopped_unsaved="drift service stopped with state unsaved",
                    beside={"statuses": lambda: self._statuses(processor)},
                )
        finally:
            await registry.close()
            await store.aclose()

    async def _statuses(self, processor: DriftProcessor) -> None:
        """Keep `mlbus drift status` fresh for partitions that went quiet; fire a late trigger."""
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), QUIET_CHECK_S)
            except TimeoutError:
                pass
            try:
                await processor.write_statuses(force=self._stop.is_set())
                # The armed retraining's maximum wait passes without records too.
                await processor.retraining.advance_armed()
            except RetryableError as exc:
                log.warning("could not write drift status or check the armed retraining: %s", exc)
            if self._stop.is_set():
                return


def run(settings: DriftSettings | None = None) -> None:
    """Start the drift service and block until SIGTERM/SIGINT."""
    run_stream_service("drift", settings or load_settings(DriftSettings), DriftService)
