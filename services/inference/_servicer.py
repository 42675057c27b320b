# ruff: noqa: N802 - method names are the proto's RPC names
"""The Open Inference Protocol (KServe v2) gRPC service: `inference.GRPCInferenceService`.

Handlers raise `mlbus.errors` types; the error interceptor of `mlbus.rpc`
turns them into status codes (unknown model or version → NOT_FOUND, bad
tensor → INVALID_ARGUMENT, expired deadline → DEADLINE_EXCEEDED).

Each `ModelInfer` looks its model up once and uses that version to the end,
so a hot swap never mixes versions inside one request; the response names it
in `model_version` and in `parameters["mlbus.model_version"]`.

Canary and shadow: when a model has a `canary` version and the request names
its entity (`parameters["mlbus.entity_id"]`, string), the entity's stable hash
decides whether the canary answers (`_routing.goes_to_canary`); a request
pinned to a version, or without an entity id, stays on the main version. A
`shadow` version scores a copy of the inputs off the response path.

Small requests run ONNX Runtime right on the event loop: a batch of one is a
few microseconds, far less than a hop to a worker thread. Requests with more
than `inline_max_elements` input elements run in a worker thread (ONNX
Runtime releases the GIL), so the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import Executor

import grpc
import grpc.aio
import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument
from opentelemetry import trace

import mlbus
from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb
from mlbus.api.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from mlbus.errors import InvalidInput, RetryableError, StatusName

from ._model import LoadedModel
from ._predlog import PredictionLog, PredictionRecord
from ._repository import CANARY, ModelRepository
from ._routing import ShadowRunner, goes_to_canary
from ._tensors import ResponseHeads, decode_inputs

SERVICE_NAME = "inference.GRPCInferenceService"
VERSION_PARAMETER = "mlbus.model_version"
ENTITY_PARAMETER = "mlbus.entity_id"
WORKER_PARAMETER = "mlbus.worker_pid"
"""With `--workers N`: the pid of the worker process that answered (int64)."""
PLATFORM = "onnxruntime_onnx"  # what Triton reports for ONNX models


class DeadlineExceeded(RetryableError):
    """The caller's deadline passed before the work could be done."""

    status: StatusName = "DEADLINE_EXCEEDED"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        repository: ModelRepository,
        *,
        required_models: tuple[str, ...] = (),
        alias: str | None = None,
        prediction_log: PredictionLog | None = None,
        executor: Executor | None = None,
        inline_max_elements: int = 4096,
        shadow: ShadowRunner | None = None,
        canary_weights: Mapping[str, float] | None = None,
        default_canary_weight: float = 0.0,
        worker_pid: int | None = None,
    ) -> None:
        self._repository = repository
        self._required = required_models
        self._alias = alias
        self._log = prediction_log
        self._executor = executor
        self._inline_max = inline_max_elements
        self._shadow = shadow
        self._canary_weights = dict(canary_weights or {})
        self._default_canary_weight = default_canary_weight
        self._worker_pid = worker_pid
        # What each served version's responses repeat, prepared once; gone with the version.
        self._heads: weakref.WeakKeyDictionary[LoadedModel, ResponseHeads] = (
            weakref.WeakKeyDictionary()
        )

    def _heads_of(self, model: LoadedModel) -> ResponseHeads:
        heads = self._heads.get(model)
        if heads is None:
            head = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version))
            head.parameters[VERSION_PARAMETER].int64_param = model.version
            if self._worker_pid is not None:
                head.parameters[WORKER_PARAMETER].int64_param = self._worker_pid
            heads = self._heads[model] = ResponseHeads(head)
        return heads

    def canary_weight(self, model: str) -> float:
        return self._canary_weights.get(model, self._default_canary_weight)

    def ready(self) -> bool:
        """Every required model is loaded (with none required: at least one is)."""
        if self._required:
            return all(self._repository.current(name) for name in self._required)
        return len(self._repository) > 0

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        model = self._repository.current(request.name)
        ready = model is not None and request.version in ("", str(model.version))
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="mlbus", version=mlbus.__version__, extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self._repository.get(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(model.version)],
            platform=PLATFORM,
            inputs=[
                tensor(name=t.name, datatype=t.datatype, shape=t.shape)
                for t in model.signature.inputs
            ],
            outputs=[
                tensor(name=t.name, datatype=t.datatype, shape=t.shape)
                for t in model.signature.outputs
            ],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()
        name = request.model_name
        model = self._repository.get(name, request.model_version)
        alias = self._alias
        entity_id: str | None = None
        canary = self._repository.canary(name)
        if canary is not None and not request.model_version:
            entity_id = _entity_of(request)
            if entity_id is not None and goes_to_canary(name, entity_id, self.canary_weight(name)):
                model, alias = canary, CANARY
        inputs = decode_inputs(request, model)
        names = _requested_outputs(request, model)
        outputs = await run_model(model, inputs, names, context, self._executor, self._inline_max)
        response = self._heads_of(model).response(outputs, raw=len(request.raw_input_contents) > 0)
        response.id = request.id
        shadow = self._repository.shadow(name) if self._shadow is not None else None
        if self._log is not None or shadow is not None:
            span = trace.get_current_span().get_span_context()
            trace_id = format(span.trace_id, "032x") if span.is_valid else None
            if entity_id is None and ENTITY_PARAMETER in request.parameters:
                entity_id = _entity_of(request)
            entity_ids = (entity_id,) if entity_id is not None else None
            if self._log is not None:
                self._log.offer(
                    PredictionRecord(
                        model,
                        alias,
                        inputs,
                        outputs,
                        (time.perf_counter() - started) * 1000,
                        trace_id,
                        entity_ids if _rows(inputs) == 1 else None,
                    )
                )
            if shadow is not None and self._shadow is not None and not request.model_version:
                self._shadow.submit(
                    shadow,
                    inputs,
                    entity_ids=entity_ids if _rows(inputs) == 1 else None,
                    trace_id=trace_id,
                )
        return response


def _entity_of(request: pb.ModelInferRequest) -> str | None:
    parameters = request.parameters
    if ENTITY_PARAMETER not in parameters:
        return None
    value = parameters[ENTITY_PARAMETER]
    kind = value.WhichOneof("parameter_choice")
    if kind == "string_param":
        return str(value.string_param)
    if kind == "int64_param":
        return str(value.int64_param)
    raise InvalidInput(f"parameter {ENTITY_PARAMETER!r} must be a string, got {kind}")


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 1


async def run_model(
    model: LoadedModel,
    inputs: Mapping[str, np.ndarray],
    names: list[str] | None,
    context: grpc.aio.ServicerContext,
    executor: Executor | None,
    inline_max_elements: int,
) -> dict[str, np.ndarray]:
    """Run `model` on the loop (small inputs) or a worker thread, within the call's deadline."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded(f"the deadline passed before {model.name} could run")
    try:
        if executor is None or sum(a.size for a in inputs.values()) <= inline_max_elements:
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


def _requested_outputs(request: pb.ModelInferRequest, model: LoadedModel) -> list[str] | None:
    if not request.outputs:
        return None
    names = [output.name for output in request.outputs]
    unknown = [name for name in names if name not in model.outputs]
    if unknown:
        raise InvalidInput(
            f"unknown output(s) {unknown}: model {model.name!r} v{model.version} has "
            f"{model.output_names}"
        )
    return names


def protects(method: str) -> bool:
    """The inference RPCs need the token when one is set; health and reflection never do."""
    return method.startswith(f"/{SERVICE_NAME}/")
