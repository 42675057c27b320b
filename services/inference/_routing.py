"""Canary split and shadow scoring.

Canary: an entity goes to the canary version when a stable hash of
(model, entity id) falls below `canary_weight`: the same entity always lands
on the same side (sticky), across requests, replicas and restarts, and about
`canary_weight` of entities go there. Requests without an entity id stay on
the main version.

Shadow: the shadow version scores a copy of the request's inputs in a
background task on a worker thread, after the response is built; its outputs
only go to the prediction log (`shadow=True`). At most `max_in_flight` shadow
runs are pending; beyond that copies are dropped and counted, so a slow
shadow can never pile up work or memory behind the served traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Protocol

import numpy as np

from ._model import LoadedModel
from ._predlog import PredictionRecord, ServedFeatures
from ._repository import SHADOW

log = logging.getLogger(__name__)

_SCALE = float(1 << 64)


def canary_point(model: str, entity_id: str) -> float:
    """Where `entity_id` falls in [0, 1) for `model`: blake2b, stable everywhere."""
    digest = hashlib.blake2b(f"{model}\0{entity_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def goes_to_canary(model: str, entity_id: str, weight: float) -> bool:
    return weight > 0.0 and canary_point(model, entity_id) < weight


class RecordSink(Protocol):
    """Where records go (a `PredictionLog`)."""

    def offer(self, record: PredictionRecord) -> None: ...


class ShadowRunner:
    """Scores copies of traffic with shadow versions, off the response path."""

    def __init__(
        self,
        sink: RecordSink | None,
        executor: Executor | None,
        *,
        max_in_flight: int = 64,
    ) -> None:
        self._sink = sink
        self._executor = executor
        self._max = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self.scored = 0
        self.dropped = 0
        self.failed = 0

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def submit(
        self,
        model: LoadedModel,
        inputs: Mapping[str, np.ndarray],
        *,
        entity_ids: tuple[str, ...] | None = None,
        feature_names: tuple[str, ...] | None = None,
        trace_id: str | None = None,
        event_ids: tuple[str, ...] | None = None,
        served: ServedFeatures | None = None,
    ) -> None:
        """Schedule one shadow run; never blocks, never raises."""
        if len(self._tasks) >= self._max:
            self.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(
            self._score(model, inputs, entity_ids, feature_names, trace_id, event_ids, served),
            name=f"shadow-{model.name}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _score(
        self,
        model: LoadedModel,
        inputs: Mapping[str, np.ndarray],
        entity_ids: tuple[str, ...] | None,
        feature_names: tuple[str, ...] | None,
        trace_id: str | None,
        event_ids: tuple[str, ...] | None,
        served: ServedFeatures | None,
    ) -> None:
        started = time.perf_counter()
        try:
            if self._executor is None:
                await asyncio.sleep(0)  # let the response go first
                outputs = model.run(inputs)
            else:
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(self._executor, model.run, inputs, None)
        except Exception as exc:
            self.failed += 1
            log.warning("shadow %s v%d failed: %s", model.name, model.version, exc)
            return
        self.scored += 1
        if self._sink is not None:
            self._sink.offer(
                PredictionRecord(
                    model,
                    SHADOW,
                    inputs,
                    outputs,
                    (time.perf_counter() - started) * 1000,
                    trace_id,
                    entity_ids,
                    shadow=True,
                    feature_names=feature_names,
                    event_ids=event_ids,
                    served=served,
                )
            )

    async def drain(self, timeout_s: float = 1.0) -> None:
        """Wait for pending shadow runs (up to `timeout_s`), cancel the rest. Idempotent."""
        tasks = list(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
