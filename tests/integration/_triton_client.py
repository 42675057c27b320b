"""Drive an inference server with the real Triton client; print what it saw as JSON.

Runs in its own process: `tritonclient` registers the same `inference.*`
protobuf names as mlbus's stubs, so the two cannot share a process (ADR 0002).
Nothing from mlbus is imported here.

    python _triton_client.py < request.json

request: {"url": "127.0.0.1:8001",
          "calls": [{"model": "m", "inputs": {"x": {"datatype": "FP32", "data": [[...]]}}}]}
answer:  {"live": true, "ready": true,
          "calls": [{"model_ready": true, "metadata": {...}, "model_version": "3",
                     "parameters": {...}, "outputs": {"y": {"datatype", "shape", "data"}}}]}
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton

NUMPY = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "BYTES": np.object_,
}


def to_numpy(datatype: str, data: Any) -> np.ndarray:
    if datatype == "BYTES":
        return np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(np.array(data, object))
    return np.array(data, dtype=NUMPY[datatype])


def to_json(array: np.ndarray) -> Any:
    if array.dtype == np.object_:
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array).tolist()
    return array.tolist()


def call(client: triton.InferenceServerClient, spec: dict[str, Any]) -> dict[str, Any]:
    model = spec["model"]
    inputs = []
    for name, tensor in spec["inputs"].items():
        array = to_numpy(tensor["datatype"], tensor["data"])
        infer_input = triton.InferInput(name, list(array.shape), tensor["datatype"])
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    metadata = client.get_model_metadata(model, as_json=True)
    result = client.infer(model, inputs)
    response = result.get_response(as_json=True)
    outputs = {}
    for output in response["outputs"]:
        array = result.as_numpy(output["name"])
        outputs[output["name"]] = {
            "datatype": output["datatype"],
            "shape": list(array.shape),
            "data": to_json(array),
        }
    return {
        "model_ready": client.is_model_ready(model),
        "metadata": metadata,
        "model_version": response.get("model_version", ""),
        "parameters": response.get("parameters", {}),
        "outputs": outputs,
    }


def main() -> None:
    request = json.load(sys.stdin)
    client = triton.InferenceServerClient(url=request["url"])
    answer = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server": client.get_server_metadata(as_json=True),
        "calls": [call(client, spec) for spec in request["calls"]],
    }
    client.close()
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
