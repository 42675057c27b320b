# ruff: noqa: N802 - method names are the proto's RPC names
"""Predict by entity (`mlbus.inference.v1.PredictionService`): online features → model → outputs.

    entity ids ─► OnlineStore.get_features at the scored moment (one pipelined Redis round trip)
               ─► request fields, then the spec's policy (`_policy.resolve_features`)
               ─► one input batch per route (main version, canary) ─► outputs + ages
               ─► the prediction log: what each entity was served, before encoding

The scored moment is the request's `event_time` (the scored event's time), or
now: every window aggregate is evaluated there over the entity's events
strictly before it — the value the offline row of that event holds (ADR 0020).

Features are read in `spec.model_features()` order; how they reach the ONNX
model is the version's `FeatureLayout` (`_layout`); which version answers, the
run, the log and the shadow are the scoring core's (`_scoring.Scorer`), shared
with ModelInfer.

Redis unreachable → UNAVAILABLE (the store's `RetryableError`); each read is
bounded by `serving.timeout_ms`, or by the caller's deadline when that comes first
(then DEADLINE_EXCEEDED: the store was not slow, the call was late). A read that
misses the budget is tried once more if the deadline leaves room for it.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING

import grpc
import grpc.aio
import numpy as np

from mlbus.api.inference.v1 import predict_pb2 as pb
from mlbus.api.inference.v1 import predict_pb2_grpc as pb_grpc
from mlbus.errors import InvalidInput, NotFound, RetryableError
from mlbus.events import Scalar
from mlbus.rpc import timestamp_ms
from mlbus.telemetry import meter

# Only for types: the online store (redis: ~6 MB) loads where Predict is set up,
# the spec (yaml, its models: ~1 MB) with MLBUS_SPEC.
if TYPE_CHECKING:
    from mlbus.featurestore import FeatureVector, OnlineStore, ViewAggregator
    from mlbus.spec import FeatureDef, ProjectSpec

from ._layout import FeatureLayout, FeaturesUnavailable
from ._model import LoadedModel
from ._policy import EntityFeatures, MissingFeatures, resolve_features
from ._predlog import PredictionRecord, ServedFeatures
from ._scoring import DeadlineExceeded, Scorer, current_trace_id

PREDICT_SERVICE_NAME = "mlbus.inference.v1.PredictionService"

_read_retries = meter("mlbus.inference").create_counter(
    "mlbus.inference.online_store.retries",
    description="online store reads tried again after missing serving.timeout_ms",
)

__all__ = [
    "PREDICT_SERVICE_NAME",
    "EntityFeatures",
    "FeatureLayout",
    "FeaturesUnavailable",
    "MissingFeatures",
    "PredictionServicer",
    "protects_predict",
    "resolve_features",
]


# ── the service ──────────────────────────────────────────────────────────────


class PredictionServicer(pb_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        scorer: Scorer,
        *,
        spec: ProjectSpec | None,
        store: OnlineStore | None,
        max_entities: int = 1000,
    ) -> None:
        self._scorer = scorer
        self._spec = spec
        self._store = store
        self._max_entities = max_entities
        self._layouts: weakref.WeakKeyDictionary[LoadedModel, FeatureLayout] = (
            weakref.WeakKeyDictionary()
        )
        if spec is not None:
            from mlbus.featurestore import ViewAggregator, empty_value

            self._features = spec.model_features()
            self._refs = tuple(f.ref for f in self._features)
            self._versions = {view: spec.features[view].version for view in spec.model_views()}
            self._by_name: dict[str, FeatureDef] = {f.ref: f for f in self._features}
            for f in self._features:
                self._by_name.setdefault(f.name, f)
            # Exact reads of the windows (ADR 0020). Serving does not know the feature
            # service's lateness: each state records the horizon it can be read at.
            self._views: dict[str, ViewAggregator] = {
                view: ViewAggregator(spec.features[view], spec.view_features(view), 0)
                for view in spec.model_views()
            }
            self._aggregates: dict[str, Scalar] = {
                f.ref: empty_value(f.function) for f in self._features if f.function is not None
            }
            # Source fields the request may carry for views that count the scored event.
            self._current_fields: dict[str, str] = {}
            for view, aggregator in self._views.items():
                if aggregator.include_current:
                    for source_field in aggregator.inputs:
                        self._current_fields.setdefault(f"{view}.{source_field}", source_field)
                        self._current_fields.setdefault(source_field, source_field)
            self._serving = spec.serving

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        started = time.perf_counter()
        if self._spec is None:
            raise FeaturesUnavailable(
                "no spec: Predict needs the project spec (set MLBUS_SPEC); "
                "ModelInfer works without one"
            )
        if self._store is None:
            raise FeaturesUnavailable("no online store: Predict needs Redis (set REDIS_URL)")
        name = request.model_name or self._serving.model
        if name != self._serving.model:
            raise NotFound(f"Predict serves the spec's model {self._serving.model!r}, not {name!r}")
        ids = list(request.entity_ids)
        if not ids:
            raise InvalidInput("entity_ids is empty: name at least one entity")
        if len(ids) > self._max_entities:
            raise InvalidInput(
                f"{len(ids)} entity ids; at most {self._max_entities} per call "
                "(MLBUS_INFERENCE_MAX_PREDICT_ENTITIES)"
            )
        # One business event per entity, or none: a mismatch would pin a label
        # to the wrong prediction, so it is refused rather than truncated.
        event_ids = tuple(request.event_ids) or None
        if event_ids is not None and len(event_ids) != len(ids):
            raise InvalidInput(
                f"event_ids has {len(event_ids)} ids for {len(ids)} entity_ids: give one "
                "event id per entity id, in the same order, or none"
            )
        scorer = self._scorer
        routes = scorer.routes(name, ids)  # looked up once: a swap never mixes versions
        main = routes[0].model
        fields, current = self._fields(request)
        at_ms = timestamp_ms(request, "event_time")
        if at_ms is None:
            at_ms = int(time.time() * 1000)
        vectors = await self._read(ids, at_ms, current, context)
        rows = resolve_features(vectors, self._refs, self._serving, fields, self._aggregates)

        response = pb.PredictResponse(model_name=name, model_version=str(main.version))
        predictions = [pb.EntityPrediction(entity_id=entity_id) for entity_id in ids]
        trace_id = current_trace_id()
        main_inputs: dict[str, np.ndarray] | None = None
        for route in routes:
            model, indices = route.model, route.rows
            if not indices:
                continue
            layout = self._layout(model)
            batch = [rows[i] for i in indices]
            inputs = layout.build(batch, self._features)
            if model is main and len(indices) == len(ids):
                main_inputs = inputs
            outputs = await scorer.run(model, inputs, None, context)
            for row, i in enumerate(indices):
                _fill(predictions[i], outputs, row, rows[i], model, route.alias)
            if scorer.logs:
                scorer.log(
                    PredictionRecord(
                        model,
                        route.alias,
                        inputs,
                        outputs,
                        (time.perf_counter() - started) * 1000,
                        trace_id,
                        tuple(ids[i] for i in indices),
                        feature_names=layout.feature_names,
                        event_ids=(
                            tuple(event_ids[i] for i in indices) if event_ids is not None else None
                        ),
                        served=ServedFeatures(self._refs, batch, at_ms),
                    )
                )
        response.predictions.extend(predictions)
        shadow = scorer.shadow_of(name)
        if shadow is not None:
            try:
                layout = self._layout(shadow)
                same = main_inputs is not None and layout == self._layout(main)
                copy = main_inputs if same and main_inputs else layout.build(rows, self._features)
                scorer.shadow(
                    shadow,
                    copy,
                    entity_ids=tuple(ids),
                    feature_names=layout.feature_names,
                    trace_id=trace_id,
                    event_ids=event_ids,
                    served=ServedFeatures(self._refs, rows, at_ms),
                )
            except Exception:  # the shadow must never change the response
                scorer.shadow_failed()
        return response

    def _layout(self, model: LoadedModel) -> FeatureLayout:
        layout = self._layouts.get(model)
        if layout is None:
            layout = self._layouts[model] = FeatureLayout.of(model, self._features)
        return layout

    async def _read(
        self,
        ids: list[str],
        at_ms: int,
        current: dict[str, Scalar],
        context: grpc.aio.ServicerContext,
    ) -> list[FeatureVector]:
        """The online features, within `serving.timeout_ms` per attempt.

        A read that misses the budget is tried once more when the caller's deadline
        leaves room for a whole attempt: on a busy host a single miss is usually this
        host's scheduling (the soak saw bursts of them with Redis up), while a store
        that is down or stalled misses both, and the call fails after two budgets."""
        for attempt in (1, 2):
            timeout_s = self._serving.timeout_ms / 1000
            remaining = context.time_remaining()
            by_deadline = False  # the caller's deadline came first: a late read missed that
            if remaining is not None and remaining < timeout_s:
                if remaining <= 0:
                    raise DeadlineExceeded("the deadline passed before the online store was read")
                timeout_s, by_deadline = remaining, True
            try:
                return await self._read_within(timeout_s, ids, at_ms, current)
            except TimeoutError:
                if by_deadline:
                    raise DeadlineExceeded(
                        "the deadline passed while reading the online store "
                        f"({timeout_s * 1000:.0f} ms were left)"
                    ) from None
                if attempt == 1:
                    remaining = context.time_remaining()
                    if remaining is None or remaining >= timeout_s:
                        _read_retries.add(1)
                        continue
                tries = "twice" if attempt == 2 else "once, and the deadline left no room for more"
                raise RetryableError(
                    f"the online store did not answer within {timeout_s * 1000:.0f} ms "
                    f"(serving.timeout_ms) {tries}"
                ) from None
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _read_within(
        self, timeout_s: float, ids: list[str], at_ms: int, current: dict[str, Scalar]
    ) -> list[FeatureVector]:
        assert self._store is not None
        loop = asyncio.get_running_loop()
        # asyncio.timeout, not wait_for: no extra task and loop round trip per call
        async with asyncio.timeout(None) as budget:
            expiry = loop.call_later(timeout_s, _expire_after_replies, budget)
            try:
                return await self._store.get_features(
                    ids,
                    self._refs,
                    self._versions,
                    at_ms=at_ms,
                    views=self._views,
                    current=current,
                )
            finally:
                expiry.cancel()

    def _fields(self, request: pb.PredictRequest) -> tuple[dict[str, Scalar], dict[str, Scalar]]:
        """(model features given by the request, by ref; the scored event's source fields
        for views that count it, by field name)."""
        fields: dict[str, Scalar] = {}
        current: dict[str, Scalar] = {}
        for key, value in request.fields.items():
            feature = self._by_name.get(key)
            source_field = self._current_fields.get(key)
            if feature is None and source_field is None:
                counted = ", ".join(self._current_fields)
                raise InvalidInput(
                    f"field {key!r} is not a feature of model {self._serving.model!r} "
                    f"({', '.join(self._refs)})"
                    + (f" nor a field counted with the scored event ({counted})" if counted else "")
                )
            kind = value.WhichOneof("value")
            scalar: Scalar = getattr(value, kind) if kind else None
            if feature is not None:
                numeric = feature.kind == "numeric"
                if (
                    scalar is None
                    or (numeric and isinstance(scalar, str))
                    or (not numeric and feature.dtype != "bool" and not isinstance(scalar, str))
                ):
                    raise InvalidInput(
                        f"field {key!r}: expected a {feature.dtype} value for {feature.ref!r}, "
                        f"got {kind or 'nothing'}"
                    )
                fields[feature.ref] = scalar
                if feature.source_field is not None and feature.function is None:
                    source_field = source_field or self._current_fields.get(feature.source_field)
            if source_field is not None:
                current[source_field] = scalar
        return fields, current


def _fill(
    prediction: pb.EntityPrediction,
    outputs: Mapping[str, np.ndarray],
    row: int,
    features: EntityFeatures,
    model: LoadedModel,
    alias: str,
) -> None:
    prediction.model_version = str(model.version)
    prediction.alias = alias
    for name, array in outputs.items():
        output = prediction.outputs[name]
        value = array[row] if array.ndim else array
        flat = np.asarray(value).ravel()
        if flat.dtype.kind in "biuf":
            output.values.extend(flat.astype(np.float64).tolist())
        else:
            output.strings.extend(
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat
            )
    prediction.feature_ages_s.update(features.ages_s)
    prediction.defaulted_features.extend(features.defaulted)


def protects_predict(method: str) -> bool:
    return method.startswith(f"/{PREDICT_SERVICE_NAME}/")


def _expire_after_replies(budget: asyncio.Timeout) -> None:
    """Expire `budget` one loop pass later: a store reply this process has already
    received wins over the budget.

    On a busy host the process can stay unscheduled past the budget while the
    reply waits in its socket. Woken, the loop runs the expired timer in the same
    pass that reads the reply, before the read's task resumes, and
    `asyncio.timeout` would cancel a read that was answered in time. The store is
    late only if its reply had not arrived when the budget ran out."""
    budget.reschedule(asyncio.get_running_loop().time())
