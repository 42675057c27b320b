"""Open Inference Protocol tensors ↔ numpy arrays, checked against a model's signature.

Requests may carry each input as typed `contents` or all inputs as
`raw_input_contents` (little-endian bytes, `BYTES` elements each prefixed by
a 4-byte little-endian length), as Triton and KServe clients send them.
Every problem is an `InvalidInput` that names the tensor, what the model
expects and what came.

Responses answer the way the request asked: raw inputs → `raw_output_contents`
(what Triton always does, and what `tritonclient`'s `as_numpy` reads), typed
inputs → typed `contents`. `ResponseHeads` keeps, per model version, the
parts of its raw responses that repeat from call to call.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb
from mlbus.errors import InvalidInput
from mlbus.events import TensorSpec
from mlbus.signatures import OIP_TO_NUMPY

from ._model import LoadedModel

# Which typed `InferTensorContents` field carries each datatype (FP16: raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# numpy dtype without byte order ("f4", "i8", "b1", …) → Open Inference Protocol datatype
_NUMPY_TO_OIP: dict[str, str] = {
    dtype.str[1:]: name for name, dtype in OIP_TO_NUMPY.items() if name != "BYTES"
}
_LENGTH = struct.Struct("<I")


def describe(spec: TensorSpec) -> str:
    return f"{spec.datatype} with shape {list(spec.shape)}"


def decode_inputs(request: pb.ModelInferRequest, model: LoadedModel) -> dict[str, np.ndarray]:
    """The request's inputs as numpy arrays, each checked against the model's signature."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one entry per input, in the order of `inputs`"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        spec = model.inputs.get(name)
        if spec is None:
            raise InvalidInput(
                f"unknown input {name!r}: model {model.name!r} v{model.version} takes "
                + ", ".join(f"{s.name!r} ({describe(s)})" for s in model.signature.inputs)
            )
        if name in arrays:
            raise InvalidInput(f"input {name!r} is given more than once")
        shape = _checked_shape(tensor, spec)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input {name!r} has typed contents while the request uses "
                    "raw_input_contents; use one or the other for all inputs"
                )
            arrays[name] = _from_raw(raw[index], spec, shape)
        else:
            arrays[name] = _from_contents(tensor.contents, spec, shape)
    if len(arrays) != len(model.inputs):
        missing = [s for s in model.signature.inputs if s.name not in arrays]
        raise InvalidInput(
            "missing input(s) " + ", ".join(f"{s.name!r} (expected {describe(s)})" for s in missing)
        )
    return arrays


def _checked_shape(tensor: pb.ModelInferRequest.InferInputTensor, spec: TensorSpec) -> list[int]:
    shape = list(tensor.shape)
    datatype = tensor.datatype
    fits = len(shape) == len(spec.shape) and all(
        got >= 0 and (want < 0 or got == want) for got, want in zip(shape, spec.shape, strict=True)
    )
    if datatype != spec.datatype or not fits:
        raise InvalidInput(
            f"input {tensor.name!r}: expected {describe(spec)}, "
            f"got {datatype or 'no datatype'} with shape {shape}"
        )
    return shape


def _count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _from_raw(data: bytes, spec: TensorSpec, shape: list[int]) -> np.ndarray:
    count = _count(shape)
    if spec.datatype == "BYTES":
        return _strings(_unpack_bytes(data, spec.name, count), spec.name).reshape(shape)
    dtype = OIP_TO_NUMPY[spec.datatype]
    if len(data) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {spec.name!r}: raw contents are {len(data)} bytes, shape {shape} of "
            f"{spec.datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _unpack_bytes(data: bytes, name: str, count: int) -> list[bytes]:
    """BYTES raw contents: each element a 4-byte little-endian length, then the bytes."""
    items: list[bytes] = []
    offset, end = 0, len(data)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"input {name!r}: raw BYTES contents end inside a length prefix")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(
                f"input {name!r}: raw BYTES element {len(items)} claims {length} bytes, "
                f"{end - offset} remain"
            )
        items.append(data[offset : offset + length])
        offset += length
    if len(items) != count:
        raise InvalidInput(
            f"input {name!r}: raw contents hold {len(items)} elements, expected {count}"
        )
    return items


def _strings(items: Sequence[bytes], name: str) -> np.ndarray:
    """ONNX strings are UTF-8; ONNX Runtime takes them as Python `str` objects."""
    try:
        return np.array([item.decode("utf-8") for item in items], dtype=np.object_)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input {name!r}: a BYTES element is not UTF-8 ({exc})") from None


def _from_contents(
    contents: pb.InferTensorContents, spec: TensorSpec, shape: list[int]
) -> np.ndarray:
    field = CONTENTS_FIELD.get(spec.datatype)
    if field is None:
        raise InvalidInput(
            f"input {spec.name!r}: {spec.datatype} has no typed contents field; "
            "send it in raw_input_contents"
        )
    values = getattr(contents, field)
    count = _count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input {spec.name!r}: {field} holds {len(values)} values, shape {shape} needs {count}"
        )
    if spec.datatype == "BYTES":
        return _strings(list(values), spec.name).reshape(shape)
    dtype = OIP_TO_NUMPY[spec.datatype]
    if spec.datatype in ("INT8", "INT16", "UINT8", "UINT16"):
        info = np.iinfo(dtype)
        if count and (min(values) < info.min or max(values) > info.max):
            raise InvalidInput(
                f"input {spec.name!r}: a value is outside the range of {spec.datatype}"
            )
    return np.fromiter(values, dtype=dtype, count=count).reshape(shape)


# ── responses ────────────────────────────────────────────────────────────────


def oip_datatype(array: np.ndarray) -> str:
    if array.dtype.kind in ("O", "U", "S"):
        return "BYTES"
    name = _NUMPY_TO_OIP.get(array.dtype.str[1:])
    if name is None:
        raise TypeError(f"no Open Inference Protocol datatype for numpy {array.dtype}")
    return name


OutputLayout = tuple[tuple[str, str, tuple[int, ...]], ...]
"""Each output's name, numpy dtype string and shape, in order."""


class ResponseHeads:
    """The start of a model version's responses, prepared once per output layout.

    `head` carries what every response of the version repeats (model name,
    version, parameters). For raw responses the output tensors' names,
    datatypes and shapes are prepared too, per layout (each output's name,
    dtype and shape: a new batch size is a new layout, up to `max_layouts`):
    filling them in costs ~3 µs a call, copying a prepared message ~0.5 µs.
    """

    def __init__(self, head: pb.ModelInferResponse, max_layouts: int = 64) -> None:
        self._head = head
        self._max_layouts = max_layouts
        # None: a layout whose raw contents need encoding (strings, big-endian), seen before
        self._layouts: dict[OutputLayout, pb.ModelInferResponse | None] = {}

    def response(self, outputs: dict[str, np.ndarray], *, raw: bool) -> pb.ModelInferResponse:
        """A new response holding `outputs` (see `encode_outputs`)."""
        response = pb.ModelInferResponse()
        if raw:
            layout: OutputLayout = tuple((n, a.dtype.str, a.shape) for n, a in outputs.items())
            prepared = self._layouts.get(layout, _UNSEEN)
            if prepared is _UNSEEN:
                prepared = self._prepare(outputs)
                if len(self._layouts) < self._max_layouts:
                    self._layouts[layout] = prepared
            if prepared is not None:
                response.CopyFrom(prepared)
                response.raw_output_contents.extend([a.tobytes() for a in outputs.values()])
                return response
        response.CopyFrom(self._head)
        encode_outputs(response, outputs, raw=raw)
        return response

    def _prepare(self, outputs: dict[str, np.ndarray]) -> pb.ModelInferResponse | None:
        if not all(_plain_raw(array) for array in outputs.values()):
            return None
        prepared = pb.ModelInferResponse()
        prepared.CopyFrom(self._head)
        for name, array in outputs.items():
            _add_tensor(prepared, name, oip_datatype(array), array.shape)
        return prepared


_UNSEEN: Any = object()


def _plain_raw(array: np.ndarray) -> bool:
    """Its raw contents are its bytes as they are: a little-endian (or one-byte) number."""
    return array.dtype.kind not in ("O", "U", "S") and array.dtype.byteorder != ">"


def _add_tensor(
    response: pb.ModelInferResponse, name: str, datatype: str, shape: Sequence[int]
) -> pb.ModelInferResponse.InferOutputTensor:
    tensor: pb.ModelInferResponse.InferOutputTensor = response.outputs.add()
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend(shape)
    return tensor


def _as_bytes(element: object) -> bytes:
    if isinstance(element, bytes):
        return element
    return str(element).encode("utf-8")


def encode_outputs(
    response: pb.ModelInferResponse, outputs: dict[str, np.ndarray], *, raw: bool
) -> None:
    """Append `outputs` to `response`, raw (`raw_output_contents`) or typed.

    FP16 has no typed contents field, so a response with an FP16 output is raw.
    """
    datatypes = [oip_datatype(array) for array in outputs.values()]
    raw = raw or "FP16" in datatypes
    for (name, array), datatype in zip(outputs.items(), datatypes, strict=True):
        tensor = _add_tensor(response, name, datatype, array.shape)
        if datatype == "BYTES":
            elements = [_as_bytes(e) for e in array.ravel()]
            if raw:
                response.raw_output_contents.append(
                    b"".join(_LENGTH.pack(len(e)) + e for e in elements)
                )
            else:
                tensor.contents.bytes_contents.extend(elements)
        elif raw:
            if array.dtype.byteorder == ">":
                array = array.astype(array.dtype.newbyteorder("<"))
            response.raw_output_contents.append(array.tobytes())  # C order
        else:
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())
