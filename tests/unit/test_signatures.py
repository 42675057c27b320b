"""One reading of ONNX Runtime signatures for the inference service and the CLI.

The CLI used to keep its own, smaller table: a model with a UINT16 input that
inference serves could not be profiled by `mlbus models register --sample`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from mlbus.cli._models import profile_from_sample
from mlbus.inference import ModelRefused, load_model
from mlbus.signatures import OIP_TO_NUMPY, ORT_TO_OIP, UnsupportedTensor, tensor_specs


def cast_model(input_type: int) -> bytes:
    """`a` [-1, 1] of `input_type` → Cast to float → `score` [-1, 1]."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["a"], ["score"], to=TensorProto.FLOAT)],
        "cast",
        [helper.make_tensor_value_info("a", input_type, [None, 1])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def ort_numpy_name(dtype: np.dtype) -> str:
    """ONNX Runtime's name for a numpy dtype (its 'tensor(float)' is numpy's float32)."""
    return {"float32": "float", "float64": "double", "bool": "bool"}.get(dtype.name, dtype.name)


def test_every_served_datatype_has_the_numpy_dtype_onnx_runtime_takes() -> None:
    assert set(ORT_TO_OIP.values()) == set(OIP_TO_NUMPY)
    for ort_type, datatype in ORT_TO_OIP.items():
        if datatype != "BYTES":  # strings go to ONNX Runtime as Python objects
            assert ort_type == f"tensor({ort_numpy_name(OIP_TO_NUMPY[datatype])})"


def test_a_tensor_without_a_datatype_is_named_with_what_can_be_served() -> None:
    args = [SimpleNamespace(name="x", type="tensor(float)", shape=[None, 3])]
    assert tensor_specs(args)[0].shape == (-1, 3)
    args.append(SimpleNamespace(name="when", type="tensor(bfloat16)", shape=[None]))
    with pytest.raises(UnsupportedTensor, match=r"'when' has type tensor\(bfloat16\); .*FP32"):
        tensor_specs(args)


def test_inference_refuses_an_unsupported_tensor_at_the_signature_stage() -> None:
    data = cast_model(TensorProto.BFLOAT16)
    ort.InferenceSession(data, providers=["CPUExecutionProvider"])  # ONNX Runtime loads it
    with pytest.raises(ModelRefused) as refused:
        load_model("m", 4, data, expected_sha256=hashlib.sha256(data).hexdigest())
    assert refused.value.stage == "signature"
    assert "m v4: 'a' has type tensor(bfloat16)" in refused.value.reason


def test_the_cli_profiles_a_model_with_an_input_inference_serves(tmp_path: Path) -> None:
    sample = tmp_path / "sample.csv"
    sample.write_text("a\n" + "\n".join(str(v) for v in range(50)) + "\n")
    profile = profile_from_sample(cast_model(TensorProto.UINT16), sample)
    assert profile.n_samples == 50
    assert set(profile.features) == {"a"}
    assert profile.prediction is not None  # the model ran on the sample
