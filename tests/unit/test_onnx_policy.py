"""`mlbus.onnx_policy`: what an ONNX artifact may hold, checked by the registry and inference."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlbus.errors import InvalidInput
from mlbus.inference import ModelRefused, load_model
from mlbus.onnx_policy import ArtifactPolicy, UnsafeModel, check_model, parse_model
from mlbus.registry._onnx import validate_onnx
from mlbus.soak._hostile_onnx import (
    ESCAPING_PATH,
    custom_domain_model,
    external_data_model,
    good_model,
    hostile_models,
    huge_sparse_model,
    large_initializer_model,
)

SMALL = ArtifactPolicy(max_tensor_bytes=1 << 20)


def refusal(data: bytes, policy: ArtifactPolicy = SMALL) -> str:
    with pytest.raises(UnsafeModel) as caught:
        check_model(parse_model(data), policy)
    assert caught.value.status == "INVALID_ARGUMENT"
    return str(caught.value)


def test_a_plain_model_passes_and_so_does_a_trained_one_shape() -> None:
    check_model(parse_model(good_model()), SMALL)
    check_model(parse_model(large_initializer_model((1 << 20) - 64)), SMALL)


def test_external_data_escaping_the_artifact_is_refused_naming_the_tensor_and_path() -> None:
    message = refusal(external_data_model(ESCAPING_PATH))
    assert "initializer 'w'" in message
    assert ESCAPING_PATH in message
    assert "self-contained" in message


def test_external_data_beside_the_artifact_is_refused_too() -> None:
    # Not only escapes: bytes outside the file are bytes its sha256 does not cover.
    assert "'weights.bin'" in refusal(external_data_model("weights.bin"))


def test_custom_and_contrib_domains_are_refused_naming_node_and_domain() -> None:
    message = refusal(custom_domain_model("com.example.evil"))
    assert "'com.example.evil'" in message
    assert "Exfiltrate" in message
    assert "'com.microsoft'" in refusal(custom_domain_model("com.microsoft"))


def test_ml_domain_is_allowed() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    node = helper.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", scale=[2.0, 2.0])
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
    )
    check_model(model, SMALL)


def test_a_custom_domain_inside_a_subgraph_is_found() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    cond = numpy_helper.from_array(np.array(True), "cond")
    branch_out = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])
    evil = helper.make_graph(
        [helper.make_node("Steal", ["x"], ["b"], domain="evil.ops")], "then", [], [branch_out]
    )
    plain = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["b"])], "else", [], [branch_out]
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=evil, else_branch=plain)
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y], [cond]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    message = refusal(model.SerializeToString())
    assert "'evil.ops'" in message
    assert "then_branch" in message


def test_an_initializer_above_the_limit_is_refused_naming_it_and_the_setting() -> None:
    message = refusal(large_initializer_model((1 << 20) + 1))
    assert "initializer 'big'" in message
    assert "MLBUS_REGISTRY_MAX_TENSOR_MB" in message


def test_a_sparse_initializer_counts_at_its_dense_declared_size() -> None:
    data = huge_sparse_model()
    assert len(data) < 1000
    assert "sparse initializer 'huge'" in refusal(data, ArtifactPolicy())


def test_many_tensors_under_the_limit_one_by_one_are_refused_in_total() -> None:
    model = parse_model(good_model())
    for i in range(3):
        model.graph.initializer.append(
            numpy_helper.from_array(np.zeros(100_000, np.float32), f"part{i}")
        )
    assert "in total" in refusal(model.SerializeToString(), ArtifactPolicy(1_000_000))


def test_a_constant_attribute_is_a_tensor_too() -> None:
    model = parse_model(good_model())
    big = numpy_helper.from_array(np.zeros(300_000, np.float32), "c")
    model.graph.node.append(helper.make_node("Constant", [], ["unused"], value=big))
    assert "attribute 'value'" in refusal(model.SerializeToString())


def test_absurd_dims_stay_cheap_and_zero_sized_tensors_count_nothing() -> None:
    model = parse_model(good_model())
    empty = onnx.TensorProto(name="empty", data_type=TensorProto.FLOAT, dims=[1 << 62, 0])
    model.graph.initializer.append(empty)
    check_model(model, SMALL)
    model.graph.initializer.append(
        onnx.TensorProto(name="vast", data_type=TensorProto.FLOAT, dims=[1 << 62] * 100_000)
    )
    assert "'vast'" in refusal(model.SerializeToString())


def test_garbage_is_invalid_input_not_a_crash() -> None:
    with pytest.raises(InvalidInput, match="not an ONNX model"):
        parse_model(b"\xff\xff\xff\xff garbage")
    with pytest.raises(InvalidInput, match="empty"):
        parse_model(b"")


@pytest.mark.parametrize("kind", sorted(hostile_models(1 << 20)))
def test_the_registry_validation_refuses_every_hostile_kind(kind: str) -> None:
    with pytest.raises(UnsafeModel):
        validate_onnx(hostile_models(1 << 20)[kind], SMALL)


@pytest.mark.parametrize("kind", sorted(hostile_models(1 << 20)))
def test_inference_refuses_every_hostile_kind_at_its_policy_stage(kind: str) -> None:
    data = hostile_models(1 << 20)[kind]
    with pytest.raises(ModelRefused) as caught:
        load_model(
            "m", 2, data, expected_sha256=hashlib.sha256(data).hexdigest(), max_tensor_bytes=1 << 20
        )
    assert caught.value.stage == "policy"
    assert "MLBUS_REGISTRY" not in str(caught.value)


def test_inference_still_loads_a_good_model() -> None:
    data = good_model()
    model = load_model("m", 1, data, expected_sha256=hashlib.sha256(data).hexdigest())
    out = model.run({"x": np.zeros((1, 2), np.float32)})
    assert out["y"].tolist() == [[1.0, 1.0]]
