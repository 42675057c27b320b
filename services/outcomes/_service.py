"""The outcomes service's process: consume predictions and labels, look, decide, act."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc.aio

from mlbus.api.labeling.v1 import labeling_pb2_grpc as pb_grpc
from mlbus.bus import Consumer, Publisher, ensure_topics
from mlbus.config import load_settings
from mlbus.errors import RetryableError
from mlbus.events import (
    EXPERIMENT_ACTED,
    EXPERIMENT_DECIDED,
    LABELING_REQUESTED,
    OUTCOMES_MEASURED,
)
from mlbus.labeling import LabelQueue
from mlbus.rpc import server_interceptors, start_serving, stop_serving
from mlbus.service import StreamService, run_stream_service
from mlbus.spec import ProjectSpec

from ._evaluator import Evaluator
from ._grpc import SERVICE_NAME, LabelingServicer, protects
from ._processor import OutcomesProcessor
from ._settings import OutcomesSettings
from ._store import OutcomesStore

log = logging.getLogger(__name__)


@dataclass
class OutcomesService(StreamService):
    """The running parts; `run()` until `stop()` (idempotent)."""

    settings: OutcomesSettings
    spec: ProjectSpec
    processor: OutcomesProcessor | None = None
    evaluator: Evaluator | None = None
    consumer: Consumer[Any] | None = None
    grpc_port: int | None = None
    """Where the labeling API listens, once started."""

    async def run(self) -> None:
        settings = self.settings
        registry = settings.registry_client()
        store = OutcomesStore.from_settings(
            settings.redis, group=settings.group_id, ttl_s=settings.pending_ttl_s
        )
        processor = OutcomesProcessor(self.spec, store, bucket_s=settings.bucket_s)
        if self.spec.outcomes.labeling is not None:
            processor.queue = LabelQueue(
                store.client, prefix=settings.redis.key_prefix, model=self.spec.model.name
            )
        evaluator = Evaluator(
            self.spec,
            store,
            registry,
            bucket_s=settings.bucket_s,
            report_interval_s=settings.report_interval_s,
            champions=processor.champions,
            queue=processor.queue,
        )
        self.processor, self.evaluator = processor, evaluator
        try:
            await ensure_topics(
                settings.kafka,
                [
                    *processor.topics,
                    OUTCOMES_MEASURED,
                    EXPERIMENT_DECIDED,
                    EXPERIMENT_ACTED,
                    LABELING_REQUESTED,
                ],
            )
            async with Publisher(settings.kafka, source="outcomes") as publisher:
                evaluator.publisher = processor.publisher = publisher
                server, health = await self._serve(processor.queue, publisher)
                try:
                    await self._consume_and_look(processor, evaluator, publisher)
                finally:
                    await stop_serving(server, health, settings.shutdown_grace_s)
        finally:
            await registry.close()
            await store.aclose()

    async def _serve(
        self, queue: LabelQueue | None, publisher: Publisher
    ) -> tuple[grpc.aio.Server, Any]:
        """The labeling API (`mlbus.labeling.v1.Labeling`), started and serving."""
        settings = self.settings
        server = grpc.aio.server(
            interceptors=server_interceptors(settings.registry_token, protects=protects)
        )
        servicer = LabelingServicer(
            self.spec, queue, publisher, send_timeout_s=settings.kafka.request_timeout_s
        )
        pb_grpc.add_LabelingServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        self.grpc_port, health = await start_serving(
            server,
            (SERVICE_NAME,),
            host=settings.grpc_host,
            port=settings.grpc_port,
            variable="MLBUS_OUTCOMES_GRPC_PORT",
        )
        log.info("Labeling listening on port %d", self.grpc_port)
        return server, health

    async def _consume_and_look(
        self, processor: OutcomesProcessor, evaluator: Evaluator, publisher: Publisher
    ) -> None:
        settings = self.settings
        consumer = Consumer.of_processor(
            settings.kafka,
            processor,
            group_id=settings.group_id,
            publisher=publisher,
            max_batch=settings.max_batch,
            latency="background",
        )
        self.consumer = consumer
        await self.consume_until_stopped(
            [consumer],
            stopped_unsaved="outcomes service stopped with state unsaved",
            beside={"looks": lambda: self._looks(evaluator)},
        )

    async def _looks(self, evaluator: Evaluator) -> None:
        """Windows and experiments every `evaluate_interval_s`, and once more when stopping."""
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.evaluate_interval_s)
            except TimeoutError:
                pass
            if self._stop.is_set():
                return
            try:
                await evaluator.evaluate()
            except RetryableError as exc:
                log.warning("could not look at outcomes and experiments: %s", exc)


def run(settings: OutcomesSettings | None = None) -> None:
    """Start the outcomes service and block until SIGTERM/SIGINT."""
    run_stream_service("outcomes", settings or load_settings(OutcomesSettings), OutcomesService)
