"""A serving worker loads only what its settings use.

Each module kept out is resident memory in every worker (issue #7: ≤ 100 MB per
worker). Without a spec: yaml and the spec models (~1 MB) load only with
MLBUS_SPEC, the run state (`discover`) only where the process starts (the shell's
runtime never), protobuf's `descriptor_pb2` (~4.4 MB) only when a client first
calls server reflection, the registry client and its protos (~0.6 MB) only with
MLBUS_INFERENCE_REGISTRY_ADDRESS. With a spec and Redis (Predict): the online
store, but not the offline one's pyarrow and DuckDB (~32 MB). Checked in a fresh
interpreter, since this test process has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = """
import asyncio, sys
from pathlib import Path
from mlbus.inference import InferenceServer, InferenceSettings

data_dir, spec, redis_url, *kept_out = sys.argv[1:]
kwargs = {"spec": Path(spec), "redis": {"url": redis_url}} if spec else {}

async def main():
    settings = InferenceSettings(grpc_port=0, data_dir=Path(data_dir), **kwargs)
    async with InferenceServer(settings, host="127.0.0.1") as server:
        assert (server.store is not None) == bool(spec), server.store

asyncio.run(main())
print(",".join(m for m in kept_out if m in sys.modules))
"""

WITHOUT_SPEC = (
    "yaml",
    "mlbus.spec",
    "mlbus.runstate",
    "mlbus.runtime",
    "google.protobuf.descriptor_pb2",
    "mlbus.registry_client",
    "mlbus.registry_proto",
)
WITH_PREDICT = ("pyarrow", "duckdb", "mlbus.runstate", "mlbus.runtime", "mlbus.registry_client")


def loaded_of(tmp_path: Path, spec: str, redis_url: str, kept_out: tuple[str, ...]) -> list[str]:
    """The modules of `kept_out` that a started and stopped server imported."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), spec, redis_url, *kept_out],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1:]
    return [m for m in (last[0] if last else "").split(",") if m]


def test_a_started_server_without_spec_imports_no_spec_runtime_reflection_or_registry(
    tmp_path: Path,
) -> None:
    assert loaded_of(tmp_path, "", "", WITHOUT_SPEC) == []


def test_a_server_set_up_for_predict_reads_online_features_without_the_offline_store(
    tmp_path: Path,
) -> None:
    from mlbus.example import fraud_spec_path

    # Nothing listens on port 1: the store connects on first read, not at start.
    loaded = loaded_of(tmp_path, str(fraud_spec_path()), "redis://127.0.0.1:1/0", WITH_PREDICT)
    assert loaded == []
