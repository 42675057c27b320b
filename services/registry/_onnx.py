"""ONNX validation and signature extraction: only checked ONNX models enter the registry."""

from __future__ import annotations

from typing import Any

import onnx

from mlbus.errors import InvalidInput
from mlbus.events import ModelSignature, TensorDatatype, TensorSpec
from mlbus.onnx_policy import ArtifactPolicy, check_model, parse_model

_ONNX_TO_OIP: dict[int, TensorDatatype] = {
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.STRING: "BYTES",
}


def validate_onnx(data: bytes, policy: ArtifactPolicy | None = None) -> ModelSignature:
    """Parse and check `data` as an ONNX model; return its signature or raise InvalidInput.

    `mlbus.onnx_policy` runs first: no external data, no custom-op domains, no
    tensor above the limit (`UnsafeModel`, INVALID_ARGUMENT naming the problem).
    """
    model = parse_model(data)
    check_model(model, policy)
    if not model.graph.output:
        raise InvalidInput("the artifact is not an ONNX model (its graph has no outputs)")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"the ONNX model failed onnx.checker: {first}") from None
    return signature_of(model)


def signature_of(model: onnx.ModelProto) -> ModelSignature:
    """Inputs (initializers excluded) and outputs as Open Inference Protocol tensors."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_tensor(v) for v in model.graph.input if v.name not in initializers)
    if not inputs:
        raise InvalidInput("the ONNX model has no inputs")
    return ModelSignature(inputs=inputs, outputs=tuple(_tensor(v) for v in model.graph.output))


def _tensor(value: Any) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        hint = (
            " (a ZipMap output of skl2onnx: convert with options={id(model): {'zipmap': False}})"
            if kind in ("sequence_type", "map_type")
            else ""
        )
        raise InvalidInput(
            f"ONNX value {value.name!r} is a {kind or 'untyped value'}, not a tensor; "
            f"only tensor inputs and outputs can be served{hint}"
        )
    tensor = value.type.tensor_type
    datatype = _ONNX_TO_OIP.get(tensor.elem_type)
    if datatype is None:
        # An element type this onnx does not know has no name (Name() raises ValueError,
        # which answered INTERNAL: found by the soak's fuzzing).
        known = tensor.elem_type in onnx.TensorProto.DataType.values()
        name = (
            onnx.TensorProto.DataType.Name(tensor.elem_type)
            if known
            else f"unknown ({tensor.elem_type})"
        )
        raise InvalidInput(f"ONNX tensor {value.name!r} has unsupported element type {name}")
    shape = tuple(
        dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else -1
        for dim in tensor.shape.dim
    )
    return TensorSpec(name=value.name, datatype=datatype, shape=shape)
