"""A model's signature as ONNX Runtime reports it, in Open Inference Protocol terms.

The datatype tables and one reading of a session's tensors, for every place
that opens a session: the inference service (what it can serve, the arrays it
builds) and `mlbus models register --sample` (what it feeds the model to
profile it). The registry reads signatures from the ONNX file itself, without
ONNX Runtime (services/registry/_onnx.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from mlbus.events import ModelSignature, TensorDatatype, TensorSpec

if TYPE_CHECKING:
    import onnxruntime as ort

ORT_TO_OIP: dict[str, TensorDatatype] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
"""ONNX Runtime's type names (`NodeArg.type`) → Open Inference Protocol datatypes."""

OIP_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
"""Open Inference Protocol datatype → the numpy dtype ONNX Runtime takes (little-endian)."""


class UnsupportedTensor(ValueError):
    """An input or output whose type has no Open Inference Protocol datatype."""


def tensor_specs(args: Iterable[Any]) -> tuple[TensorSpec, ...]:
    """`session.get_inputs()` or `get_outputs()` as tensor specs (-1: any size)."""
    specs = []
    for arg in args:
        datatype = ORT_TO_OIP.get(arg.type)
        if datatype is None:
            raise UnsupportedTensor(
                f"{arg.name!r} has type {arg.type}; only tensors of "
                f"{', '.join(sorted(set(ORT_TO_OIP.values())))} can be served"
            )
        shape = tuple(dim if isinstance(dim, int) and dim > 0 else -1 for dim in arg.shape)
        specs.append(TensorSpec(name=arg.name, datatype=datatype, shape=shape))
    return tuple(specs)


def session_signature(session: ort.InferenceSession) -> ModelSignature:
    """The inputs and outputs a session takes and gives."""
    return ModelSignature(
        inputs=tensor_specs(session.get_inputs()), outputs=tensor_specs(session.get_outputs())
    )
