"""ONNX files the registry and inference must refuse (`mlbus.onnx_policy`), and one they accept.

Each is a tiny `y = x + w` model (x, y: FP32 [N, 2]) with one thing wrong,
built with `onnx.helper` so the tests and the soak throw the same files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ESCAPING_PATH = "../../etc/passwd"


def _model(
    nodes: list[onnx.NodeProto],
    initializers: Sequence[onnx.TensorProto] = (),
    *,
    sparse: Sequence[onnx.SparseTensorProto] = (),
    domains: dict[str, int] | None = None,
) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph(
        nodes, "g", [x], [y], list(initializers), sparse_initializer=list(sparse)
    )
    opsets = [helper.make_opsetid(d, v) for d, v in {"": 17, **(domains or {})}.items()]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _weight(values: np.ndarray | None = None) -> onnx.TensorProto:
    return numpy_helper.from_array(
        np.ones(2, np.float32) if values is None else values.astype(np.float32), "w"
    )


def good_model(offset: float = 1.0) -> bytes:
    """y = x + offset: what every refusal below is measured against."""
    return _model([helper.make_node("Add", ["x", "w"], ["y"])], [_weight(np.full(2, offset))])


def external_data_model(location: str = ESCAPING_PATH) -> bytes:
    """The weight `w` is declared to live in the file at `location` (read by whoever loads it)."""
    weight = _weight()
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return _model([helper.make_node("Add", ["x", "w"], ["y"])], [weight])


def custom_domain_model(domain: str = "com.example.evil") -> bytes:
    """The one node is an operator of a custom-op domain no library provides."""
    node = helper.make_node("Exfiltrate", ["x"], ["y"], domain=domain)
    return _model([node], domains={domain: 1})


def large_initializer_model(size_bytes: int) -> bytes:
    """A dense FP32 initializer of at least `size_bytes` (summed by a ReduceSum into y's shape)."""
    count = max(size_bytes // 4 + 1, 2)
    big = numpy_helper.from_array(np.zeros(count, np.float32), "big")
    nodes = [
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
        helper.make_node("Add", ["x", "total"], ["y"]),
    ]
    return _model(nodes, [big])


def huge_sparse_model() -> bytes:
    """A sparse initializer of a few bytes that declares a 4 TiB dense tensor."""
    values = numpy_helper.from_array(np.ones(1, np.float32), "huge")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "huge_indices")
    sparse = helper.make_sparse_tensor(values, indices, [1 << 40])
    nodes = [
        helper.make_node("ReduceSum", ["huge"], ["total"], keepdims=1),
        helper.make_node("Add", ["x", "total"], ["y"]),
    ]
    return _model(nodes, sparse=[sparse])


def hostile_models(max_tensor_bytes: int) -> dict[str, bytes]:
    """Each refused kind by name; `large_initializer` is just above `max_tensor_bytes`."""
    return {
        "external_data_escaping": external_data_model(ESCAPING_PATH),
        "external_data_beside": external_data_model("weights.bin"),
        "custom_domain": custom_domain_model(),
        "contrib_domain": custom_domain_model("com.microsoft"),
        "large_initializer": large_initializer_model(max_tensor_bytes + 1),
        "huge_sparse_initializer": huge_sparse_model(),
    }
