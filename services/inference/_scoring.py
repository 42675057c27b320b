"""The scoring core both protocol surfaces share: route, run, log and shadow, once.

    a request, decoded by its adapter
        Predict (`_predict`: entity ids → online features → model inputs)
        ModelInfer (`_servicer`: Open Inference Protocol tensors)
      ─► Scorer.route / Scorer.routes: the main version, or the canary for the
         entities whose stable hash falls under the canary weight (`_routing`)
      ─► Scorer.run: ONNX Runtime on the event loop (small inputs) or a worker
         thread, within the caller's deadline
      ─► Scorer.log: the prediction log (what each version served)
      ─► Scorer.shadow: a copy of the inputs to the shadow version, off the response path

Each request looks its versions up once and keeps them to the end, so a hot swap
never mixes versions inside one request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import grpc.aio
import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument
from opentelemetry import trace

from mlbus.errors import InvalidInput, RetryableError, StatusName

from ._model import LoadedModel
from ._predlog import PredictionLog, PredictionRecord, ServedFeatures
from ._repository import CANARY, ModelRepository
from ._routing import ShadowRunner, goes_to_canary


class DeadlineExceeded(RetryableError):
    """The caller's deadline passed before the work could be done."""

    status: StatusName = "DEADLINE_EXCEEDED"


@dataclass(frozen=True, slots=True)
class Route:
    """The version that answers `rows` of a request (their positions in it), under `alias`."""

    model: LoadedModel
    alias: str
    rows: tuple[int, ...]


class Scorer:
    """Routes, runs, logs and shadows requests for both gRPC surfaces of one server."""

    def __init__(
        self,
        repository: ModelRepository,
        *,
        alias: str,
        prediction_log: PredictionLog | None = None,
        shadow: ShadowRunner | None = None,
        executor: Executor | None = None,
        inline_max_elements: int = 4096,
        canary_weights: Mapping[str, float] | None = None,
        default_canary_weight: float = 0.0,
    ) -> None:
        self.repository = repository
        self.alias = alias
        self._log = prediction_log
        self._shadow = shadow
        self._executor = executor
        self._inline_max = inline_max_elements
        self._canary_weights = dict(canary_weights or {})
        self._default_canary_weight = default_canary_weight

    # ── route ────────────────────────────────────────────────────────────────

    def canary_weight(self, model: str) -> float:
        return self._canary_weights.get(model, self._default_canary_weight)

    def route(self, name: str, entity_id: str | None, version: str = "") -> tuple[LoadedModel, str]:
        """(version, alias) that answers every row of a request: the pinned `version`, else
        the canary when the entity goes there, else the main version."""
        main = self.repository.get(name, version)
        if version or entity_id is None:
            return main, self.alias
        canary = self.repository.canary(name)
        if canary is not None and goes_to_canary(name, entity_id, self.canary_weight(name)):
            return canary, CANARY
        return main, self.alias

    def routes(self, name: str, entity_ids: Sequence[str]) -> list[Route]:
        """Each entity to the main version or the canary. The main route is always first,
        even when every entity went to the canary (its version names the response)."""
        main = self.repository.get(name)
        canary = self.repository.canary(name)
        weight = self.canary_weight(name)
        if canary is None or weight <= 0:
            return [Route(main, self.alias, tuple(range(len(entity_ids))))]
        to_main: list[int] = []
        to_canary: list[int] = []
        for i, entity_id in enumerate(entity_ids):
            (to_canary if goes_to_canary(name, entity_id, weight) else to_main).append(i)
        return [Route(main, self.alias, tuple(to_main)), Route(canary, CANARY, tuple(to_canary))]

    # ── run ──────────────────────────────────────────────────────────────────

    async def run(
        self,
        model: LoadedModel,
        inputs: Mapping[str, np.ndarray],
        names: list[str] | None,
        context: grpc.aio.ServicerContext,
    ) -> dict[str, np.ndarray]:
        """Run `model` on the loop (small inputs: a batch of one is a few microseconds, far
        less than a hop to a thread) or a worker thread (ONNX Runtime releases the GIL),
        within the call's deadline."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(f"the deadline passed before {model.name} could run")
        try:
            executor = self._executor
            if executor is None or sum(a.size for a in inputs.values()) <= self._inline_max:
                return model.run(inputs, names)
            loop = asyncio.get_running_loop()
            running = loop.run_in_executor(executor, model.run, inputs, names)
            try:
                return await asyncio.wait_for(running, remaining)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"{model.name} v{model.version} did not finish within the deadline"
                ) from None
        except OrtInvalidArgument as exc:
            raise InvalidInput(f"{model.name} v{model.version} rejected the input: {exc}") from None

    # ── log and shadow ───────────────────────────────────────────────────────

    @property
    def logs(self) -> bool:
        return self._log is not None

    def log(self, record: PredictionRecord) -> None:
        """Offer what was served to the prediction log (never blocks; drops are counted)."""
        if self._log is not None:
            self._log.offer(record)

    def shadow_of(self, name: str) -> LoadedModel | None:
        """The shadow version to score a copy with, if shadowing is on and one is set."""
        return self.repository.shadow(name) if self._shadow is not None else None

    def shadow(
        self,
        model: LoadedModel,
        inputs: Mapping[str, np.ndarray],
        *,
        entity_ids: tuple[str, ...] | None,
        trace_id: str | None,
        feature_names: tuple[str, ...] | None = None,
        event_ids: tuple[str, ...] | None = None,
        served: ServedFeatures | None = None,
    ) -> None:
        """Schedule the shadow run; never blocks, never raises."""
        if self._shadow is not None:
            self._shadow.submit(
                model,
                inputs,
                entity_ids=entity_ids,
                feature_names=feature_names,
                trace_id=trace_id,
                event_ids=event_ids,
                served=served,
            )

    def shadow_failed(self) -> None:
        """Building the shadow's copy failed: counted, and the response is unchanged."""
        if self._shadow is not None:
            self._shadow.failed += 1


def current_trace_id() -> str | None:
    """The trace id of the request's span, as the prediction log records it."""
    span = trace.get_current_span().get_span_context()
    return format(span.trace_id, "032x") if span.is_valid else None
