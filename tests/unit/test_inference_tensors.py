"""Open Inference Protocol tensors ↔ numpy, for every datatype, typed and raw."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mlbus.api.inference.v2 import grpc_predict_v2_pb2 as pb
from mlbus.errors import InvalidInput
from mlbus.inference import LoadedModel, load_model
from mlbus.inference._tensors import ResponseHeads, decode_inputs, encode_outputs
from tests.unit.test_inference_model import IDENTITY_TYPES, identity_model, loaded, sha

DATATYPES = {
    "f32": "FP32",
    "f64": "FP64",
    "i32": "INT32",
    "i64": "INT64",
    "b": "BOOL",
    "s": "BYTES",
}
FIELDS = {
    "f32": "fp32_contents",
    "f64": "fp64_contents",
    "i32": "int_contents",
    "i64": "int64_contents",
    "b": "bool_contents",
    "s": "bytes_contents",
}


@pytest.fixture(scope="module")
def identities() -> LoadedModel:
    data = identity_model()
    return load_model("ids", 1, data, expected_sha256=sha(data))


def sample_arrays(rows: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "f32": rng.normal(size=(rows, 3)).astype(np.float32),
        "f64": rng.normal(size=(rows, 3)),
        "i32": rng.integers(-(2**31), 2**31 - 1, size=(rows, 3), dtype=np.int32),
        "i64": rng.integers(-(2**62), 2**62, size=(rows, 3), dtype=np.int64),
        "b": rng.integers(0, 2, size=(rows, 3)).astype(bool),
        "s": np.array([[f"é{i}{j}" * (i + j) for j in range(3)] for i in range(rows)], object),
    }


def raw_bytes(key: str, array: np.ndarray) -> bytes:
    if key == "s":
        return b"".join(
            struct.pack("<I", len(e.encode())) + e.encode() for e in array.ravel().tolist()
        )
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def request_of(arrays: dict[str, np.ndarray], *, raw: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="ids")
    for key, array in arrays.items():
        tensor = request.inputs.add(name=f"in_{key}", datatype=DATATYPES[key], shape=array.shape)
        if raw:
            request.raw_input_contents.append(raw_bytes(key, array))
        elif key == "s":
            tensor.contents.bytes_contents.extend(e.encode() for e in array.ravel())
        else:
            getattr(tensor.contents, FIELDS[key]).extend(array.ravel().tolist())
    return request


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_every_datatype_decodes_to_the_same_values(identities: LoadedModel, raw: bool) -> None:
    arrays = sample_arrays(rows=4)
    decoded = decode_inputs(request_of(arrays, raw=raw), identities)
    assert set(decoded) == {f"in_{k}" for k in IDENTITY_TYPES}
    for key, array in arrays.items():
        got = decoded[f"in_{key}"]
        assert got.shape == array.shape, key
        assert got.tolist() == array.tolist(), key


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_outputs_round_trip_through_the_response(identities: LoadedModel, raw: bool) -> None:
    arrays = sample_arrays()
    outputs = identities.run(decode_inputs(request_of(arrays, raw=raw), identities))
    response = pb.ModelInferResponse()
    encode_outputs(response, outputs, raw=raw)
    assert [t.datatype for t in response.outputs] == [DATATYPES[k] for k in arrays]
    assert len(response.raw_output_contents) == (len(arrays) if raw else 0)
    for index, (key, array) in enumerate(arrays.items()):
        tensor = response.outputs[index]
        assert tensor.name == f"out_{key}"
        assert list(tensor.shape) == [2, 3]
        if raw:
            assert response.raw_output_contents[index] == raw_bytes(key, array)
        elif key == "s":
            assert [b.decode() for b in tensor.contents.bytes_contents] == array.ravel().tolist()
        else:
            assert list(getattr(tensor.contents, FIELDS[key])) == array.ravel().tolist()


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_prepared_responses_equal_encoded_ones_for_each_layout(
    identities: LoadedModel, raw: bool
) -> None:
    """`ResponseHeads` serves the same bytes as building the response afresh, for a layout
    it prepared, a new batch size, a selection of outputs, strings and big-endian arrays."""
    head = pb.ModelInferResponse(model_name="ids", model_version="1")
    head.parameters["mlbus.model_version"].int64_param = 1
    heads = ResponseHeads(head, max_layouts=2)

    def fresh(outputs: dict[str, np.ndarray]) -> bytes:
        response = pb.ModelInferResponse()
        response.CopyFrom(head)
        encode_outputs(response, outputs, raw=raw)
        return bytes(response.SerializeToString(deterministic=True))

    every = identities.run(decode_inputs(request_of(sample_arrays(), raw=raw), identities))
    numbers = {k: v for k, v in every.items() if k != "out_s"}
    big_endian = {"out_f64": every["out_f64"].astype(">f8")}
    for outputs in (
        numbers,
        numbers,  # the prepared layout, again
        identities.run(decode_inputs(request_of(sample_arrays(rows=5), raw=raw), identities)),
        {"out_i32": every["out_i32"]},  # past max_layouts: encoded afresh
        every,
        big_endian,
    ):
        got = heads.response(outputs, raw=raw).SerializeToString(deterministic=True)
        assert got == fresh(outputs)
    assert heads.response(big_endian, raw=True).raw_output_contents[0] == (
        every["out_f64"].astype("<f8").tobytes()
    )
    roomy = ResponseHeads(head)  # a layout that needs encoding, remembered as such
    for _ in range(2):
        got = roomy.response(every, raw=raw).SerializeToString(deterministic=True)
        assert got == fresh(every)


def linear_request(**tensor: object) -> pb.ModelInferRequest:
    fields = {"name": "x", "datatype": "FP32", "shape": [1, 20]} | tensor
    contents = fields.pop("contents", {"fp32_contents": [0.5] * 20})
    return pb.ModelInferRequest(model_name="m", inputs=[{**fields, "contents": contents}])


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (linear_request(datatype="FP64"), "input 'x': expected FP32 with shape [-1, 20], got FP64"),
        (
            linear_request(shape=[1, 19]),
            "input 'x': expected FP32 with shape [-1, 20], got FP32 with shape [1, 19]",
        ),
        (linear_request(shape=[20]), "got FP32 with shape [20]"),
        (
            linear_request(shape=[2, 20]),
            "input 'x': fp32_contents holds 20 values, shape [2, 20] needs 40",
        ),
        (
            linear_request(name="z"),
            "unknown input 'z': model 'm' v1 takes 'x' (FP32 with shape [-1, 20])",
        ),
        (
            pb.ModelInferRequest(model_name="m"),
            "missing input(s) 'x' (expected FP32 with shape [-1, 20])",
        ),
    ],
    ids=["dtype", "width", "rank", "count", "unknown", "missing"],
)
def test_bad_tensors_are_invalid_input_naming_the_tensor(
    request_: pb.ModelInferRequest, message: str
) -> None:
    with pytest.raises(InvalidInput) as error:
        decode_inputs(request_, loaded(1))
    assert message in str(error.value)


def test_raw_contents_of_the_wrong_size_are_refused() -> None:
    request = pb.ModelInferRequest(
        model_name="m", inputs=[{"name": "x", "datatype": "FP32", "shape": [1, 20]}]
    )
    request.raw_input_contents.append(b"\x00" * 79)
    with pytest.raises(InvalidInput, match=r"input 'x': raw contents are 79 bytes, .* needs 80"):
        decode_inputs(request, loaded(1))


def test_raw_contents_must_come_one_per_input() -> None:
    request = pb.ModelInferRequest(
        model_name="m", inputs=[{"name": "x", "datatype": "FP32", "shape": [1, 20]}]
    )
    request.raw_input_contents.extend([b"\x00" * 80, b"\x00" * 80])
    with pytest.raises(InvalidInput, match="raw_input_contents has 2 entries for 1 inputs"):
        decode_inputs(request, loaded(1))


def test_truncated_raw_bytes_elements_are_refused(identities: LoadedModel) -> None:
    arrays = sample_arrays()
    request = request_of(arrays, raw=True)
    request.raw_input_contents[5] = request.raw_input_contents[5][:-1]
    with pytest.raises(InvalidInput, match="input 'in_s': raw BYTES element 5 claims"):
        decode_inputs(request, identities)


def test_raw_fp32_batches_decode_without_copying() -> None:
    x = np.arange(3 * 20, dtype=np.float32).reshape(3, 20)
    request = pb.ModelInferRequest(
        model_name="m",
        inputs=[{"name": "x", "datatype": "FP32", "shape": [3, 20]}],
        raw_input_contents=[x.tobytes()],
    )
    decoded = decode_inputs(request, loaded(1))["x"]
    # A view over the request's bytes: follow the views down to the buffer they read.
    # (protobuf hands out a fresh `bytes` on every access, so the one decoded is found
    # this way.) A copy anywhere on the way would end the chain at an array instead.
    owner: object = decoded
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    if isinstance(owner, memoryview):
        owner = owner.obj
    assert isinstance(owner, bytes), f"decoded from a copy held by {type(owner).__name__}"
    assert np.shares_memory(decoded, np.frombuffer(owner, dtype=np.uint8))
    np.testing.assert_array_equal(decoded, x)
