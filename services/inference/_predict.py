# ruff: noqa: N802 - method names are the proto's RPC names
"""Predict by entity (`mlbus.inference.v1.PredictionService`): online features → model → outputs.

    entity ids ─► OnlineStore.get_features at the scored moment (one pipelined Redis round trip)
               ─► request fields, then the spec's policy (`_policy.resolve_features`)
               ─► one input batch per route (main version, canary) ─► outputs + ages
               ─► the prediction log: what each entity was served, before encoding

The scored moment is the request's `event_time` (the scored event's time), or
now: every window aggregate is evaluated there over the entity's events
strictly before it — the value the offline row of that event holds (ADR 0020).

Features are read in `spec.model_features()` order. How they reach the ONNX
model (`FeatureLayout`, computed once per loaded version):

- *matrix, encoded*: a model from the trainer has one 2-D FP32/FP64 input and
  an `InputEncoding` from its metadata (`mlbus.encoding`,
  `mlbus.feature_names.x`): columns in the model's ref order (a subset or
  reordering of the spec's features), categorical values as the trainer's
  ordinal codes (unknown, non-string or null → NaN; bool → "false"/"true"),
  numbers as is (null → NaN). A model ref the spec lacks, or a ref whose
  kind (categorical / numeric) differs from the spec's, is FAILED_PRECONDITION.
- *matrix*: one 2-D FP32/FP64 input without metadata, one column per feature
  in spec order. Every feature must then be numeric (int, float; bool as 0/1);
  a string or enum feature is FAILED_PRECONDITION naming it.
- *columns*: every model input is named after a feature (`view.feature` or
  its name), shape [N] or [N, 1]; string features go in BYTES inputs.

Redis unreachable → UNAVAILABLE (the store's `RetryableError`); the read is
bounded by `serving.timeout_ms`.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import grpc
import grpc.aio
import numpy as np
from opentelemetry import trace

from mlbus.api.inference.v1 import predict_pb2 as pb
from mlbus.api.inference.v1 import predict_pb2_grpc as pb_grpc
from mlbus.errors import InvalidInput, NotFound, PermanentError, RetryableError
from mlbus.events import Scalar

# Only for types: the online store (redis: ~6 MB) loads where Predict is set up,
# the spec (yaml, its models: ~1 MB) with MLBUS_SPEC.
if TYPE_CHECKING:
    from mlbus.featurestore import FeatureVector, OnlineStore, ViewAggregator
    from mlbus.spec import FeatureDef, ProjectSpec

from mlbus.signatures import OIP_TO_NUMPY

from ._model import InputEncoding, LoadedModel, encode_category
from ._policy import EntityFeatures, MissingFeatures, resolve_features
from ._predlog import PredictionLog, PredictionRecord, ServedFeatures
from ._repository import CANARY, ModelRepository
from ._routing import ShadowRunner, goes_to_canary
from ._servicer import run_model

PREDICT_SERVICE_NAME = "mlbus.inference.v1.PredictionService"

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


class FeaturesUnavailable(PermanentError):
    """Predict cannot run here (no spec, no Redis) or the model cannot take the spec's features."""


# ── rows → model inputs ──────────────────────────────────────────────────────


_FLOATS = ("FP32", "FP64")
_TEXT = ("string", "enum")


@dataclass(frozen=True)
class FeatureLayout:
    """How one model version takes the spec's features (see the module docstring)."""

    kind: Literal["matrix", "columns"]
    # matrix: (input name, numpy dtype); columns: (input name, feature index, dtype, rank)
    matrix: tuple[str, np.dtype[np.generic]] | None
    columns: tuple[tuple[str, int, np.dtype[np.generic], int], ...]
    feature_names: tuple[str, ...] | None
    positions: tuple[int, ...] | None = None
    """matrix: the spec index of each column (None: all features in spec order)."""
    codes: tuple[tuple[int, Mapping[str, float]], ...] = ()
    """matrix: (column, category → code) of each categorical column."""

    @classmethod
    def of(cls, model: LoadedModel, features: Sequence[FeatureDef]) -> FeatureLayout:
        """The layout, or `FeaturesUnavailable` saying why the model cannot take these features."""
        inputs = model.signature.inputs
        what = f"{model.name} v{model.version}"
        if model.encoding is not None:
            return cls._encoded(model.encoding, model, features)
        index = {f.ref: i for i, f in enumerate(features)}
        for i, f in enumerate(features):
            index.setdefault(f.name, i)
        if all(t.name in index for t in inputs):
            columns = []
            for t in inputs:
                feature = features[index[t.name]]
                if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] not in (-1, 1)):
                    raise FeaturesUnavailable(
                        f"{what}: input {t.name!r} has shape {list(t.shape)}; a feature input "
                        "must be [N] or [N, 1]"
                    )
                if (t.datatype == "BYTES") != (feature.dtype in _TEXT):
                    raise FeaturesUnavailable(
                        f"{what}: input {t.name!r} is {t.datatype} but feature {feature.ref!r} "
                        f"is {feature.dtype}"
                    )
                columns.append((t.name, index[t.name], OIP_TO_NUMPY[t.datatype], len(t.shape)))
            return cls("columns", None, tuple(columns), None)
        if len(inputs) == 1 and inputs[0].datatype in _FLOATS and len(inputs[0].shape) == 2:
            (t,) = inputs
            if t.shape[1] not in (-1, len(features)):
                raise FeaturesUnavailable(
                    f"{what}: input {t.name!r} has {t.shape[1]} columns, the spec's model has "
                    f"{len(features)} features ({', '.join(f.ref for f in features)})"
                )
            text = [f.ref for f in features if f.dtype in _TEXT]
            if text:
                raise FeaturesUnavailable(
                    f"{what} takes one numeric input {t.name!r} ({t.datatype}) without "
                    f"mlbus.encoding metadata, but feature(s) {', '.join(text)} are categorical "
                    "strings; publish a model trained by mlbus (it records the encoding), one "
                    "with one input per feature (named after it), or leave them out of "
                    "model.features"
                )
            refs = tuple(f.ref for f in features)
            return cls("matrix", (t.name, OIP_TO_NUMPY[t.datatype]), (), refs)
        raise FeaturesUnavailable(
            f"{what}: cannot map the spec's features to its inputs "
            f"{[t.name for t in inputs]}: expected one 2-D FP32/FP64 input of "
            f"{len(features)} columns, or one input per feature named after it"
        )

    @classmethod
    def _encoded(
        cls, encoding: InputEncoding, model: LoadedModel, features: Sequence[FeatureDef]
    ) -> FeatureLayout:
        what = f"{model.name} v{model.version}"
        index = {f.ref: i for i, f in enumerate(features)}
        unknown = [ref for ref in encoding.refs if ref not in index]
        if unknown:
            raise FeaturesUnavailable(
                f"{what} was trained on feature(s) {', '.join(unknown)} that the spec's model "
                f"does not list ({', '.join(index)}); serve it with the spec it was trained on"
            )
        problems = []
        for ref in encoding.refs:
            feature = features[index[ref]]
            coded = ref in encoding.codes
            if coded != (feature.kind == "categorical"):
                how = "categorical codes" if coded else "numbers"
                problems.append(f"{ref} (the model takes {how}, the spec says {feature.dtype})")
        if problems:
            raise FeaturesUnavailable(
                f"{what} encodes features differently from the spec: {'; '.join(problems)}"
            )
        dtype = OIP_TO_NUMPY[model.inputs[encoding.input].datatype]
        positions = tuple(index[ref] for ref in encoding.refs)
        codes = tuple(
            (j, encoding.codes[ref]) for j, ref in enumerate(encoding.refs) if ref in encoding.codes
        )
        return cls(
            "matrix",
            (encoding.input, dtype),
            (),
            encoding.refs,
            None if positions == tuple(range(len(features))) else positions,
            codes,
        )

    def build(
        self, rows: Sequence[EntityFeatures], features: Sequence[FeatureDef]
    ) -> dict[str, np.ndarray]:
        if self.matrix is not None:
            name, dtype = self.matrix
            table = (
                [r.values for r in rows]
                if self.positions is None and not self.codes
                else self.encode(rows)
            )
            try:
                array = np.array(table, dtype=np.float64)
            except (TypeError, ValueError):
                raise InvalidInput(_non_numeric(rows, features, self._coded())) from None
            return {name: array.astype(dtype, copy=False)}
        out: dict[str, np.ndarray] = {}
        for name, i, dtype, rank in self.columns:
            column = [r.values[i] for r in rows]
            try:
                if dtype == np.object_:
                    array = np.array([str(v) for v in column], dtype=np.object_)
                else:
                    array = np.array(column, dtype=np.float64).astype(dtype)
            except (TypeError, ValueError):
                raise InvalidInput(
                    f"feature {features[i].ref!r}: expected numbers, got {column[:3]!r}"
                ) from None
            out[name] = array if rank == 1 else array.reshape(-1, 1)
        return out

    def _coded(self) -> set[str]:
        names = self.feature_names or ()
        return {names[j] for j, _ in self.codes}

    def encode(self, rows: Sequence[EntityFeatures]) -> list[list[object]]:
        """The matrix rows before the float conversion: model column order, categories coded."""
        positions = self.positions or range(len(rows[0].values) if rows else 0)
        codes = self.codes
        table: list[list[object]] = []
        for r in rows:
            values = r.values
            row: list[object] = [values[i] for i in positions]
            for j, categories in codes:
                row[j] = encode_category(categories, row[j])
            table.append(row)
        return table


def _non_numeric(
    rows: Sequence[EntityFeatures], features: Sequence[FeatureDef], coded: set[str]
) -> str:
    for row in rows:
        for feature, value in zip(features, row.values, strict=True):
            if isinstance(value, str) and feature.ref not in coded:
                return (
                    f"feature {feature.ref!r} of {row.entity_id!r} is {value!r}; "
                    "the model takes numbers"
                )
    return "a feature value is not a number"


# ── the service ──────────────────────────────────────────────────────────────


class PredictionServicer(pb_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        repository: ModelRepository,
        *,
        spec: ProjectSpec | None,
        store: OnlineStore | None,
        alias: str = "champion",
        prediction_log: PredictionLog | None = None,
        shadow: ShadowRunner | None = None,
        canary_weight: float | None = None,
        executor: Executor | None = None,
        inline_max_elements: int = 4096,
        max_entities: int = 1000,
    ) -> None:
        self._repository = repository
        self._spec = spec
        self._store = store
        self._alias = alias
        self._log = prediction_log
        self._shadow = shadow
        self._executor = executor
        self._inline_max = inline_max_elements
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
            self.canary_weight = (
                spec.serving.canary_weight if canary_weight is None else canary_weight
            )
        else:
            self.canary_weight = canary_weight or 0.0

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
        main = self._repository.get(name)
        fields, current = self._fields(request)
        at_ms = (
            request.event_time.ToMilliseconds()
            if request.HasField("event_time")
            else int(time.time() * 1000)
        )
        vectors = await self._read(ids, at_ms, current, context)
        rows = resolve_features(vectors, self._refs, self._serving, fields, self._aggregates)

        canary = self._repository.canary(name)
        routes: list[tuple[LoadedModel, str, list[int]]] = [(main, self._alias, [])]
        if canary is not None and self.canary_weight > 0:
            routes.append((canary, CANARY, []))
            for i, entity_id in enumerate(ids):
                routes[goes_to_canary(name, entity_id, self.canary_weight)][2].append(i)
        else:
            routes[0][2].extend(range(len(ids)))

        response = pb.PredictResponse(model_name=name, model_version=str(main.version))
        predictions = [pb.EntityPrediction(entity_id=entity_id) for entity_id in ids]
        span = trace.get_current_span().get_span_context()
        trace_id = format(span.trace_id, "032x") if span.is_valid else None
        main_inputs: dict[str, np.ndarray] | None = None
        for model, alias, indices in routes:
            if not indices:
                continue
            layout = self._layout(model)
            batch = [rows[i] for i in indices]
            inputs = layout.build(batch, self._features)
            if model is main and len(indices) == len(ids):
                main_inputs = inputs
            outputs = await run_model(
                model, inputs, None, context, self._executor, self._inline_max
            )
            for row, i in enumerate(indices):
                _fill(predictions[i], outputs, row, rows[i], model, alias)
            if self._log is not None:
                self._log.offer(
                    PredictionRecord(
                        model,
                        alias,
                        inputs,
                        outputs,
                        (time.perf_counter() - started) * 1000,
                        trace_id,
                        tuple(ids[i] for i in indices),
                        feature_names=layout.feature_names,
                        event_ids=(
                            tuple(event_ids[i] for i in indices) if event_ids is not None else None
                        ),
                        served=ServedFeatures(self._refs, [rows[i] for i in indices], at_ms),
                    )
                )
        response.predictions.extend(predictions)
        shadow = self._repository.shadow(name) if self._shadow is not None else None
        if shadow is not None and self._shadow is not None:
            try:
                layout = self._layout(shadow)
                same = main_inputs is not None and layout == self._layout(main)
                copy = main_inputs if same and main_inputs else layout.build(rows, self._features)
                self._shadow.submit(
                    shadow,
                    copy,
                    entity_ids=tuple(ids),
                    feature_names=layout.feature_names,
                    trace_id=trace_id,
                    event_ids=event_ids,
                    served=ServedFeatures(self._refs, rows, at_ms),
                )
            except Exception:  # the shadow must never change the response
                self._shadow.failed += 1
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
        assert self._store is not None
        timeout_s = self._serving.timeout_ms / 1000
        remaining = context.time_remaining()
        if remaining is not None:
            timeout_s = min(timeout_s, remaining)
        try:
            # asyncio.timeout, not wait_for: no extra task and loop round trip per call
            async with asyncio.timeout(timeout_s):
                return await self._store.get_features(
                    ids,
                    self._refs,
                    self._versions,
                    at_ms=at_ms,
                    views=self._views,
                    current=current,
                )
        except TimeoutError:
            raise RetryableError(
                f"the online store did not answer within {timeout_s * 1000:.0f} ms "
                "(serving.timeout_ms)"
            ) from None

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
