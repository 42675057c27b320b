"""Loading a model version: sha256, ONNX Runtime parse, signature checks, warm-up.

The model builders here are shared by the other inference tests.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlbus.events import ModelSignature, TensorSpec
from mlbus.inference import LoadedModel, ModelRefused, load_model
from mlbus.inference._model import signature_problems
from mlbus.signatures import session_signature

FEATURES = 20
WEIGHTS = np.linspace(-1.0, 1.0, FEATURES, dtype=np.float32).reshape(FEATURES, 1)


def linear_model(version: int, *, width: int = FEATURES, input_name: str = "x") -> bytes:
    """`y = x @ WEIGHTS + version`: every version answers recognisably differently."""
    weights = np.linspace(-1.0, 1.0, width, dtype=np.float32).reshape(width, 1)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        f"linear_v{version}",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.array([float(version)], dtype=np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def version_of(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which version produced `y` from `x` (the bias each version adds)."""
    return np.rint(y - x.astype(np.float32) @ WEIGHTS).astype(int).ravel()


IDENTITY_TYPES = {
    "f32": TensorProto.FLOAT,
    "f64": TensorProto.DOUBLE,
    "i32": TensorProto.INT32,
    "i64": TensorProto.INT64,
    "b": TensorProto.BOOL,
    "s": TensorProto.STRING,
}


def identity_model() -> bytes:
    """One Identity per datatype: `in_<k>` [-1, 3] → `out_<k>`."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [f"in_{k}"], [f"out_{k}"]) for k in IDENTITY_TYPES],
        "identities",
        [helper.make_tensor_value_info(f"in_{k}", t, [None, 3]) for k, t in IDENTITY_TYPES.items()],
        [
            helper.make_tensor_value_info(f"out_{k}", t, [None, 3])
            for k, t in IDENTITY_TYPES.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def loaded(version: int, **kwargs: object) -> LoadedModel:
    data = linear_model(version, **kwargs)  # type: ignore[arg-type]
    return load_model("m", version, data, expected_sha256=sha(data))


# ── tests ────────────────────────────────────────────────────────────────────


def test_a_loaded_model_reports_its_signature_and_runs() -> None:
    model = loaded(3)
    assert model.signature.inputs == (TensorSpec(name="x", datatype="FP32", shape=(-1, 20)),)
    assert model.signature.outputs == (TensorSpec(name="y", datatype="FP32", shape=(-1, 1)),)
    x = np.random.default_rng(0).normal(size=(5, FEATURES)).astype(np.float32)
    y = model.run({"x": x})["y"]
    assert y.shape == (5, 1)
    assert list(version_of(x, y)) == [3] * 5


def test_sessions_use_explicit_single_threads() -> None:
    options = loaded(1).session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)


def test_a_sha256_mismatch_is_refused() -> None:
    data = linear_model(1)
    with pytest.raises(ModelRefused) as refused:
        load_model("m", 1, data, expected_sha256=sha(b"something else"))
    assert refused.value.stage == "sha256"
    assert sha(data) in str(refused.value)


def test_corrupt_bytes_are_refused_at_parse() -> None:
    data = linear_model(1)[:-40] + b"\x00garbage"
    with pytest.raises(ModelRefused) as refused:
        load_model("m", 1, data, expected_sha256=sha(data))
    assert refused.value.stage == "parse"
    assert "not an ONNX model (cannot parse it" in str(refused.value)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"width": 10}, "shape [-1, 10]"),
        ({"input_name": "features"}, "['x'] of the served v1 are missing"),
    ],
)
def test_an_incompatible_signature_is_refused(kwargs: dict[str, object], words: str) -> None:
    served = loaded(1)
    data = linear_model(2, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ModelRefused) as refused:
        load_model("m", 2, data, expected_sha256=sha(data), served=served)
    assert refused.value.stage == "signature"
    assert words in str(refused.value)


def test_the_artifact_must_match_the_published_signature() -> None:
    published = ModelSignature(
        inputs=(TensorSpec(name="x", datatype="FP64", shape=(-1, 20)),),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 1)),),
    )
    data = linear_model(1)
    with pytest.raises(ModelRefused, match="input 'x' is FP32, the published one has FP64"):
        load_model("m", 1, data, expected_sha256=sha(data), published_signature=published)


def test_a_version_accepting_more_is_compatible() -> None:
    served = ModelSignature(
        inputs=(TensorSpec(name="x", datatype="FP32", shape=(1, 20)),), outputs=()
    )
    wider = ModelSignature(
        inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 20)),), outputs=()
    )
    assert signature_problems(wider, served, what="served") == []
    assert signature_problems(served, wider, what="served") == [
        "input 'x' has shape [1, 20], served has [-1, 20]"
    ]


def test_the_identity_model_covers_every_served_datatype() -> None:
    data = identity_model()
    model = load_model("ids", 1, data, expected_sha256=sha(data))
    assert [t.datatype for t in session_signature(model.session).inputs] == [
        "FP32",
        "FP64",
        "INT32",
        "INT64",
        "BOOL",
        "BYTES",
    ]
