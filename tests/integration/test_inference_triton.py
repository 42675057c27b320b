"""Unmodified Triton clients work: `tritonclient[grpc]`, run in a subprocess (ADR 0002),
sees what ONNX Runtime itself returns for the same inputs.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from tests.integration.test_inference import publication, serving
from tests.unit.test_inference_model import FEATURES, identity_model

pytestmark = pytest.mark.integration

CLIENT = Path(__file__).with_name("_triton_client.py")


def logistic_regression() -> bytes:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).astype(int)
    estimator = LogisticRegression().fit(x, y)
    onnx_model = to_onnx(
        estimator,
        initial_types=[("float_input", FloatTensorType([None, FEATURES]))],
        options={id(estimator): {"zipmap": False}},
        target_opset=17,
    )
    return onnx_model.SerializeToString()  # type: ignore[no-any-return]


async def triton(port: int, calls: list[dict[str, Any]]) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    request = json.dumps({"url": f"127.0.0.1:{port}", "calls": calls}).encode()
    out, err = await asyncio.wait_for(process.communicate(request), 60)
    assert process.returncode == 0, err.decode()
    answer: dict[str, Any] = json.loads(out)
    return answer


async def test_triton_client_sees_what_onnx_runtime_returns(tmp_path: Path, unique: str) -> None:
    lr, ids = f"lr-{unique}", f"ids-{unique}"
    lr_bytes, ids_bytes = logistic_regression(), identity_model()
    x = np.random.default_rng(5).normal(size=(4, FEATURES)).astype(np.float32)
    identity_inputs = {
        "in_f32": ("FP32", np.array([[1.5, -2.25, 3.0]] * 2, dtype=np.float32)),
        "in_f64": ("FP64", np.array([[1e-300, 2.5, -7.0]] * 2)),
        "in_i32": ("INT32", np.array([[-(2**31), 0, 2**31 - 1]] * 2, dtype=np.int32)),
        "in_i64": ("INT64", np.array([[-(2**63), 1, 2**63 - 1]] * 2, dtype=np.int64)),
        "in_b": ("BOOL", np.array([[True, False, True]] * 2)),
        "in_s": ("BYTES", np.array([["a", "ünï", ""], ["x" * 300, "b", "c"]], dtype=object)),
    }
    async with serving(lr, None, models=(lr, ids)) as (server, _):
        assert await server.reloader.apply(publication(tmp_path, lr, 3, lr_bytes, None))
        assert await server.reloader.apply(publication(tmp_path, ids, 1, ids_bytes, None))
        assert server.port is not None
        answer = await triton(
            server.port,
            [
                {"model": lr, "inputs": {"float_input": {"datatype": "FP32", "data": x.tolist()}}},
                {
                    "model": ids,
                    "inputs": {
                        name: {"datatype": datatype, "data": array.tolist()}
                        for name, (datatype, array) in identity_inputs.items()
                    },
                },
            ],
        )

    assert answer["live"] is True
    assert answer["ready"] is True
    assert answer["server"]["name"] == "mlbus"
    lr_call, ids_call = answer["calls"]

    session = ort.InferenceSession(lr_bytes, providers=["CPUExecutionProvider"])
    assert lr_call["model_ready"] is True
    assert lr_call["metadata"]["name"] == lr
    assert lr_call["metadata"]["versions"] == ["3"]
    assert lr_call["metadata"]["inputs"] == [
        {"name": a.name, "datatype": "FP32", "shape": ["-1", str(FEATURES)]}
        for a in session.get_inputs()
    ]
    assert [(o["name"], o["datatype"]) for o in lr_call["metadata"]["outputs"]] == [
        ("label", "INT64"),
        ("probabilities", "FP32"),
    ]
    label, probabilities = session.run(None, {"float_input": x})
    assert lr_call["model_version"] == "3"
    assert lr_call["parameters"]["mlbus.model_version"] == {"int64_param": "3"}
    outputs = lr_call["outputs"]
    assert outputs["label"]["data"] == label.tolist()
    assert outputs["probabilities"]["shape"] == [4, 2]
    np.testing.assert_array_equal(
        np.array(outputs["probabilities"]["data"], np.float32), probabilities
    )

    for name, (datatype, array) in identity_inputs.items():
        got = ids_call["outputs"][name.replace("in_", "out_")]
        assert got["datatype"] == datatype
        assert got["shape"] == list(array.shape)
        assert got["data"] == array.tolist(), name
