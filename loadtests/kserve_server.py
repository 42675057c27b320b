"""KServe's Python ModelServer serving an ONNX model through ONNX Runtime (peer benchmark).

Runs inside loadtests/.venv-kserve (made by loadtests/kserve_venv.sh), never in
the project's environment. The model is what the KServe docs show for a custom
predictor: a `kserve.Model` whose `predict` decodes the v2 request, runs ONNX
Runtime (1 intra-op / 1 inter-op thread, as mlbus) and answers in raw bytes.
Serves gRPC (Open Inference Protocol v2) on KSERVE_GRPC_PORT and REST on
KSERVE_HTTP_PORT; prints "ready" once the model is loaded.

    KSERVE_MODEL_PATH=model.onnx KSERVE_MODEL_NAME=bench KSERVE_GRPC_PORT=8081 \
        KSERVE_HTTP_PORT=8080 loadtests/.venv-kserve/bin/python loadtests/kserve_server.py
"""

from __future__ import annotations

import os
import sys

# kserve parses sys.argv when imported: keep ours away from it.
sys.argv = sys.argv[:1]

import onnxruntime as ort  # noqa: E402
from kserve import Model, ModelServer  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402
from kserve.utils.numpy_codec import from_np_dtype  # noqa: E402


class OnnxModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.session: ort.InferenceSession | None = None
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(
            self.path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        assert self.session is not None
        feed = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        results = self.session.run(None, feed)
        outputs = []
        for name, array in zip(self.outputs, results, strict=True):
            output = InferOutput(
                name=name, shape=list(array.shape), datatype=from_np_dtype(array.dtype)
            )
            output.set_data_from_numpy(array, binary_data=True)
            outputs.append(output)
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=outputs
        )


def main() -> None:
    model = OnnxModel(os.environ["KSERVE_MODEL_NAME"], os.environ["KSERVE_MODEL_PATH"])
    print("ready", flush=True)
    ModelServer(
        http_port=int(os.environ.get("KSERVE_HTTP_PORT", "8080")),
        grpc_port=int(os.environ.get("KSERVE_GRPC_PORT", "8081")),
        enable_latency_logging=False,
    ).start([model])


if __name__ == "__main__":
    main()
