# ruff: noqa: N802 - method names are the proto's RPC names
"""The Open Inference Protocol (KServe v2) gRPC service: `inference.GRPCInferenceService`.

Handlers raise `mlbus.errors` types; the error interceptor of `mlbus.rpc`
turns them into status codes (unknown model or version → NOT_FOUND, bad
tensor → INVALID_ARGUMENT, expired deadline → DEADLINE_EXCEEDED).

Each `ModelInfer` looks its model up once and uses that version to the end,
so a hot swap never mixes versions inside one request; the response names it
in `model_version` and in `parameters["mlbus.model_version"]`.

Routing (canary by the entity in `parameters["mlbus.entity_id"]`), running,
logging and shadowing are the scoring core's (`_scoring.Scorer`), shared with
Predict; this module only decodes tensors and encodes the response.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping

import grpc
import grpc.aio
import numpy as np

import mlbus
from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb
from mlbus.api.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from mlbus.errors import InvalidInput

from ._model import LoadedModel
from ._predlog import PredictionRecord
from ._scoring import Scorer, current_trace_id
from ._tensors import ResponseHeads, decode_inputs

SERVICE_NAME = "inference.GRPCInferenceService"
VERSION_PARAMETER = "mlbus.model_version"
ENTITY_PARAMETER = "mlbus.entity_id"
WORKER_PARAMETER = "mlbus.worker_pid"
"""With `--workers N`: the pid of the worker process that answered (int64)."""
PLATFORM = "onnxruntime_onnx"  # what Triton reports for ONNX models


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        scorer: Scorer,
        *,
        required_models: tuple[str, ...] = (),
        worker_pid: int | None = None,
    ) -> None:
        self._scorer = scorer
        self._repository = scorer.repository
        self._required = required_models
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
        scorer = self._scorer
        name = request.model_name
        pinned = request.model_version
        # The entity routes the request (unless a version is pinned) and labels its log.
        entity_id = _entity_of(request)
        model, alias = scorer.route(name, entity_id, pinned)
        inputs = decode_inputs(request, model)
        names = _requested_outputs(request, model)
        outputs = await scorer.run(model, inputs, names, context)
        response = self._heads_of(model).response(outputs, raw=len(request.raw_input_contents) > 0)
        response.id = request.id
        shadow = scorer.shadow_of(name) if not pinned else None
        if scorer.logs or shadow is not None:
            trace_id = current_trace_id()
            entity_ids = (entity_id,) if entity_id is not None and _rows(inputs) == 1 else None
            scorer.log(
                PredictionRecord(
                    model,
                    alias,
                    inputs,
                    outputs,
                    (time.perf_counter() - started) * 1000,
                    trace_id,
                    entity_ids,
                )
            )
            if shadow is not None:
                scorer.shadow(shadow, inputs, entity_ids=entity_ids, trace_id=trace_id)
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
