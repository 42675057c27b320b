#!/usr/bin/env sh
# Create loadtests/.venv-kserve: KServe's Python ModelServer and ONNX Runtime, for the peer
# benchmark (loadtests/bench_inference_kserve.py) only. Kept apart from the project's
# environment on purpose: kserve pins its own protobuf/grpcio/fastapi versions, which may
# not agree with ours (protobuf 6, grpcio 1.81). Idempotent; KSERVE_VERSION overrides.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv-kserve"
python=${PYTHON:-python3}
version=${KSERVE_VERSION:-0.21.0}
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
printf '*\n' > "$venv/.gitignore"  # never committed, without touching the repository's .gitignore
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "kserve==$version" onnxruntime numpy
"$venv/bin/python" -c "import kserve, onnxruntime; print('kserve', kserve.__version__ if hasattr(kserve, '__version__') else '?', 'onnxruntime', onnxruntime.__version__)"
