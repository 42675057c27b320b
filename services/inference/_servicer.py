# ruff: noqa: N802 - method names are the proto's RPC names
"""The Open Inference Protocol (KServe v2) gRPC service: `inference.GRPCInferenceService`.

Handlers raise `mlbus.errors` types; the error interceptor of `mlbus.rpc`
turns them into status codes (unknown model or version → NOT_FOUND, bad
tensor → INVALID_ARGUMENT, expired deadline → DEADLINE_EXCEEDED).

Each `ModelInfer` looks its model up once and uses that version to the end,
so a hot swap never mixes versions inside one request; the response names it
in `model_version` and in `parameters["mlbus.model_version"]`.

Small requests run ONNX Runtime right on the event loop: a batch of one is a
few microseconds, far less than a hop to a worker thread. Requests with more
than `inline_max_elements` input elements run in a worker thread (ONNX
Runtime releases the GIL), so the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

import grpc
import grpc.aio
import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument
from opentelemetry import trace

import mlbus
from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb
from mlbus.api.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from mlbus.errors import InvalidInput, RetryableError

from ._model import LoadedModel
from ._predlog import PredictionLog, PredictionRecord
from ._repository import ModelRepository
from ._tensors import decode_inputs, encode_outputs

SERVICE_NAME = "inference.GRPCInferenceService"
VERSION_PARAMETER = "mlbus.model_version"
PLATFORM = "onnxruntime_onnx"  # what Triton reports for ONNX models


class DeadlineExceeded(RetryableError):
    """The caller's deadline passed before the work could be done."""

    grpc_status = grpc.StatusCode.DEADLINE_EXCEEDED


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
    ) -> None:
        self._repository = repository
        self._required = required_models
        self._alias = alias
        self._log = prediction_log
        self._executor = executor
        self._inline_max = inline_max_elements

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
        model = self._repository.get(request.model_name, request.model_version)
        inputs = decode_inputs(request, model)
        names = _requested_outputs(request, model)
        outputs = await self._run(model, inputs, names, context)
        version = model.version
        response = pb.ModelInferResponse(
            model_name=model.name, model_version=str(version), id=request.id
        )
        response.parameters[VERSION_PARAMETER].int64_param = version
        encode_outputs(response, outputs, raw=len(request.raw_input_contents) > 0)
        if self._log is not None:
            span = trace.get_current_span().get_span_context()
            self._log.offer(
                PredictionRecord(
                    model,
                    self._alias,
                    inputs,
                    outputs,
                    (time.perf_counter() - started) * 1000,
                    format(span.trace_id, "032x") if span.is_valid else None,
                )
            )
        return response

    async def _run(
        self,
        model: LoadedModel,
        inputs: dict[str, np.ndarray],
        names: list[str] | None,
        context: grpc.aio.ServicerContext,
    ) -> dict[str, np.ndarray]:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(f"the deadline passed before {model.name} could run")
        try:
            if self._executor is None or sum(a.size for a in inputs.values()) <= self._inline_max:
                return model.run(inputs, names)
            loop = asyncio.get_running_loop()
            running = loop.run_in_executor(self._executor, model.run, inputs, names)
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
