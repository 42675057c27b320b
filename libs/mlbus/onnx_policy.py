"""What an ONNX artifact may hold: one check, run by the registry and again by inference.

The registry runs `check_model` on every registration, before the bytes are
stored; inference runs it again before ONNX Runtime sees them (defence in
depth: an artifact store written by hand, a registry of an older version).
Each refusal is an `UnsafeModel` (INVALID_ARGUMENT) naming the tensor or node:

- **External data, anywhere.** A tensor whose bytes live in another file
  (`data_location: EXTERNAL`) is refused wherever it points, not only when it
  climbs out (`../../etc/passwd`). An artifact is one content-addressed file
  and its sha256 is the whole of its integrity: external data would be bytes
  the hash does not cover, at a path the model's author chose (ONNX Runtime
  resolves it against the serving process's working directory when a model
  is loaded from bytes). Artifacts are self-contained; the trainer's are.
- **Operator domains other than ONNX's own.** Nodes may use the default
  domain (`""`, `ai.onnx`) and `ai.onnx.ml` (what skl2onnx emits). A custom
  domain needs a custom-op library nobody loads; `com.microsoft` contrib ops
  would tie artifacts to ONNX Runtime internals. Nodes inside subgraphs and
  model-local functions are checked too (calling a local function is a node
  in the function's own domain, so it is refused as well).
- **Tensors declared larger than `max_tensor_bytes`,** one by one and in
  total: initializers, sparse initializers and constant attributes. The size
  is the declared one (element count × element width), not the bytes in the
  file: a sparse or empty tensor can declare gigabytes in a few bytes, and
  ONNX Runtime allocates them dense when it loads the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from mlbus.config import DEFAULT_MAX_TENSOR_MB
from mlbus.errors import InvalidInput

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})

# Bytes per element; BYTES/STRING tensors count their stored strings instead.
_WIDTH: dict[int, int] = {
    onnx.TensorProto.BOOL: 1,
    onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT16: 2,
    onnx.TensorProto.INT16: 2,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.UINT32: 4,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.COMPLEX64: 8,
    onnx.TensorProto.COMPLEX128: 16,
}
_WIDEST = 16


class UnsafeModel(InvalidInput):
    """An ONNX model holds something no artifact may hold (see the module's docstring)."""


@dataclass(frozen=True)
class ArtifactPolicy:
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_MB << 20
    setting: str = "MLBUS_REGISTRY_MAX_TENSOR_MB"
    """The setting that raises the limit, named in refusals."""


def parse_model(data: bytes) -> onnx.ModelProto:
    """`data` as an ONNX ModelProto (no external data is loaded); InvalidInput if it is not one."""
    if not data:
        raise InvalidInput("the artifact is empty, expected an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidInput(f"the artifact is not an ONNX model (cannot parse it: {exc})") from None
    return model


def check_model(model: onnx.ModelProto, policy: ArtifactPolicy | None = None) -> None:
    """Raise `UnsafeModel` naming the first thing `model` may not hold (module docstring)."""
    policy = policy or ArtifactPolicy()
    limit = policy.max_tensor_bytes
    total = 0
    for where, tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            raise UnsafeModel(
                f"{where} keeps its data outside the artifact (external data at {location!r}); "
                "artifacts must be self-contained: save the model without external data"
            )
        size = _declared_bytes(tensor, limit)
        if size > limit:
            raise UnsafeModel(
                f"{where} declares more than {limit} bytes, the limit ({policy.setting})"
            )
        total += size
        if total > limit:
            raise UnsafeModel(
                f"the model's tensors declare more than {limit} bytes in total, "
                f"the limit (reached at {where}; {policy.setting})"
            )
    for where, node in _nodes(model):
        if node.domain not in ALLOWED_DOMAINS:
            raise UnsafeModel(
                f"{where} ({node.op_type}) uses the operator domain {node.domain!r}; "
                f"only {sorted(ALLOWED_DOMAINS)} are served (no custom-op libraries)"
            )


def _declared_bytes(tensor: onnx.TensorProto, limit: int) -> int:
    """Element count × width; stops counting past `limit` (a million huge dims stay cheap)."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(bytes(s)) for s in tensor.string_data)
    if any(dim <= 0 for dim in tensor.dims):
        return 0
    size = _WIDTH.get(tensor.data_type, _WIDEST)
    for dim in tensor.dims:
        size *= int(dim)
        if size > limit:
            return size
    return size


def _graphs(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """The main graph and every subgraph under it (If/Loop/Scan bodies), depth first."""
    stack: list[tuple[str, onnx.GraphProto]] = [(f"graph {model.graph.name!r}", model.graph)]
    for function in model.functions:
        stack += _subgraphs(f"function {function.domain}.{function.name}", function.node)
    while stack:
        where, graph = stack.pop()
        yield where, graph
        stack += _subgraphs(where, graph.node)


def _subgraphs(where: str, nodes: Any) -> list[tuple[str, onnx.GraphProto]]:
    found: list[tuple[str, onnx.GraphProto]] = []
    for node in nodes:
        for attribute in node.attribute:
            inner = f"{where} / node {node.name or node.op_type!r} / {attribute.name}"
            if attribute.HasField("g"):
                found.append((inner, attribute.g))
            found += [(inner, g) for g in attribute.graphs]
    return found


def _all_nodes(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.NodeProto]]:
    for function in model.functions:
        for node in function.node:
            yield f"function {function.domain}.{function.name}", node
    for where, graph in _graphs(model):
        for node in graph.node:
            yield where, node


def _nodes(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.NodeProto]]:
    for where, node in _all_nodes(model):
        yield f"node {node.name or node.op_type!r} in {where}", node


def _tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every constant tensor: initializers, sparse ones (values and indices), attributes."""
    for where, graph in _graphs(model):
        for tensor in graph.initializer:
            yield f"initializer {tensor.name!r} in {where}", tensor
        for sparse in graph.sparse_initializer:
            yield from _sparse(f"sparse initializer {sparse.values.name!r} in {where}", sparse)
    for where, node in _all_nodes(model):
        for attribute in node.attribute:
            here = f"attribute {attribute.name!r} of node {node.name or node.op_type!r} in {where}"
            if attribute.HasField("t"):
                yield here, attribute.t
            for tensor in attribute.tensors:
                yield here, tensor
            if attribute.HasField("sparse_tensor"):
                yield from _sparse(here, attribute.sparse_tensor)
            for sparse in attribute.sparse_tensors:
                yield from _sparse(here, sparse)


def _sparse(where: str, sparse: onnx.SparseTensorProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """A sparse tensor as ONNX Runtime loads it: dense, at its declared shape."""
    dense = onnx.TensorProto(data_type=sparse.values.data_type, dims=sparse.dims)
    dense.data_location = sparse.values.data_location
    dense.external_data.extend(sparse.values.external_data)
    yield where, dense
    yield f"{where} (indices)", sparse.indices
